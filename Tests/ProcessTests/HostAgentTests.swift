// viridian-host and viridian-agent as real processes: negotiation, listing, echo traffic, VPs, faults, scale.

import AgentRuntime
import CSystem
import Foundation
import Glibc
import HostRuntime
import PartitionLink
import Testing
import VMBusWire

func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
    // Logs go to the same file; the JSON document starts at the first line that opens one.
    guard let start = text.range(of: "\n{")?.lowerBound ?? text.range(of: "\n[")?.lowerBound ?? (text.hasPrefix("{") || text.hasPrefix("[") ? text.startIndex : nil) else {
        throw HarnessError.missing("no JSON in output: \(text)")
    }
    return try JSONDecoder().decode(T.self, from: Data(text[start...].utf8))
}

@Suite("Host and agent processes", .serialized)
struct HostAgentTests {
    @Test("The agent negotiates and lists the offered devices")
    func list() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nvps = 2\necho_devices = 2\n")
        let agent = try fixture.agent(["list", "--json"])
        #expect(agent.wait() == 0, "\(agent.text)")
        let devices = try decode([DeviceInfo].self, from: agent.text)
        #expect(devices.map(\.deviceClass) == ["Viridian Echo", "Viridian Echo", "Heartbeat", "Time Synchronization",
                                                "Operating system shutdown", "Data Exchange", "VSS (Backup/Restore)", "Guest services",
                                                "Synthetic SCSI Controller"])
        #expect(devices[0].classID == "5649524d-4543-484f-8000-766972696469" && devices[2].classID == "57164f39-9115-4e78-ab55-382f3bd5422d")
        #expect(devices[6].classID == "35fa2e29-ea23-4236-96ae-3a6ebacba440" && devices[7].classID == "34d14be3-dee4-41c8-9ae7-6b174977c192")
        #expect(devices.map(\.relid) == Array(1...9))
        let plain = try fixture.agent(["list"])
        #expect(plain.wait() == 0)
        #expect(plain.text.contains("VMBUS ID  1: Class_ID = {5649524d-4543-484f-8000-766972696469} - Viridian Echo"))
        #expect(plain.text.contains("VMBUS ID  4: Class_ID = {9527e630-d0ae-497b-adce-e80ab0175caf} - Time Synchronization"))
    }

    @Test("100k echo packets cross the process boundary intact")
    func echo100k() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let agent = try fixture.agent(["echo", "--packets", "100000", "--payload", "200", "--json"])
        #expect(agent.wait(seconds: 300) == 0, "\(agent.text)")
        let report = try decode(EchoReport.self, from: agent.text)
        #expect(report.completions == 100_000 && report.mismatches == 0)
    }

    @Test("With 4 VPs, channels targeted at each VP interrupt that VP")
    func fourVPs() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nvps = 4\necho_devices = 4\n")
        let agent = try fixture.agent(["echo", "--packets", "8000", "--channels", "4", "--json"])
        #expect(agent.wait(seconds: 120) == 0, "\(agent.text)")
        let report = try decode(EchoReport.self, from: agent.text)
        #expect(report.mismatches == 0 && report.completions == 8000)
        #expect(Set(report.channels.map(\.targetVP)) == [0, 1, 2, 3])
        #expect(report.channels.allSatisfy { $0.completions == 2000 })
        // VP 0 also takes the control-plane messages; every VP must have taken channel interrupts.
        #expect(report.interruptsPerVP.count == 4 && report.interruptsPerVP.allSatisfy { $0 > 0 }, "\(report.interruptsPerVP)")
    }

    @Test("SIGKILL of the agent mid-traffic: the host notices within 1 s and a new agent works")
    func agentKilled() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let victim = try fixture.agent(["echo", "--packets", "100000000"])
        #expect(try eventually(seconds: 30) { try fixture.status().partitions[0].channels.first?.packetsIn ?? 0 > 1000 })
        victim.signal(SIGKILL)
        victim.wait(seconds: 5)
        let killed = Date()
        #expect(try eventually(seconds: 1) { try fixture.status().partitions[0].state == "waiting" })
        #expect(Date().timeIntervalSince(killed) < 1.0)
        let next = try fixture.agent(["echo", "--packets", "2000"])
        #expect(next.wait(seconds: 60) == 0, "\(next.text)")
        let status = try fixture.status().partitions[0]
        #expect(status.attachCount == 2)
    }

    @Test("Eight partitions serve eight agents at once")
    func eightPartitions() throws {
        let config = (1...8).map { "[[partition]]\nname = \"p\($0)\"\nmemory_mib = 16\nvps = 1\n" }.joined()
        let fixture = try HostFixture(config: config)
        let agents = try (1...8).map { try fixture.agent(["echo", "--packets", "3000", "--json"], partition: "p\($0)") }
        for agent in agents {
            #expect(agent.wait(seconds: 120) == 0, "\(agent.text)")
            #expect(try decode(EchoReport.self, from: agent.text).mismatches == 0)
        }
        #expect(try fixture.status().partitions.map(\.attachCount) == [Int](repeating: 1, count: 8))
    }

    @Test("Host killed: the agent exits non-zero; with --reconnect it rejoins a restarted host")
    func hostKilled() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let plain = try fixture.agent(["run"])
        #expect(try eventually(seconds: 60) { try fixture.status().partitions[0].channels.first?.state == "offered" && fixture.status().partitions[0].vmbusVersion != nil })
        fixture.host.signal(SIGKILL)
        let code = plain.wait(seconds: 10)
        #expect(code != nil && code != 0)
        #expect(plain.text.contains("host"), "\(plain.text)")

        // A new host on the same sockets; a reconnecting agent survives a host restart.
        let config = fixture.directory.appendingPathComponent("host.toml").path
        let host2 = try Child("viridian-host", ["run", "--config", config])
        #expect(eventually(seconds: 60) { (try? fixture.status()) != nil })
        let sticky = try fixture.agent(["run", "--reconnect"])
        #expect(try eventually(seconds: 60) { try fixture.status().partitions[0].state == "attached" })
        host2.signal(SIGKILL)
        host2.wait(seconds: 5)
        #expect(sticky.process.isRunning)
        let host3 = try Child("viridian-host", ["run", "--config", config])
        #expect(eventually(seconds: 60) { (try? fixture.status().partitions[0].state) == "attached" })
        sticky.signal(SIGTERM)
        #expect(sticky.wait(seconds: 10) == 0)
        host3.signal(SIGTERM)
        #expect(host3.wait(seconds: 10) == 0)
        #expect(!FileManager.default.fileExists(atPath: fixture.directory.appendingPathComponent("guest1.sock").path), "sockets removed on SIGTERM")
    }

    @Test("The guest memory and VP blocks a peer gets are sealed: it cannot shrink or grow them under the host")
    func sealedMemory() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nmemory_mib = 16\n")
        let peer = try LinkSocket.connect(to: fixture.link("guest1"))
        try peer.send(.hello(.init(pid: UInt32(getpid()), flags: 0)))
        let (frame, fds) = try peer.receive()
        defer { fds.forEach { close($0) } }
        guard case .welcome(let welcome) = frame, fds.count >= 2 else {
            Issue.record("expected a welcome with descriptors, got \(frame)")
            return
        }
        #expect(viridian_fd_size(fds[0]) == Int64(welcome.memoryBytes))
        for fd in fds.prefix(2) {
            // A peer that truncated its memory used to turn the host's next access into SIGBUS.
            #expect(ftruncate(fd, 0) == -1 && errno == EPERM, "shrink")
            #expect(ftruncate(fd, 1 << 30) == -1 && errno == EPERM, "grow")
        }
        #expect(try fixture.status().partitions[0].state == "attached")
    }

    @Test("Sends to a peer that does not read fail with EAGAIN instead of blocking (the host's partition thread uses them)")
    func nonBlockingSends() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &pair) == 0)
        let host = LinkSocket(adopting: pair[0]), agent = LinkSocket(adopting: pair[1])
        var sent = 0
        var failure: LinkError?
        while failure == nil && sent < 1_000_000 {
            do { try host.send(.eventFD(connectionID: UInt32(sent)), wait: false); sent += 1 } catch { failure = error }
        }
        #expect(failure == .system(call: "sendmsg", errno: EAGAIN), "after \(sent) frames: \(String(describing: failure))")
        #expect(sent > 0)
        // The peer reads one; there is room again.
        _ = try agent.receive()
        try host.send(.eventFD(connectionID: 0), wait: false)
    }

    @Test("A trace file that cannot take more (a full disk) stops the trace, not the host (FileHandle.write used to trap)")
    func traceOnFullDisk() throws {
        let trace = try TraceWriter(path: "/dev/full")
        for _ in 0..<100 { trace.message(partition: "guest1", guestToHost: true, bytes: [1, 2, 3, 4]) }
        #expect(trace.failure != nil && trace.records == 0, "\(String(describing: trace.failure))")
    }

    @Test("A peer with a bad handshake or garbage is dropped; the host keeps serving")
    func badPeers() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let path = try LinkSocket.path(of: fixture.link("guest1"))
        // Garbage bytes instead of hello.
        let garbage = try LinkSocket.connect(to: fixture.link("guest1"))
        _ = [UInt8](repeating: 0xEE, count: 100).withUnsafeBytes { write(garbage.fd, $0.baseAddress, $0.count) }
        if case .refuse(let code, _) = try garbage.receive().0 { #expect(code == LinkRefusal.badHello) } else { Issue.record("expected refuse") }
        // A wrong frame type first.
        let wrong = try LinkSocket.connect(to: fixture.link("guest1"))
        try wrong.send(.eventFD(connectionID: 7))
        if case .refuse = try wrong.receive().0 {} else { Issue.record("expected refuse") }
        // Silence: dropped after the handshake timeout, without blocking other agents for long.
        let silent = try LinkSocket.connect(to: "unix:" + path)
        let agent = try fixture.agent(["echo", "--packets", "1000"])
        #expect(agent.wait(seconds: 60) == 0, "\(agent.text)")
        _ = silent
        // A second agent while one is attached is refused as busy.
        let holder = try fixture.agent(["run"])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].state == "attached" })
        let second = try fixture.agent(["list"])
        #expect(second.wait(seconds: 20) != 0)
        #expect(second.text.contains("already has an agent"), "\(second.text)")
        holder.signal(SIGTERM)
        #expect(holder.wait(seconds: 10) == 0)
    }

    @Test("--trace writes channel messages and packet headers as JSON lines")
    func trace() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-trace-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let tracePath = directory.appendingPathComponent("trace.jsonl").path
        let host = try Child("viridian-host", ["run", "--runtime-dir", directory.path, "--image-dir", directory.path, "--trace", tracePath])
        try waitFor(path: directory.appendingPathComponent("host.sock").path)
        let agent = try Child("viridian-agent", ["echo", "--packets", "10", "--link", "unix:\(directory.path)/guest1.sock"])
        #expect(agent.wait(seconds: 60) == 0, "\(agent.text)")
        host.signal(SIGTERM)
        #expect(host.wait(seconds: 10) == 0)
        let lines = try String(contentsOfFile: tracePath, encoding: .utf8).split(separator: "\n")
        let records = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let messages = records.filter { $0["kind"] as? String == "message" }
        let packets = records.filter { $0["kind"] as? String == "packet" }
        #expect(messages.first?["type"] as? String == "initiateContact" && messages.first?["dir"] as? String == "g2h")
        #expect(messages.contains { $0["type"] as? String == "offerChannel" && ($0["fields"] as? [String: Any])?["childRelid"] as? Int == 1 })
        #expect(packets.filter { $0["dir"] as? String == "g2h" }.count == 10 && packets.filter { $0["dir"] as? String == "h2g" }.count == 10)
        #expect(packets.allSatisfy { ($0["head"] as? String)?.count == 2 * min(64, ($0["payload_len"] as? Int) ?? 0) })
    }
}

@Suite("Hostile agents", .serialized)
struct HostileAgentTests {
    @Test("Garbage in the VP register block, bad GPAs and bad MSRs get statuses; the host keeps serving")
    func garbageTraps() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nvps = 2\n")
        let link = try GuestLink.attach(to: fixture.link("guest1"))
        link.startMonitor { _ in }
        #expect(link.readMSR(vp: 1, 0x4000_0002) == 1, "VP_INDEX of VP 1")
        #expect(!link.writeMSR(vp: 0, 0x4000_0083, 1 << 40 | 1), "SIMP beyond guest memory")
        #expect(!link.writeMSR(vp: 0, 0x1234, 0), "unknown MSR")
        #expect(HypercallResult(rawValue: link.hypercall(vp: 0, control: 0xFFFF, input: 0, output: 0)).status == .invalidHypercallCode)
        #expect(HypercallResult(rawValue: link.hypercall(vp: 0, control: HypercallControl(.postMessage).rawValue,
                                                         input: UInt64(link.memory.size), output: 0)).status == .invalidParameter)
        #expect(HypercallResult(rawValue: link.hypercall(vp: 0, control: HypercallControl(.postMessage).rawValue,
                                                         input: 0x1003, output: 0)).status == .invalidAlignment)
        // Random register blocks: the host answers each one and survives.
        var state: UInt64 = 3
        for _ in 0..<2000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            _ = link.hypercall(vp: UInt32(state >> 63), control: state, input: state >> 7, output: state >> 3)
            _ = link.writeMSR(vp: 0, UInt32(truncatingIfNeeded: state >> 11) | 0x4000_0000, state)
        }
        link.detach()
        let agent = try fixture.agent(["echo", "--packets", "1000"])
        #expect(agent.wait(seconds: 60) == 0, "\(agent.text)")
    }
}

@Suite("CPU placement", .serialized)
struct CPUPlacementTests {
    /// Cpus_allowed_list of every thread of `pid`.
    func allowedCPUs(_ pid: Int32) -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { tid in
            (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/status", encoding: .utf8))?
                .split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
                .map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        }
    }

    @Test("cpus = [0]: the partition thread and the agent's VP threads run on CPU 0 only")
    func pinned() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nvps = 2\ncpus = [0]\n")
        let agent = try fixture.agent(["run"])
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].vmbusVersion != nil })
        #expect(eventually(seconds: 5) { allowedCPUs(agent.pid).filter { $0 == "0" }.count >= 2 }, "\(allowedCPUs(agent.pid))")
        // The partition thread runs in the partition's worker process.
        let worker = try #require(try fixture.status().partitions[0].worker?.pid)
        #expect(allowedCPUs(worker).contains("0"), "\(allowedCPUs(worker))")
        agent.signal(SIGTERM)
        #expect(agent.wait(seconds: 10) == 0)
    }
}
