// viridian-bench storage: fio through the whole synthetic-storage path beside fio on the image file itself.

import Foundation
import Glibc

/// One workload on both paths.
public struct StorageBenchmarkRow: Codable, Sendable {
    public var workload: String
    public var directMBps: Double
    public var directIOPS: Double
    public var enlightenedMBps: Double
    public var enlightenedIOPS: Double
    public var ratio: Double
}

/// Starts viridian-host (one partition with the image as LUN 0) and viridian-agent (NBD export),
/// then runs the same fio jobs against the export (fio's nbd engine) and against the image file
/// directly through the page cache, which is the caching mode the VSP uses.
public enum StorageBenchmark {
    /// One fio job shape, run on both paths.
    public struct Workload: Sendable {
        public var name: String
        public var rw: String
        public var blockSize: String
        public var depth: Int
        public var metric: String  // "bw" or "iops"
    }

    public static let workloads = [
        Workload(name: "seq read 1M QD8", rw: "read", blockSize: "1M", depth: 8, metric: "bw"),
        Workload(name: "seq write 1M QD8", rw: "write", blockSize: "1M", depth: 8, metric: "bw"),
        Workload(name: "rand read 4k QD32", rw: "randread", blockSize: "4k", depth: 32, metric: "iops"),
    ]

    public static func run(binDirectory: String, imageMiB: Int, seconds: Int, pollMicroseconds: Int = 0, vps: Int = 2,
                           vcpusPerSubChannel: Int = 4, isolation: String = "process", log: (String) -> Void) throws -> [StorageBenchmarkRow] {
        let dir = "\(NSTemporaryDirectory())/viridian-bench-storage-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = "\(dir)/disk.img"
        log("prefilling a \(imageMiB) MiB image")
        _ = try fio(["--name=fill", "--filename=\(image)", "--size=\(imageMiB)M", "--rw=write", "--bs=1M", "--ioengine=psync"])
        try """
            runtime_dir = "\(dir)"
            image_dir = "\(dir)"
            isolation = "\(isolation)"
            [[partition]]
            name = "bench"
            memory_mib = 256
            vps = \(vps)
            echo_devices = 0
            integration_services = []
            storage_poll_us = \(pollMicroseconds)
            [[partition.disk]]
            path = "\(image)"
            """.write(toFile: "\(dir)/host.toml", atomically: true, encoding: .utf8)
        try """
            link = "unix:\(dir)/bench.sock"
            state_dir = "\(dir)/state"
            export_dir = "\(dir)/exports"
            log_level = "warning"
            storage_vcpus_per_sub_channel = \(vcpusPerSubChannel)
            """.write(toFile: "\(dir)/agent.toml", atomically: true, encoding: .utf8)
        let host = try spawn("\(binDirectory)/viridian-host", ["run", "--config", "\(dir)/host.toml", "--log-level", "warning"])
        defer { host.terminate(); host.waitUntilExit() }
        for _ in 0..<300 where !FileManager.default.fileExists(atPath: "\(dir)/bench.sock") { usleep(10_000) }
        let agent = try spawn("\(binDirectory)/viridian-agent", ["run", "--config", "\(dir)/agent.toml"])
        defer { agent.terminate(); agent.waitUntilExit() }
        let socket = "\(dir)/exports"
        var export: String?
        for _ in 0..<1000 where export == nil {
            export = (try? FileManager.default.contentsOfDirectory(atPath: socket))?.first { $0.hasSuffix("lun0.sock") }
            if export == nil { usleep(10_000) }
        }
        guard let export else { throw BenchError.setup("the agent exported no disk") }
        let uri = "nbd+unix:///?socket=\(socket)/\(export)"
        var rows: [StorageBenchmarkRow] = []
        for w in workloads {
            let common = ["--rw=\(w.rw)", "--bs=\(w.blockSize)", "--iodepth=\(w.depth)", "--size=\(imageMiB)M",
                          "--runtime=\(seconds)", "--time_based", "--output-format=json"]
            log("\(w.name): image file")
            let direct = try fio(["--name=direct", "--filename=\(image)", "--ioengine=io_uring"] + common)
            log("\(w.name): through VMBus")
            let enlightened = try fio(["--name=vmbus", "--ioengine=nbd", "--uri=\(uri)"] + common)
            let key = w.rw.contains("write") ? "write" : "read"
            let d = direct[key] ?? (0, 0), e = enlightened[key] ?? (0, 0)
            let ratio = w.metric == "bw" ? e.0 / max(d.0, 1) : e.1 / max(d.1, 1)
            rows.append(StorageBenchmarkRow(workload: w.name, directMBps: d.0 / 1e6, directIOPS: d.1, enlightenedMBps: e.0 / 1e6,
                                            enlightenedIOPS: e.1, ratio: ratio))
        }
        return rows
    }

    static func spawn(_ path: String, _ arguments: [String], quiet: Bool = false) throws -> Process {
        guard FileManager.default.isExecutableFile(atPath: path) else { throw BenchError.setup("\(path) is missing (swift build -c release)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = arguments
        if quiet { p.standardOutput = FileHandle.nullDevice }
        try p.run()
        return p
    }

    /// Runs fio; returns bytes/s and IOPS per direction.
    static func fio(_ arguments: [String]) throws -> [String: (Double, Double)] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/fio")
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw BenchError.setup("fio \(arguments.joined(separator: " ")) failed") }
        guard let start = data.firstIndex(of: UInt8(ascii: "{")),
            let json = try JSONSerialization.jsonObject(with: data[start...]) as? [String: Any],
            let job = (json["jobs"] as? [[String: Any]])?.first
        else { return [:] }
        var out: [String: (Double, Double)] = [:]
        for key in ["read", "write"] {
            if let d = job[key] as? [String: Any] {
                out[key] = ((d["bw_bytes"] as? NSNumber)?.doubleValue ?? 0, (d["iops"] as? NSNumber)?.doubleValue ?? 0)
            }
        }
        return out
    }
}

/// Why a benchmark could not run.
public enum BenchError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self {
        case .setup(let s): s
        }
    }
}
