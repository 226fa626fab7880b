// viridian-bench: performance measurements of Viridian's layers, each beside a baseline from the same run.

import ArgumentParser
import Foundation
import ViridianBench

@main
struct ViridianBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viridian-bench",
        abstract: "Measure Viridian against baselines taken in the same run.",
        subcommands: [Ring.self, Link.self, Storage.self, NetworkBench.self, Compare.self, Tree.self, Peer.self])
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
            try printJSON(rows)
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

struct Link: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The process boundary: hypercall round trips through viridian-host, and a ring shared between processes.",
        discussion: """
            Hypercall round trip (guest → viridian-host → guest) beside an eventfd ping-pong between two \
            processes; one-way ring throughput with the consumer in another process beside the same \
            workload between two threads. Needs viridian-host built next to viridian-bench: \
            swift build -c release && .build/release/viridian-bench link
            """)

    @Option(help: "Round trips per latency measurement.")
    var rounds: Int = 200_000

    @Option(help: "Payload bytes of the ring workload.")
    var payload: Int = 64

    @Option(help: "Packets of the ring workload.")
    var packets: Int = 20_000_000

    @Option(name: .customLong("repeat"), help: "Repetitions; the median is reported.")
    var repetitions: Int = 3

    @Option(help: "viridian-host's isolation: process (a worker per partition) or none (threads).")
    var isolation: String = "process"

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let host = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("viridian-host").path
        guard FileManager.default.isExecutableFile(atPath: host) else {
            throw ValidationError("\(host) is missing: build everything first (swift build -c release)")
        }
        var pings: [LatencyResult] = [], calls: [LatencyResult] = []
        var local: [RingBenchmarkResult] = [], remote: [RingBenchmarkResult] = []
        let workload = RingWorkload(payloadBytes: payload, packets: packets)
        for _ in 0..<repetitions {
            pings.append(try LinkBenchmark.eventfdPingPong(rounds: rounds))
            calls.append(try LinkBenchmark.hypercallRoundTrip(rounds: rounds, hostExecutable: host, isolation: isolation))
            local.append(try RingBenchmark.run(workload))
            remote.append(try LinkBenchmark.crossProcessRing(workload))
        }
        func median<T>(_ xs: [T], _ key: (T) -> Double) -> T { xs.sorted { key($0) < key($1) }[xs.count / 2] }
        let ping = median(pings, \.medianNs), call = median(calls, \.medianNs)
        let inProcess = median(local, \.packetsPerSecond), crossProcess = median(remote, \.packetsPerSecond)
        let report = LinkReport(eventfdPingPong: ping, hypercall: call, hypercallOverPingPong: call.medianNs / ping.medianNs,
                                ringInProcess: inProcess, ringCrossProcess: crossProcess,
                                crossOverInProcess: crossProcess.packetsPerSecond / inProcess.packetsPerSecond)
        if json {
            try printJSON(report)
            return
        }
        print(String(format: "eventfd ping-pong (2 processes)   median %6.2f µs   p99 %6.2f µs", ping.medianNs / 1000, ping.p99Ns / 1000))
        print(String(format: "hypercall round trip (host)       median %6.2f µs   p99 %6.2f µs   = %.2f × ping-pong",
                     call.medianNs / 1000, call.p99Ns / 1000, report.hypercallOverPingPong))
        print(String(format: "ring %d B, two threads            %6.2f Mpkt/s   signals/pkt %.5f", payload, inProcess.packetsPerSecond / 1e6, inProcess.signalsPerPacket))
        print(String(format: "ring %d B, two processes          %6.2f Mpkt/s   signals/pkt %.5f   = %.2f × in-process",
                     payload, crossProcess.packetsPerSecond / 1e6, crossProcess.signalsPerPacket, report.crossOverInProcess))
    }

    struct LinkReport: Codable {
        var eventfdPingPong: LatencyResult
        var hypercall: LatencyResult
        var hypercallOverPingPong: Double
        var ringInProcess: RingBenchmarkResult
        var ringCrossProcess: RingBenchmarkResult
        var crossOverInProcess: Double
    }
}

struct Peer: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Internal: the other process of `viridian-bench link`.", shouldDisplay: false)

    @Option(help: "Socket to take the job from.")
    var socket: String

    func run() throws { try LinkBenchmark.peer(socketPath: socket) }
}

struct Storage: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "fio through host, VMBus, storvsc and the NBD export, beside fio on the image file itself.",
        discussion: "Needs fio (with its nbd engine) and viridian-host and viridian-agent built next to viridian-bench: swift build -c release && .build/release/viridian-bench storage")

    @Option(help: "Image size in MiB.") var imageMib: Int = 1024
    @Option(help: "Seconds per fio run.") var seconds: Int = 5
    @Option(name: .customLong("poll-us"), help: "storage_poll_us of the host (VSP polling after the ring runs dry).") var pollMicroseconds: Int = 0
    @Option(help: "Virtual processors of the benchmark partition.") var vps: Int = 2
    @Option(help: "The agent's storage_vcpus_per_sub_channel (1 = a sub-channel per VP).") var vcpusPerSubChannel: Int = 4
    @Option(help: "viridian-host's isolation: process (a worker per partition) or none (threads).") var isolation: String = "process"
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let rows = try StorageBenchmark.run(binDirectory: benchBinaries, imageMiB: imageMib, seconds: seconds, pollMicroseconds: pollMicroseconds,
                                            vps: vps, vcpusPerSubChannel: vcpusPerSubChannel, isolation: isolation) { progress($0) }
        if json {
            try printJSON(rows)
            return
        }
        print("workload              image file              VMBus + NBD             ratio")
        for r in rows {
            let d = String(format: "%8.0f MB/s %8.0f IOPS", r.directMBps, r.directIOPS)
            let e = String(format: "%8.0f MB/s %8.0f IOPS", r.enlightenedMBps, r.enlightenedIOPS)
            print(r.workload.padding(toLength: 22, withPad: " ", startingAt: 0) + d + "  " + e + String(format: "  %.2f", r.ratio))
        }
    }
}

struct Tree: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Storage and network at the leaf of a partition tree 1, 2 and 3 levels deep (0, 1 and 2 relay hops).",
        discussion: """
            Each level's agent runs with --serve-children and relays its disk and NIC to the next. fio (nbd engine) on the leaf's \
            export; ping and iperf3 between the root's TAP and the leaf's (as root; otherwise storage only). Needs fio and iperf3 and \
            viridian-host and viridian-agent built next to viridian-bench: swift build -c release && .build/release/viridian-bench tree
            """)

    @Option(help: "Image size in MiB.") var imageMib: Int = 256
    @Option(help: "Seconds per fio and iperf3 run.") var seconds: Int = 5
    @Option(parsing: .upToNextOption, help: "Depths to measure (1 = the root's child).") var depths: [Int] = [1, 2, 3]
    @Option(name: .customLong("repeat"), help: "Rounds over all depths (interleaved); each figure is the median of its depth's rounds.")
    var repetitions: Int = 1
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard !depths.isEmpty, depths.allSatisfy({ (1...3).contains($0) }) else { throw ValidationError("depths are 1, 2 or 3") }
        guard (1...20).contains(repetitions) else { throw ValidationError("--repeat must be 1…20") }
        guard (16...65536).contains(imageMib) else { throw ValidationError("--image-mib must be 16…65536") }
    }

    func run() throws {
        let rounds = try TreeBenchmark.run(binDirectory: benchBinaries, depths: Array(repeatElement(depths, count: repetitions).joined()),
                                           imageMiB: imageMib, seconds: seconds) { progress($0) }
        let rows = TreeBenchmark.medians(rounds, depths: depths)
        if json {
            try printJSON(rows)
            return
        }
        let base = rows.first
        func ratio(_ v: Double?, _ b: Double?) -> String {
            guard let v, let b, b > 0 else { return "-" }
            return String(format: "%.2f", v / b)
        }
        print("depth  hops  seq read MB/s      seq write MB/s     4k QD1 read µs     ping µs            TCP Mbit/s")
        for r in rows {
            func cell(_ v: Double?, _ b: Double?, _ f: String) -> String {
                pad((v.map { String(format: f, $0) } ?? "-") + " (×\(ratio(v, b)))", 19)
            }
            print(pad("\(r.depth)", 7) + pad("\(r.relayHops)", 6) + cell(r.seqReadMBps, base?.seqReadMBps, "%.0f")
                  + cell(r.seqWriteMBps, base?.seqWriteMBps, "%.0f") + cell(r.readLatencyMicroseconds, base?.readLatencyMicroseconds, "%.0f")
                  + cell(r.pingMicroseconds, base?.pingMicroseconds, "%.0f") + cell(r.tcpMbps, base?.tcpMbps, "%.0f"))
        }
        print("(×: against depth \(base?.depth ?? 1) in the same run)")
    }
}

struct NetworkBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network",
        abstract: "iperf3 TCP through host TAP, VMBus and guest TAP, beside a minimal TAP relay and a veth pair.",
        discussion: """
            Two network namespaces stand for the host and the guest; three paths join them: viridian \
            (viridian-host's TAP, VMBus, viridian-agent's TAP; 10.78.0.0/24), taprelay (bench/taprelay.c, \
            two threads copying frames between two TAPs with read/write: the least a user-space path \
            costs; 10.79.0.0/24) and veth (the kernel's ceiling; 10.80.0.0/24). Each path is measured \
            both ways (guest→host: the iperf3 client in the guest namespace sends; host→guest: -R), \
            --repeat times, interleaved; medians are shown. Needs root, iperf3, a C compiler, and \
            viridian-host and viridian-agent built next to viridian-bench: \
            swift build -c release && sudo .build/release/viridian-bench network
            """)

    @Option(help: "Seconds per iperf3 run.") var seconds: Int = 5
    @Option(name: .customLong("repeat"), help: "Runs per path and direction; the median is reported.") var repetitions: Int = 3
    @Option(help: "MTU of every path (576 … 9000).") var mtu: Int = 1500
    @Option(name: .customLong("taprelay-source"), help: "taprelay.c to build the baseline from (default: bench/taprelay.c of the source tree).")
    var taprelaySource: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard seconds >= 1 else { throw ValidationError("--seconds must be at least 1") }
        guard repetitions >= 1 else { throw ValidationError("--repeat must be at least 1") }
        guard (576...9000).contains(mtu) else { throw ValidationError("--mtu must be within 576 … 9000") }
    }

    func run() throws {
        let report = try NetworkBenchmark.run(binDirectory: benchBinaries, seconds: seconds, repetitions: repetitions, mtu: mtu,
                                              taprelaySource: taprelaySource) { progress($0) }
        if json {
            try printJSON(report)
            return
        }
        func arrow(_ direction: String) -> String { direction == "guest-to-host" ? "guest→host" : "host→guest" }
        print("iperf3 TCP, MTU \(report.mtu), \(report.seconds) s per run, median of \(report.repetitions)")
        print("path       direction    Gbit/s median (min–max)")
        for r in report.rows {
            print(pad(r.path, 10), pad(arrow(r.direction), 12), String(format: "%7.2f (%.2f–%.2f)", r.medianGbps, r.minGbps, r.maxGbps))
        }
        for r in report.ratios {
            print("viridian / taprelay \(arrow(r.direction)): " + String(format: "%.2f", r.viridianOverTaprelay)
                  + "   viridian / veth: " + String(format: "%.2f", r.viridianOverVeth))
        }
    }
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Direct vs enlightened (VMBus) vs emulated DMA (PIIX4 IDE, DEC 21140) vs emulated PIO (ATA PIO, NE2000) I/O: a table, a JSON file and an SVG chart.",
        discussion: """
            Storage: fio seq read and seq write (1 MiB, QD 8) and random read (4 KiB, QD 32) on the image file \
            through the page cache (direct), on the agent's NBD export of the synthetic SCSI LUN (enlightened) \
            and on its export of the emulated IDE disk behind a PIIX4 with bus-master DMA (emulated-dma) and on \
            an ISA channel by PIO (emulated-pio), the agent running --no-enlightenments. Network: iperf3 TCP \
            guest→host and host→guest and ping RTT between two namespaces over a veth pair (direct), the \
            synthetic NIC (enlightened), the DEC 21140 (emulated-dma) and the NE2000 (emulated-pio). Each run \
            also counts the partition's traps (hypercalls + doorbell signals + port I/O exits), interrupts and \
            viridian-host's CPU time per I/O. The PIO path moves a few hundred KB/s, so its runs are as short \
            as the others (fio waits for requests in flight, so they may last longer). Needs root (for the \
            network part), fio, iperf3, and viridian-host and viridian-agent built next to viridian-bench: \
            swift build -c release && sudo .build/release/viridian-bench compare
            """)

    @Option(help: "Seconds per run (fio --runtime, iperf3 -t, 20 pings a second).") var seconds: Int = 5
    @Option(name: .customLong("repeat"), help: "Runs per workload and path; median and min–max are reported.") var repetitions: Int = 3
    @Option(help: "Disk image size in MiB.") var imageMib: Int = 256
    @Option(name: .customLong("json"), help: "Where to write every run's numbers and the summary.") var jsonPath: String = "compare.json"
    @Option(name: .customLong("chart"), help: "Where to write the SVG chart.") var chartPath: String = "compare.svg"
    @Option(help: "Run one section only: storage or network.") var only: String?

    func validate() throws {
        guard seconds >= 1 else { throw ValidationError("--seconds must be at least 1") }
        guard repetitions >= 1 else { throw ValidationError("--repeat must be at least 1") }
        guard imageMib >= 16 else { throw ValidationError("--image-mib must be at least 16") }
        if let only, !["storage", "network"].contains(only) { throw ValidationError("--only takes storage or network") }
    }

    func run() throws {
        let sections = only.map { $0 == "storage" ? [CompareSection.storage] : [.network] } ?? CompareSection.allCases
        let settings = CompareSettings(seconds: seconds, repetitions: repetitions, imageMiB: imageMib, sections: sections)
        let report = try CompareBenchmark.run(settings, binDirectory: benchBinaries)
        print(report.table())
        try report.json().write(to: URL(fileURLWithPath: jsonPath))
        try report.svg().write(toFile: chartPath, atomically: true, encoding: .utf8)
        print("\nevery run and the summary: \(jsonPath)\nchart: \(chartPath)")
        let failures = report.failures
        guard failures.isEmpty else {
            print("\n\(failures.count) of \(report.runs.count) runs failed:")
            for run in failures {
                print("  \(run.workload) \(run.path.rawValue) run \(run.run): \((run.error ?? "").prefix { $0 != "\n" })")
            }
            throw ExitCode.failure
        }
    }
}

/// Where viridian-host and viridian-agent are: beside this binary.
var benchBinaries: String { URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path }

/// A progress line on standard error.
func progress(_ line: String) { FileHandle.standardError.write(Data("… \(line)\n".utf8)) }

/// Prints `value` as sorted, indented JSON.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
