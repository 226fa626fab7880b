// viridian-bench compare: the host's cost of a run — trap counters from `viridian-host status --json`
// and CPU time from /proc/PID/stat — as a snapshot before and after, and their difference.

import Foundation
import Glibc

/// The counters of a running stack at one moment.
struct CompareSnapshot: Sendable {
    var hostCPUSeconds: Double
    var agentCPUSeconds: Double
    var hypercalls: UInt64
    var signals: UInt64
    var portIOExits: UInt64
    var interrupts: UInt64
}

/// What a run cost the host (and the agent): the difference of two snapshots.
struct CompareCounters: Sendable {
    var hostCPUSeconds: Double
    var agentCPUSeconds: Double
    var hypercalls: UInt64
    var signals: UInt64
    var portIOExits: UInt64
    var interrupts: UInt64
    /// Every exit to the host: hypercalls, doorbell signals and port I/O traps.
    var traps: UInt64 { hypercalls + signals + portIOExits }

    init(from before: CompareSnapshot, to after: CompareSnapshot) {
        func delta(_ a: UInt64, _ b: UInt64) -> UInt64 { b >= a ? b - a : 0 }
        hostCPUSeconds = max(0, after.hostCPUSeconds - before.hostCPUSeconds)
        agentCPUSeconds = max(0, after.agentCPUSeconds - before.agentCPUSeconds)
        hypercalls = delta(before.hypercalls, after.hypercalls)
        signals = delta(before.signals, after.signals)
        portIOExits = delta(before.portIOExits, after.portIOExits)
        interrupts = delta(before.interrupts, after.interrupts)
    }
}

/// The part of viridian-host's status JSON the comparison reads.
struct CompareHostStatus: Decodable {
    /// One partition's exit counters.
    struct Partition: Decodable {
        var name: String
        var hypercalls: UInt64
        var signals: UInt64
        var portIOExits: UInt64?
        var lineInterrupts: UInt64?
        var vps: [VP]

        /// One VP's SynIC interrupt count.
        struct VP: Decodable {
            var interrupts: UInt64
        }

        /// SynIC interrupts of every VP and the emulated devices' IRQ edges.
        var interrupts: UInt64 { vps.reduce(lineInterrupts ?? 0) { $0 &+ $1.interrupts } }
    }

    var pid: Int32
    var partitions: [Partition]

    /// Parses `viridian-host status --json` output.
    static func parse(_ text: String) throws -> CompareHostStatus {
        let data = Data(text.utf8)
        guard let start = data.firstIndex(of: UInt8(ascii: "{")) else {
            throw BenchError.setup("viridian-host status --json printed no JSON: \(text.prefix(200))")
        }
        return try JSONDecoder().decode(CompareHostStatus.self, from: data[start...])
    }
}

/// CPU time of a process.
enum ProcessCPU {
    static let ticksPerSecond: Double = {
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return ticks > 0 ? Double(ticks) : 100
    }()

    /// utime + stime of `pid` in seconds (fields 14 and 15 of /proc/PID/stat), nil when it is gone.
    static func seconds(_ pid: Int32) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        // After "pid (comm)": field 3 (state) is the first; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / ticksPerSecond
    }
}
