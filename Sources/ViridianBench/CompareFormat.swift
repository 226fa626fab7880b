// viridian-bench compare: numbers as people read them — SI prefixes picked by size, three significant digits.

import Foundation

/// Formats values of the comparison for the table, the progress line and the chart.
enum CompareFormat {
    /// Three significant digits, plain notation (12300, 123, 12.3, 1.23, 0.123, 0.0123).
    static func digits(_ x: Double) -> String {
        guard x.isFinite else { return "–" }
        let magnitude = abs(x)
        if magnitude >= 100 || magnitude == 0 { return String(format: "%.0f", x) }
        if magnitude >= 10 { return String(format: "%.1f", x) }
        if magnitude >= 1 { return String(format: "%.2f", x) }
        let decimals = min(9, 2 - Int(floor(log10(magnitude))))
        return String(format: "%.\(decimals)f", x)
    }

    /// The divisor and name for `value`: e.g. (1e6, "MB/s") for 212e6 B/s.
    static func scale(_ value: Double, _ unit: CompareUnit) -> (divisor: Double, suffix: String) {
        let v = abs(value)
        switch unit {
        case .bytesPerSecond:
            if v >= 1e9 { return (1e9, " GB/s") }
            if v >= 1e6 { return (1e6, " MB/s") }
            if v >= 1e3 { return (1e3, " KB/s") }
            return (1, " B/s")
        case .bitsPerSecond:
            if v >= 1e9 { return (1e9, " Gbit/s") }
            if v >= 1e6 { return (1e6, " Mbit/s") }
            if v >= 1e3 { return (1e3, " kbit/s") }
            return (1, " bit/s")
        case .operationsPerSecond:
            if v >= 1e6 { return (1e6, "M IOPS") }
            if v >= 1e3 { return (1e3, "k IOPS") }
            return (1, " IOPS")
        case .microseconds:
            if v >= 1e6 { return (1e6, " s") }
            if v >= 1e3 { return (1e3, " ms") }
            return (1, " µs")
        }
    }

    /// "212 KB/s".
    static func value(_ value: Double, _ unit: CompareUnit) -> String {
        let (divisor, suffix) = scale(value, unit)
        return digits(value / divisor) + suffix
    }

    /// "212 KB/s (205–220)": the spread in the median's prefix.
    static func range(median: Double, min: Double, max: Double, _ unit: CompareUnit) -> String {
        let (divisor, suffix) = scale(median, unit)
        return "\(digits(median / divisor))\(suffix) (\(digits(min / divisor))–\(digits(max / divisor)))"
    }

    /// A latency in µs: "35.2 µs", "1.20 ms".
    static func latency(_ microseconds: Double?) -> String {
        microseconds.map { value($0, .microseconds) } ?? "–"
    }

    /// A ratio: "8120×", "0.420×".
    static func ratio(_ x: Double?) -> String {
        x.map { digits($0) + "×" } ?? "–"
    }

    /// A plain optional number.
    static func number(_ x: Double?) -> String {
        x.map(digits) ?? "–"
    }
}
