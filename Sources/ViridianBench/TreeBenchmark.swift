// viridian-bench tree: storage and network at the leaf of a partition tree one, two and three levels deep.

import Foundation
import Glibc

/// One depth of the tree, measured at its leaf.
public struct TreeBenchmarkRow: Codable, Sendable {
    /// 1: the root's own child (no relay); 2: a grandchild (one relay hop); 3: a great-grandchild (two).
    public var depth: Int
    public var relayHops: Int { depth - 1 }
    public var seqReadMBps: Double
    public var seqWriteMBps: Double
    /// 4 KiB random reads at queue depth 1: mean completion latency.
    public var readLatencyMicroseconds: Double
    /// Median ping RTT root TAP ↔ leaf TAP, and TCP leaf → root (iperf3); nil without root privileges.
    public var pingMicroseconds: Double?
    public var tcpMbps: Double?
}

/// Builds the tree with viridian-host and parent-mode agents: the root's partition "l1" has the
/// image and a TAP; each level's agent relays its LUN 0 and NIC 0 to the next (`--serve-children`);
/// the leaf's agent exports the disk over NBD and bridges the NIC to a TAP. fio (nbd engine) runs
/// on the leaf's export; ping and iperf3 between the root's TAP and the leaf's, each in a network
/// namespace of its own. The same image and TAP pair at every depth: the rows differ only by hops.
public enum TreeBenchmark {
    public static func run(binDirectory: String, depths: [Int], imageMiB: Int, seconds: Int, log: (String) -> Void) throws -> [TreeBenchmarkRow] {
        let dir = "\(NSTemporaryDirectory())/viridian-bench-tree-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = "\(dir)/disk.img"
        log("prefilling a \(imageMiB) MiB image")
        _ = try StorageBenchmark.fio(["--name=fill", "--filename=\(image)", "--size=\(imageMiB)M", "--rw=write", "--bs=1M", "--ioengine=psync"])
        let network = getuid() == 0
        if !network { log("not root: storage only (network namespaces and TAPs need root)") }
        var rows: [TreeBenchmarkRow] = []
        for (round, depth) in depths.enumerated() {
            log("depth \(depth) (\(depth - 1) relay hop\(depth == 2 ? "" : "s"))")
            // A directory per round: nothing of an earlier round's sockets is found again.
            rows.append(try measure(binDirectory: binDirectory, depth: depth, dir: "\(dir)/r\(round)", image: image, imageMiB: imageMiB,
                                    seconds: seconds, network: network, log: log))
        }
        return rows
    }

    /// One row per depth, each figure the median of that depth's rounds (the machine is shared:
    /// rounds interleave the depths so that a slow moment does not fall on one depth only).
    public static func medians(_ rounds: [TreeBenchmarkRow], depths: [Int]) -> [TreeBenchmarkRow] {
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        func median(_ values: [Double?]) -> Double? {
            let known = values.compactMap { $0 }
            return known.isEmpty ? nil : median(known)
        }
        return depths.compactMap { depth in
            let mine = rounds.filter { $0.depth == depth }
            guard !mine.isEmpty else { return nil }
            return TreeBenchmarkRow(depth: depth, seqReadMBps: median(mine.map(\.seqReadMBps)), seqWriteMBps: median(mine.map(\.seqWriteMBps)),
                                    readLatencyMicroseconds: median(mine.map(\.readLatencyMicroseconds)),
                                    pingMicroseconds: median(mine.map(\.pingMicroseconds)), tcpMbps: median(mine.map(\.tcpMbps)))
        }
    }

    /// Levels' memory: each gives the next most of its own.
    static let memoryMiB = [1024, 512, 256]

    static func measure(binDirectory: String, depth: Int, dir: String, image: String, imageMiB: Int, seconds: Int, network: Bool, log: (String) -> Void) throws -> TreeBenchmarkRow {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let hostNS = "vbt-h-\(getpid())", leafNS = "vbt-l-\(getpid())"
        if network {
            for ns in [hostNS, leafNS] {
                _ = try command("/usr/sbin/ip", ["netns", "del", ns])
                guard try command("/usr/sbin/ip", ["netns", "add", ns]).0 == 0 else { throw BenchError.setup("ip netns add \(ns) failed") }
                _ = try command("/usr/sbin/ip", ["-n", ns, "link", "set", "lo", "up"])
            }
        }
        defer { if network { for ns in [hostNS, leafNS] { _ = try? command("/usr/sbin/ip", ["netns", "del", ns]) } } }
        try """
            runtime_dir = "\(dir)"
            image_dir = "\(dir)"
            [[partition]]
            name = "l1"
            memory_mib = \(memoryMiB[0])
            vps = 2
            echo_devices = 0
            integration_services = []
            [[partition.disk]]
            path = "\(image)"
            \(network ? "[[partition.nic]]\ntap = \"vbt0\"\nnetns = \"\(hostNS)\"" : "")
            """.write(toFile: "\(dir)/host.toml", atomically: true, encoding: .utf8)
        var processes: [Process] = []
        defer {
            for p in processes.reversed() where p.isRunning { p.terminate() }
            for p in processes.reversed() { p.waitUntilExit() }
        }
        processes.append(try StorageBenchmark.spawn("\(binDirectory)/viridian-host", ["run", "--config", "\(dir)/host.toml", "--log-level", "warning"]))
        var link = "\(dir)/l1.sock"
        for level in 1...depth {
            try waitFor(link, what: "level \(level)'s socket", processes: processes)
            let leaf = level == depth
            var agent = """
                link = "unix:\(link)"
                state_dir = "\(dir)/state\(level)"
                export_dir = "\(dir)/exports\(level)"
                log_level = "warning"
                timesync = "off"
                network = \(network)
                nic_tap = "vbl%d"
                \(leaf && network ? "nic_netns = \"\(leafNS)\"" : "")
                """
            if !leaf {
                try """
                    runtime_dir = "\(dir)/children\(level)"
                    [[partition]]
                    name = "l\(level + 1)"
                    memory_mib = \(memoryMiB[level])
                    vps = 1
                    echo_devices = 0
                    integration_services = []
                    relay_disks = [0]
                    relay_nics = \(network ? "[0]" : "[]")
                    """.write(toFile: "\(dir)/children\(level).toml", atomically: true, encoding: .utf8)
                agent += "\nserve_children = \"\(dir)/children\(level).toml\""
                link = "\(dir)/children\(level)/l\(level + 1).sock"
            }
            try agent.write(toFile: "\(dir)/agent\(level).toml", atomically: true, encoding: .utf8)
            processes.append(try StorageBenchmark.spawn("\(binDirectory)/viridian-agent", ["run", "--config", "\(dir)/agent\(level).toml"]))
        }
        let exports = "\(dir)/exports\(depth)"
        var export: String?
        for _ in 0..<3000 {
            export = (try? FileManager.default.contentsOfDirectory(atPath: exports))?.first { $0.hasSuffix("lun0.sock") }
            if export != nil || processes.contains(where: { !$0.isRunning }) { break }
            usleep(10_000)
        }
        guard let export else { throw BenchError.setup("the leaf at depth \(depth) exported no disk") }
        let uri = "nbd+unix:///?socket=\(exports)/\(export)"
        func fio(_ name: String, _ rw: String, _ bs: String, _ qd: Int) throws -> [String: (Double, Double)] {
            log("  \(name)")
            return try StorageBenchmark.fio(["--name=tree", "--ioengine=nbd", "--uri=\(uri)", "--rw=\(rw)", "--bs=\(bs)", "--iodepth=\(qd)",
                                             "--size=\(imageMiB)M", "--runtime=\(seconds)", "--time_based", "--output-format=json"])
        }
        let read = try fio("seq read 1M QD8", "read", "1M", 8)["read"]?.0 ?? 0
        let write = try fio("seq write 1M QD8", "write", "1M", 8)["write"]?.0 ?? 0
        let latency = try fio("rand read 4k QD1", "randread", "4k", 1)["read"]?.1 ?? 0
        var row = TreeBenchmarkRow(depth: depth, seqReadMBps: read / 1e6, seqWriteMBps: write / 1e6,
                                   readLatencyMicroseconds: latency > 0 ? 1e6 / latency : 0)
        if network {
            let (hostAddress, leafAddress) = ("10.79.0.1", "10.79.0.2")
            for _ in 0..<300 {
                if try command("/usr/sbin/ip", ["-n", leafNS, "link", "show", "vbl0"]).0 == 0 { break }
                usleep(50_000)
            }
            _ = try command("/usr/sbin/ip", ["-n", hostNS, "addr", "add", "\(hostAddress)/24", "dev", "vbt0"])
            _ = try command("/usr/sbin/ip", ["-n", leafNS, "addr", "add", "\(leafAddress)/24", "dev", "vbl0"])
            _ = try command("/usr/sbin/ip", ["-n", hostNS, "link", "set", "vbt0", "up"])
            _ = try command("/usr/sbin/ip", ["-n", leafNS, "link", "set", "vbl0", "up"])
            log("  ping")
            _ = try command("/usr/bin/nsenter", ["--net=/run/netns/\(hostNS)", "ping", "-c", "3", "-W", "2", leafAddress])
            let (_, ping) = try command("/usr/bin/nsenter", ["--net=/run/netns/\(hostNS)", "ping", "-c", "50", "-i", "0.02", leafAddress])
            let rtts = PingOutput(ping).roundTripsMicroseconds.sorted()
            row.pingMicroseconds = rtts.isEmpty ? nil : rtts[rtts.count / 2]
            log("  TCP leaf → root")
            let server = try StorageBenchmark.spawn("/usr/bin/nsenter", ["--net=/run/netns/\(hostNS)", "iperf3", "-s", "-1", "-B", hostAddress],
                                                    quiet: true)
            defer { if server.isRunning { server.terminate() }; server.waitUntilExit() }
            usleep(300_000)
            let (_, json) = try command("/usr/bin/nsenter", ["--net=/run/netns/\(leafNS)", "iperf3", "-c", hostAddress, "-t", "\(seconds)", "-J"])
            row.tcpMbps = iperfMbps(json)
        }
        return row
    }

    static func waitFor(_ path: String, what: String, processes: [Process]) throws {
        for _ in 0..<3000 {
            if FileManager.default.fileExists(atPath: path) || processes.contains(where: { !$0.isRunning }) { break }
            usleep(10_000)
        }
        guard FileManager.default.fileExists(atPath: path) else { throw BenchError.setup("\(what) (\(path)) did not appear") }
    }

    /// Runs a command; status and output.
    static func command(_ path: String, _ arguments: [String]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// iperf3 -J's end.sum_received.bits_per_second, in Mbit/s.
    static func iperfMbps(_ json: String) -> Double? {
        guard let start = json.firstIndex(of: "{"),
            let object = try? JSONSerialization.jsonObject(with: Data(json[start...].utf8)) as? [String: Any],
            let end = object["end"] as? [String: Any], let sum = end["sum_received"] as? [String: Any],
            let bps = (sum["bits_per_second"] as? NSNumber)?.doubleValue
        else { return nil }
        return bps / 1e6
    }
}
