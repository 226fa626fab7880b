// viridian-bench network: iperf3 TCP through viridian-host's TAP, VMBus and viridian-agent's TAP, beside
// the least a user-space TAP relay costs (bench/taprelay.c) and the kernel's own ceiling (a veth pair).

import Foundation
import Glibc
import PartitionLink

/// One path in one direction, over all runs.
public struct NetworkBenchmarkRow: Codable, Sendable {
    /// "viridian", "taprelay" or "veth".
    public var path: String
    /// "guest-to-host" (iperf3 client in the guest namespace sends) or "host-to-guest" (it receives, -R).
    public var direction: String
    public var medianGbps: Double
    public var minGbps: Double
    public var maxGbps: Double
    /// Every run in order, Gbit/s received.
    public var runsGbps: [Double]
}

/// Viridian's median beside the baselines' in one direction.
public struct NetworkBenchmarkRatio: Codable, Sendable {
    public var direction: String
    public var viridianOverTaprelay: Double
    public var viridianOverVeth: Double
}

/// The whole measurement.
public struct NetworkBenchmarkReport: Codable, Sendable {
    public var mtu: Int
    public var seconds: Int
    public var repetitions: Int
    public var rows: [NetworkBenchmarkRow]
    public var ratios: [NetworkBenchmarkRatio]
}

/// Two network namespaces stand for the host and the guest; three paths join them, each with its own
/// devices and subnet, all set up at once. iperf3's server runs in the host namespace, its client in the
/// guest namespace; runs are interleaved (every path and direction once per repetition).
public enum NetworkBenchmark {
    /// A path: its device at each end and the /24 between them (.1 host side, .2 guest side).
    struct Path: Sendable {
        var name: String
        var hostDevice: String
        var guestDevice: String
        var subnet: String
        var hostAddress: String { "\(subnet).1" }
        var guestAddress: String { "\(subnet).2" }
    }

    static let viridian = Path(name: "viridian", hostDevice: "vh0", guestDevice: "vg0", subnet: "10.78.0")
    static let taprelay = Path(name: "taprelay", hostDevice: "tr0", guestDevice: "tr1", subnet: "10.79.0")
    static let veth = Path(name: "veth", hostDevice: "ve0", guestDevice: "ve1", subnet: "10.80.0")
    static let paths = [viridian, taprelay, veth]
    public static let directions = ["guest-to-host", "host-to-guest"]
    static let port = 5201

    /// SIGINT, SIGTERM and SIGHUP ring this instead of ending the process, so that a bench that is
    /// interrupted still stops its children and deletes its namespaces.
    static let interruptions: EventFD? = {
        guard let doorbell = try? EventFD(), viridianRouteSignals(doorbell) else { return nil }
        return doorbell
    }()

    public static func run(binDirectory: String, seconds: Int, repetitions: Int, mtu: Int, taprelaySource: String? = nil,
                           log: (String) -> Void) throws -> NetworkBenchmarkReport {
        guard getuid() == 0 else {
            throw BenchError.setup("viridian-bench network needs root: it creates network namespaces, TAP devices and a veth pair")
        }
        let tools = try NetworkTools()
        for name in ["viridian-host", "viridian-agent"] where !FileManager.default.isExecutableFile(atPath: "\(binDirectory)/\(name)") {
            throw BenchError.setup("\(binDirectory)/\(name) is missing (swift build -c release)")
        }
        let source = try findTaprelaySource(taprelaySource, binDirectory: binDirectory)
        let rig = try NetworkBenchRig(tools: tools, interruptions: interruptions)
        defer { rig.tearDown() }

        log("namespaces \(rig.hostNS) (host) and \(rig.guestNS) (guest)")
        try rig.createNamespaces()
        log("veth pair")
        try rig.startVeth(veth, mtu: mtu)
        log("taprelay from \(source)")
        try rig.startTaprelay(taprelay, source: source, mtu: mtu)
        log("viridian-host and viridian-agent")
        try rig.startViridian(viridian, binDirectory: binDirectory, mtu: mtu, log: log)
        try rig.startIperfServer()
        for path in paths { try rig.waitForConnectivity(path) }

        var samples: [String: [Double]] = [:]
        for repetition in 1...repetitions {
            for path in paths {
                for direction in directions {
                    let gbps = try rig.iperf(path, direction: direction, seconds: seconds)
                    samples["\(path.name) \(direction)", default: []].append(gbps)
                    log("run \(repetition)/\(repetitions) \(path.name) \(direction): \(String(format: "%.2f", gbps)) Gbit/s")
                }
            }
        }

        var rows: [NetworkBenchmarkRow] = []
        for path in paths {
            for direction in directions {
                let runs = samples["\(path.name) \(direction)"] ?? []
                let sorted = runs.sorted()
                rows.append(NetworkBenchmarkRow(path: path.name, direction: direction, medianGbps: sorted[sorted.count / 2],
                                                minGbps: sorted.first ?? 0, maxGbps: sorted.last ?? 0, runsGbps: runs))
            }
        }
        func median(_ path: Path, _ direction: String) -> Double {
            rows.first { $0.path == path.name && $0.direction == direction }?.medianGbps ?? 0
        }
        let ratios = directions.map { direction in
            NetworkBenchmarkRatio(direction: direction,
                                  viridianOverTaprelay: median(viridian, direction) / max(median(taprelay, direction), 1e-9),
                                  viridianOverVeth: median(viridian, direction) / max(median(veth, direction), 1e-9))
        }
        return NetworkBenchmarkReport(mtu: mtu, seconds: seconds, repetitions: repetitions, rows: rows, ratios: ratios)
    }

    /// --taprelay-source, else bench/taprelay.c in the current directory, above the binary, or in the
    /// source tree this file was compiled from.
    static func findTaprelaySource(_ explicit: String?, binDirectory: String) throws -> String {
        if let explicit {
            guard FileManager.default.fileExists(atPath: explicit) else { throw BenchError.setup("\(explicit) does not exist") }
            return explicit
        }
        var candidates = [FileManager.default.currentDirectoryPath + "/bench/taprelay.c"]
        var directory = URL(fileURLWithPath: binDirectory)
        for _ in 0..<4 {
            directory = directory.deletingLastPathComponent()
            candidates.append(directory.appendingPathComponent("bench/taprelay.c").path)
        }
        let tree = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(tree.appendingPathComponent("bench/taprelay.c").path)
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw BenchError.setup("bench/taprelay.c not found (looked at \(candidates.joined(separator: ", "))); use --taprelay-source")
        }
        return found
    }
}

/// The programs the network benchmark runs, found on PATH or in the usual directories.
struct NetworkTools: Sendable {
    var ip: String
    var ss: String
    var ping: String
    var iperf3: String
    var cc: String

    /// Finds every tool in `needed`; the others keep their bare names and must not be run
    /// (`viridian-bench compare` builds no taprelay, and its storage part runs none of them).
    init(needed: Set<String> = ["ip", "ss", "ping", "iperf3", "cc"]) throws {
        func locate(_ name: String, _ package: String) throws -> String {
            needed.contains(name) ? try NetworkTools.find(name, package: package) : name
        }
        ip = try locate("ip", "iproute2")
        ss = try locate("ss", "iproute2")
        ping = try locate("ping", "iputils-ping")
        iperf3 = try locate("iperf3", "iperf3")
        cc = try locate("cc", "gcc")
    }

    static func find(_ name: String, package: String) throws -> String {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        for directory in path + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] where !directory.isEmpty {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw BenchError.setup("\(name) is not installed (apt-get install \(package))")
    }
}

/// A child process whose standard output and error go to files.
final class BenchChild {
    let label: String
    let process = Process()
    let outputPath: String
    let errorPath: String

    init(_ label: String, _ executable: String, _ arguments: [String], directory: String) throws {
        self.label = label
        let base = "\(directory)/\(label)-\(UUID().uuidString.prefix(8))"
        outputPath = base + ".out"
        errorPath = base + ".err"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errorPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorPath))
        try process.run()
    }

    var isRunning: Bool { process.isRunning }
    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }
    /// The end of standard error, for messages.
    var errorTail: String { String(errors.suffix(2000)) }

    /// SIGTERM, then SIGKILL after `grace` seconds; waits for the exit.
    func stop(grace: Double = 5) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    func removeFiles() {
        try? FileManager.default.removeItem(atPath: outputPath)
        try? FileManager.default.removeItem(atPath: errorPath)
    }
}

/// The namespaces, devices and processes of one benchmark; `tearDown()` undoes everything in reverse order.
final class NetworkBenchRig {
    /// The host side of every bench configuration: runtime files in `directory`, one partition
    /// "bench" (256 MiB, 2 VPs) without echo devices or integration services; devices follow.
    static func benchHostConfiguration(directory: String) -> String {
        """
        runtime_dir = "\(directory)"
        image_dir = "\(directory)"
        [[partition]]
        name = "bench"
        memory_mib = 256
        vps = 2
        echo_devices = 0
        integration_services = []

        """
    }

    /// The agent side: joins "bench" in `directory`, keeps its state and exports there, quiet, no
    /// time sync or integration services; what it serves follows.
    static func benchAgentConfiguration(directory: String) -> String {
        """
        link = "unix:\(directory)/bench.sock"
        state_dir = "\(directory)/state"
        export_dir = "\(directory)/exports"
        log_level = "warning"
        timesync = "off"
        integration_services = []

        """
    }

    let tools: NetworkTools
    let interruptions: EventFD?
    let directory: String
    let hostNS: String
    let guestNS: String
    private var undo: [() -> Void] = []
    private var host: BenchChild?
    private var agent: BenchChild?

    /// `label` names the scratch directory (viridian-bench-LABEL-PID under the temporary directory).
    init(tools: NetworkTools, interruptions: EventFD?, label: String = "network") throws {
        self.tools = tools
        self.interruptions = interruptions
        let pid = getpid()
        hostNS = "vbh-\(pid)"
        guestNS = "vbg-\(pid)"
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-bench-\(label)-\(pid)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let directory = directory
        undo.append { try? FileManager.default.removeItem(atPath: directory) }
    }

    func tearDown() {
        let actions = undo
        undo = []
        for action in actions.reversed() { action() }
    }

    // MARK: Commands

    /// Sleeps up to `milliseconds`; throws when the bench was interrupted by a signal.
    func pause(milliseconds: Int32) throws {
        guard let interruptions else {
            usleep(UInt32(milliseconds) * 1000)
            return
        }
        var entry = pollfd(fd: interruptions.fd, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, milliseconds) > 0 { throw BenchError.setup("interrupted") }
    }

    /// Runs a command to its end (killed after `timeout` seconds, or when the bench is interrupted).
    func execute(_ label: String, _ executable: String, _ arguments: [String], timeout: Double = 30,
                 interruptible: Bool = true) throws -> (status: Int32, output: String, errors: String) {
        let child = try BenchChild(label, executable, arguments, directory: directory)
        defer {
            child.stop(grace: 1)
            child.removeFiles()
        }
        let deadline = Date().addingTimeInterval(timeout)
        while child.isRunning {
            if interruptible { try pause(milliseconds: 2) } else { usleep(2000) }
            if Date() > deadline {
                throw BenchError.setup("\(label) did not finish within \(Int(timeout)) s: \(([executable] + arguments).joined(separator: " "))")
            }
        }
        return (child.process.terminationStatus, child.output, child.errors)
    }

    /// `ip ARGUMENTS`, which must succeed.
    @discardableResult
    func ip(_ arguments: [String]) throws -> String {
        let (status, output, errors) = try execute("ip", tools.ip, arguments)
        guard status == 0 else { throw BenchError.setup("ip \(arguments.joined(separator: " ")) failed: \(errors)") }
        return output
    }

    /// `ip ARGUMENTS` during teardown: not interruptible, failures ignored.
    func quietly(_ arguments: [String]) {
        _ = try? execute("ip", tools.ip, arguments, timeout: 10, interruptible: false)
    }

    /// A long-running child, stopped at teardown.
    func spawn(_ label: String, _ executable: String, _ arguments: [String]) throws -> BenchChild {
        let child = try BenchChild(label, executable, arguments, directory: directory)
        undo.append { child.stop() }
        return child
    }

    /// Polls `condition` every 20 ms for up to `seconds`; throws `failure()` when it stays false or `process` exits.
    func waitUntil(seconds: Double, _ process: BenchChild? = nil, failure: () -> String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try !condition() {
            if let process, !process.isRunning {
                throw BenchError.setup("\(failure()): \(process.label) exited (\(process.process.terminationStatus)): \(process.errorTail)")
            }
            guard Date() < deadline else { throw BenchError.setup(failure()) }
            try pause(milliseconds: 20)
        }
    }

    func deviceExists(_ ns: String, _ device: String) throws -> Bool {
        try execute("ip", tools.ip, ["-n", ns, "link", "show", "dev", device]).status == 0
    }

    func waitForDevice(_ ns: String, _ device: String, seconds: Double, _ process: BenchChild?) throws {
        try waitUntil(seconds: seconds, process, failure: { "\(device) did not appear in namespace \(ns) within \(Int(seconds)) s" }) {
            try deviceExists(ns, device)
        }
    }

    // MARK: Setup

    func createNamespaces() throws {
        for ns in [hostNS, guestNS] {
            quietly(["netns", "del", ns])  // a leftover of a killed run with the same pid
            try ip(["netns", "add", ns])
            undo.append { [self] in quietly(["netns", "del", ns]) }
            try ip(["-n", ns, "link", "set", "dev", "lo", "up"])
        }
    }

    /// MTU, up and addresses at both ends of `path` (the guest end's MTU only when `guestMTU`).
    func configure(_ path: NetworkBenchmark.Path, mtu: Int, guestMTU: Bool) throws {
        try ip(["-n", hostNS, "link", "set", "dev", path.hostDevice, "mtu", "\(mtu)", "up"])
        try ip(["-n", guestNS, "link", "set", "dev", path.guestDevice] + (guestMTU ? ["mtu", "\(mtu)"] : []) + ["up"])
        try ip(["-n", hostNS, "addr", "add", "\(path.hostAddress)/24", "dev", path.hostDevice])
        try ip(["-n", guestNS, "addr", "add", "\(path.guestAddress)/24", "dev", path.guestDevice])
    }

    /// A veth pair across the namespaces; deleted with them.
    func startVeth(_ path: NetworkBenchmark.Path, mtu: Int) throws {
        try ip(["-n", hostNS, "link", "add", path.hostDevice, "type", "veth", "peer", "name", path.guestDevice, "netns", guestNS])
        try configure(path, mtu: mtu, guestMTU: true)
    }

    /// Builds taprelay and runs it between a TAP in each namespace.
    func startTaprelay(_ path: NetworkBenchmark.Path, source: String, mtu: Int) throws {
        let binary = "\(directory)/taprelay"
        let (status, _, errors) = try execute("cc", tools.cc, ["-O2", "-pthread", source, "-o", binary], timeout: 120)
        guard status == 0 else { throw BenchError.setup("cc -O2 -pthread \(source) failed: \(errors)") }
        let relay = try spawn("taprelay", binary, [hostNS, path.hostDevice, guestNS, path.guestDevice])
        try waitForDevice(hostNS, path.hostDevice, seconds: 10, relay)
        try waitForDevice(guestNS, path.guestDevice, seconds: 10, relay)
        try configure(path, mtu: mtu, guestMTU: true)
    }

    /// viridian-host with one partition and one NIC (TAP in the host namespace), viridian-agent with the
    /// guest TAP in the guest namespace. The guest TAP's MTU is the agent's business (it takes the host's).
    func startViridian(_ path: NetworkBenchmark.Path, binDirectory: String, mtu: Int, log: (String) -> Void) throws {
        try (Self.benchHostConfiguration(directory: directory) + """
            [[partition.nic]]
            tap = "\(path.hostDevice)"
            netns = "\(hostNS)"
            mtu = \(mtu)
            """).write(toFile: "\(directory)/host.toml", atomically: true, encoding: .utf8)
        try (Self.benchAgentConfiguration(directory: directory) + """
            storage = false
            network = true
            nic_tap = "\(path.guestDevice.dropLast())%d"
            nic_netns = "\(guestNS)"
            """).write(toFile: "\(directory)/agent.toml", atomically: true, encoding: .utf8)
        let host = try spawn("viridian-host", "\(binDirectory)/viridian-host", ["run", "--config", "\(directory)/host.toml", "--log-level", "warning"])
        self.host = host
        try waitUntil(seconds: 30, host, failure: { "viridian-host did not open \(directory)/bench.sock" }) {
            FileManager.default.fileExists(atPath: "\(directory)/bench.sock")
        }
        let agent = try spawn("viridian-agent", "\(binDirectory)/viridian-agent", ["run", "--config", "\(directory)/agent.toml"])
        self.agent = agent
        do {
            try waitForDevice(guestNS, path.guestDevice, seconds: 30, agent)
            try waitForDevice(hostNS, path.hostDevice, seconds: 10, host)
        } catch {
            throw BenchError.setup("\(error)\nviridian-host: \(host.errorTail)\nviridian-agent: \(agent.errorTail)")
        }
        try configure(path, mtu: mtu, guestMTU: false)
        let shown = try ip(["-n", guestNS, "link", "show", "dev", path.guestDevice])
        if !shown.contains("mtu \(mtu) ") {
            log("warning: the guest TAP \(path.guestDevice) does not have MTU \(mtu): \(shown.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    /// iperf3's server in the host namespace, on every address there.
    func startIperfServer() throws {
        let server = try spawn("iperf3-server", tools.ip, ["netns", "exec", hostNS, tools.iperf3, "-s", "-p", "\(NetworkBenchmark.port)"])
        try waitUntil(seconds: 10, server, failure: { "iperf3 -s did not listen on port \(NetworkBenchmark.port)" }) {
            let listening = try execute("ss", tools.ip, ["netns", "exec", hostNS, tools.ss, "-Hltn", "sport = :\(NetworkBenchmark.port)"])
            return listening.output.contains(":\(NetworkBenchmark.port)")
        }
    }

    /// A ping from the guest namespace to the host end answers (ARP and link state settle), within 10 s.
    func waitForConnectivity(_ path: NetworkBenchmark.Path) throws {
        do {
            try waitUntil(seconds: 10, failure: { "no ping answer on path \(path.name) (\(path.guestAddress) → \(path.hostAddress))" }) {
                try execute("ping", tools.ip, ["netns", "exec", guestNS, tools.ping, "-c", "1", "-W", "1", path.hostAddress]).status == 0
            }
        } catch let error as BenchError where path.name == NetworkBenchmark.viridian.name {
            throw BenchError.setup("\(error)\nviridian-host: \(host?.errorTail ?? "")\nviridian-agent: \(agent?.errorTail ?? "")")
        }
    }

    // MARK: Measurement

    /// One iperf3 TCP run; Gbit/s received (end.sum_received). A busy server is retried.
    func iperf(_ path: NetworkBenchmark.Path, direction: String, seconds: Int) throws -> Double {
        try iperfTransfer(path, direction: direction, seconds: seconds).gbps
    }

    /// One iperf3 TCP run: what the receiver got (end.sum_received). A busy server is retried.
    func iperfTransfer(_ path: NetworkBenchmark.Path, direction: String, seconds: Int) throws -> IperfTransfer {
        var arguments = ["netns", "exec", guestNS, tools.iperf3, "-c", path.hostAddress, "-p", "\(NetworkBenchmark.port)",
                         "-t", "\(seconds)", "-J"]
        if direction == "host-to-guest" { arguments.append("-R") }
        var attempt = 0
        while true {
            attempt += 1
            let (status, output, errors) = try execute("iperf3", tools.ip, arguments, timeout: Double(seconds) + 30)
            let data = Data(output.utf8)
            var document: [String: Any]?
            if let start = data.firstIndex(of: UInt8(ascii: "{")) {
                document = try? JSONSerialization.jsonObject(with: data[start...]) as? [String: Any]
            }
            let message = (document?["error"] as? String) ?? errors.trimmingCharacters(in: .whitespacesAndNewlines)
            if status != 0 || document?["error"] != nil {
                if message.contains("busy") && attempt < 10 {
                    try pause(milliseconds: 500)
                    continue
                }
                throw BenchError.setup("iperf3 on \(path.name) \(direction) failed (\(status)): \(message)")
            }
            guard let end = document?["end"] as? [String: Any], let received = end["sum_received"] as? [String: Any],
                let bitsPerSecond = (received["bits_per_second"] as? NSNumber)?.doubleValue
            else { throw BenchError.setup("iperf3 on \(path.name) \(direction): no end.sum_received.bits_per_second in its output") }
            let bytes = (received["bytes"] as? NSNumber)?.doubleValue ?? bitsPerSecond / 8 * Double(seconds)
            let elapsed = (received["seconds"] as? NSNumber)?.doubleValue ?? Double(seconds)
            return IperfTransfer(gbps: bitsPerSecond / 1e9, bytes: bytes, seconds: elapsed)
        }
    }
}

/// What the receiving end of one iperf3 run got.
struct IperfTransfer: Sendable {
    var gbps: Double
    var bytes: Double
    var seconds: Double
}
