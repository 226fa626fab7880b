// ping's output: the round-trip time of every answered echo request.

import Foundation

/// The RTTs of one `ping -c N` run.
struct PingOutput: Sendable {
    /// Round-trip times in µs, in the order the replies came.
    var roundTripsMicroseconds: [Double]

    /// Reads every "time=0.123 ms" of ping's per-reply lines.
    init(_ text: String) {
        roundTripsMicroseconds = text.split(separator: "\n").compactMap { line -> Double? in
            guard let at = line.range(of: "time=") else { return nil }
            let rest = line[at.upperBound...]
            let number = rest.prefix { $0.isNumber || $0 == "." }
            guard let value = Double(number) else { return nil }
            let unit = rest.dropFirst(number.count).trimmingCharacters(in: .whitespaces)
            if unit.hasPrefix("ms") { return value * 1000 }
            if unit.hasPrefix("us") || unit.hasPrefix("µs") { return value }
            if unit.hasPrefix("s") { return value * 1e6 }
            return value * 1000
        }
    }
}
