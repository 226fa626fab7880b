// fio's JSON output (--output-format=json): the numbers of one job in one direction.

import Foundation

/// What `fio --output-format=json` says about its first job.
struct FioOutput: Decodable {
    /// One direction ("read" or "write") of a job.
    struct Direction: Decodable {
        var ioBytes: Double
        var bandwidthBytes: Double
        var iops: Double
        var totalIOs: Double?
        var runtimeMilliseconds: Double
        var completionLatency: Latency?

        enum CodingKeys: String, CodingKey {
            case iops
            case ioBytes = "io_bytes"
            case bandwidthBytes = "bw_bytes"
            case totalIOs = "total_ios"
            case runtimeMilliseconds = "runtime"
            case completionLatency = "clat_ns"
        }

        /// A completion-latency percentile in µs (fio's keys are like "99.000000").
        func percentileMicroseconds(_ p: Double) -> Double? {
            guard let percentiles = completionLatency?.percentile else { return nil }
            let key = String(format: "%.6f", p)
            return percentiles[key].map { $0 / 1000 }
        }
    }

    /// Completion latency in ns.
    struct Latency: Decodable {
        var percentile: [String: Double]?
    }

    /// One job: both directions (the one it did not do has zeros).
    struct Job: Decodable {
        var read: Direction?
        var write: Direction?
    }

    var jobs: [Job]

    /// Parses fio's standard output; text before the JSON (warnings) is skipped.
    static func parse(_ text: String) throws -> FioOutput {
        let data = Data(text.utf8)
        guard let start = data.firstIndex(of: UInt8(ascii: "{")), let end = data.lastIndex(of: UInt8(ascii: "}")), start < end else {
            throw BenchError.setup("fio printed no JSON: \(text.prefix(300))")
        }
        return try JSONDecoder().decode(FioOutput.self, from: data[start...end])
    }

    /// The first job's `direction` ("read" or "write").
    func direction(_ name: String) throws -> Direction {
        guard let job = jobs.first, let d = name == "write" ? job.write : job.read else {
            throw BenchError.setup("fio's JSON has no \(name) numbers")
        }
        return d
    }
}
