// viridian-bench: performance measurements of Viridian's layers, each beside a baseline from the same run.

import ArgumentParser
import Foundation
import ViridianBench

@main
struct ViridianBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viridian-bench",
        abstract: "Measure Viridian against baselines taken in the same run.",
        subcommands: [Ring.self])
}

struct Ring: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Two threads move packets through one VMBus ring; compared with memcpy bandwidth.",
        discussion: """
            Reports packets/s for small payloads, GB/s for large ones and signals per packet (both \
            directions) at saturation. Each case runs --repeat times; the median is shown. Build with \
            -c release for meaningful numbers: swift run -c release viridian-bench ring
            """)

    @Option(help: "Payload sizes in bytes, comma-separated.")
    var payloads: String = "64,16384"

    @Option(help: "Bytes to move per case (packet count = bytes / payload, at least 100000 packets).")
    var bytes: Int = 2 << 30

    @Option(name: .customLong("ring-kib"), help: "Ring data area in KiB.")
    var ringKiB: Int = 1024

    @Option(name: .customLong("poll-us"), help: "Microseconds a side that ran dry polls (interrupts masked) before it sleeps; 0 = sleep at once.")
    var pollMicroseconds: Int = 20

    @Option(name: .customLong("repeat"), help: "Repetitions per case; the median is reported.")
    var repetitions: Int = 5

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard repetitions >= 1 else { throw ValidationError("--repeat must be at least 1") }
        guard ringKiB >= 8 else { throw ValidationError("--ring-kib must be at least 8") }
        guard pollMicroseconds >= 0 else { throw ValidationError("--poll-us must not be negative") }
    }

    func run() throws {
        let sizes = try payloads.split(separator: ",").map { part -> Int in
            guard let n = Int(part.trimmingCharacters(in: .whitespaces)), n > 0, n < ringKiB * 1024 / 2 else {
                throw ValidationError("bad payload size '\(part)'")
            }
            return n
        }
        var rows: [Row] = []
        for size in sizes {
            let packets = max(bytes / size, 100_000)
            var runs: [RingBenchmarkResult] = []
            var copies: [Double] = []
            for _ in 0..<repetitions {
                copies.append(RingBenchmark.memcpyBandwidth(chunk: size, area: ringKiB * 1024, totalBytes: packets * size))
                runs.append(try RingBenchmark.run(payloadBytes: size, packets: packets, ringBytes: ringKiB * 1024,
                                                  pollNanoseconds: UInt64(pollMicroseconds) * 1000))
            }
            runs.sort { $0.gigabytesPerSecond < $1.gigabytesPerSecond }
            copies.sort()
            let median = runs[runs.count / 2]
            let memcpy = copies[copies.count / 2]
            rows.append(Row(result: median, memcpyGBps: memcpy, ratio: median.gigabytesPerSecond / memcpy,
                            spread: (runs.first!.packetsPerSecond, runs.last!.packetsPerSecond)))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(rows), as: UTF8.self))
            return
        }
        print("payload   packets      Mpkt/s (min..max)        GB/s   memcpy GB/s  ring/memcpy  signals/pkt")
        for row in rows {
            let r = row.result
            print(pad("\(r.payloadBytes) B", 9), pad("\(r.packets)", 11),
                  pad(String(format: "%.2f (%.2f..%.2f)", r.packetsPerSecond / 1e6, row.spread.0 / 1e6, row.spread.1 / 1e6), 24),
                  pad(String(format: "%.2f", r.gigabytesPerSecond), 7), pad(String(format: "%.2f", row.memcpyGBps), 12),
                  pad(String(format: "%.2f", row.ratio), 12), String(format: "%.5f", r.signalsPerPacket))
        }
    }

    struct Row: Codable {
        var result: RingBenchmarkResult
        var memcpyGBps: Double
        var ratio: Double
        var spread: (Double, Double)
        enum CodingKeys: String, CodingKey { case result, memcpyGBps, ratio, minPacketsPerSecond, maxPacketsPerSecond }
        init(result: RingBenchmarkResult, memcpyGBps: Double, ratio: Double, spread: (Double, Double)) {
            self.result = result
            self.memcpyGBps = memcpyGBps
            self.ratio = ratio
            self.spread = spread
        }
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            result = try c.decode(RingBenchmarkResult.self, forKey: .result)
            memcpyGBps = try c.decode(Double.self, forKey: .memcpyGBps)
            ratio = try c.decode(Double.self, forKey: .ratio)
            spread = (try c.decode(Double.self, forKey: .minPacketsPerSecond), try c.decode(Double.self, forKey: .maxPacketsPerSecond))
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(result, forKey: .result)
            try c.encode(memcpyGBps, forKey: .memcpyGBps)
            try c.encode(ratio, forKey: .ratio)
            try c.encode(spread.0, forKey: .minPacketsPerSecond)
            try c.encode(spread.1, forKey: .maxPacketsPerSecond)
        }
    }
}

func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
