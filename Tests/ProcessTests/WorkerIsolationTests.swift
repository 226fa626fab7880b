// Process isolation: one worker per partition, confined, supervised; a crash stays in its partition.

import Foundation
import Glibc
import HostRuntime
import Testing

@Suite("Partition workers", .serialized)
struct WorkerIsolationTests {
    /// A host with two echo partitions whose workers honour the test-only faults.
    func twoPartitions(_ extra: String = "") throws -> HostFixture {
        setenv("VIRIDIAN_TEST_FAULTS", "1", 1)
        defer { unsetenv("VIRIDIAN_TEST_FAULTS") }
        return try HostFixture(config: "\(extra)[[partition]]\nname = \"guest1\"\n[[partition]]\nname = \"guest2\"\n")
    }

    func fault(_ fixture: HostFixture, _ partition: String, _ kind: String) throws -> String {
        let control = fixture.directory.appendingPathComponent("host.sock").path
        return String(decoding: try ViridianHostService.send(ControlRequest(op: "test-crash", partition: partition, kind: kind), controlPath: control),
                      as: UTF8.self)
    }

    @Test("A worker that crashes takes only its partition: the other keeps serving traffic, status says how it died, a new guest restarts it")
    func crashContained() throws {
        let fixture = try twoPartitions()
        let before = try fixture.status().partitions
        #expect(before.map { $0.worker?.state } == ["serving", "serving"], "\(before.map(\.worker))")
        let pids = before.compactMap { $0.worker?.pid }
        #expect(pids.count == 2 && Set(pids).count == 2 && !pids.contains(fixture.host.pid), "one process per partition, not the host's: \(pids)")
        // Traffic on guest2 runs through guest1's crash.
        let busy = try fixture.agent(["echo", "--packets", "60000"], partition: "guest2")
        let victim = try fixture.agent(["run"], partition: "guest1")
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].state == "attached" })
        _ = try? fault(fixture, "guest1", "abort")
        #expect(try eventually(seconds: 10) { try fixture.status().partitions[0].state == "failed" })
        let failed = try fixture.status().partitions
        #expect(failed[0].worker?.lastExit?.contains("SIGABRT") == true && failed[0].worker?.pid == nil, "\(String(describing: failed[0].worker))")
        #expect(failed[1].worker?.state == "serving" && failed[1].worker?.pid == pids[1], "guest2's worker is untouched")
        #expect(fixture.host.text.contains("guest1: worker pid \(pids[0]) killed by signal 6 (SIGABRT)"), "\(fixture.host.text)")
        #expect(busy.wait(seconds: 120) == 0, "guest2's echo traffic went on: \(busy.text)")
        #expect(victim.wait(seconds: 10) != 0, "the crashed partition's agent saw its host go")
        // A request for the dead partition is answered, not hung.
        let reply = String(decoding: try ViridianHostService.send(ControlRequest(op: "kvp", partition: "guest1", action: "list"),
                                                                  controlPath: fixture.directory.appendingPathComponent("host.sock").path), as: UTF8.self)
        #expect(reply.contains("not running") && reply.contains("SIGABRT"), "\(reply)")
        // restart = "on-attach": the next guest brings a new worker.
        let next = try fixture.agent(["echo", "--packets", "2000"], partition: "guest1")
        #expect(next.wait(seconds: 60) == 0, "\(next.text)\n\(fixture.host.text)")
        let after = try fixture.status().partitions[0].worker
        #expect(after?.starts == 2 && after?.state == "serving" && after?.pid != pids[0], "\(String(describing: after))")
    }

    @Test("A worker is confined: no files, no capabilities, no new programs (execve kills it with SIGSYS), no descriptor of another partition")
    func confined() throws {
        let fixture = try twoPartitions()
        let probe = try fault(fixture, "guest1", "probe")
        #expect(probe.contains("Operation not permitted") && probe.contains("\"capabilities\",\n      \"0\""), "\(probe)")
        // Each worker holds its own image and none of the other's.
        let status = try fixture.status().partitions
        let workers = status.compactMap { $0.worker?.pid }
        let open1 = openFiles(workers[0]), open2 = openFiles(workers[1])
        #expect(open1.contains { $0.hasSuffix("guest1-disk0.img") } && !open1.contains { $0.contains("guest2") }, "\(open1)")
        #expect(open2.contains { $0.hasSuffix("guest2-disk0.img") } && !open2.contains { $0.contains("guest1") }, "\(open2)")
        _ = try? fault(fixture, "guest2", "exec")
        let died = try eventually(seconds: 10) { try fixture.status().partitions[1].worker?.lastExit?.contains("SIGSYS") == true }
        #expect(died, "\(fixture.host.text)")
        #expect(try fixture.status().partitions[0].worker?.state == "serving")
    }

    @Test("restart = \"always\" starts a killed worker again at once; isolation = \"none\" keeps partitions on threads of the host")
    func policies() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\nrestart = \"always\"\n")
        let first = try #require(try fixture.status().partitions[0].worker?.pid)
        kill(first, SIGKILL)
        let restarted = try eventually(seconds: 10) {
            let w = try fixture.status().partitions[0].worker
            return w?.state == "serving" && w?.starts == 2 && w?.lastExit?.contains("SIGKILL") == true
        }
        #expect(restarted, "\(fixture.host.text)")
        let agent = try fixture.agent(["echo", "--packets", "1000"])
        #expect(agent.wait(seconds: 60) == 0, "\(agent.text)")

        let threads = try HostFixture(config: "isolation = \"none\"\n[[partition]]\nname = \"guest1\"\n")
        let agent2 = try threads.agent(["echo", "--packets", "1000"])
        #expect(agent2.wait(seconds: 60) == 0, "\(agent2.text)")
        #expect(try threads.status().partitions[0].worker == nil)
    }
}

/// What a process has open, as /proc/PID/fd links.
func openFiles(_ pid: Int32) -> [String] {
    let dir = "/proc/\(pid)/fd"
    return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap {
        try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)")
    }
}

@Suite("Configuration text the TOML parser would abort on")
struct TOMLSafetyTests {
    @Test("A table header without a name ('[' found by the host-config fuzzer: toml++ asserted and the host aborted) is a configuration error")
    func headerWithoutName() throws {
        for text in ["[\n", "[", "[ ]\n", "[[\n", "name = 1\n  [=\n", "[\u{6DF}"] {
            #expect(throws: ConfigurationError.self, "\(text.debugDescription)") { try HostConfiguration.parse(text) }
        }
        // Tables and arrays of tables still parse.
        let ok = try HostConfiguration.parse("[[partition]]\nname = \"a\"\n[[ partition.nic ]]\ntap = \"t0\"\n[partition.ne2000]\ntap = \"t1\"\n")
        #expect(ok.partition.first?.nic.first?.tap == "t0")
    }
}

@Suite("Socket peers", .serialized)
struct SocketPeerTests {
    @Test("A peer of another user is refused even where the socket's mode would let it in: the control socket answers 'not allowed', the partition socket drops it")
    func foreignPeer() throws {
        guard getuid() == 0 else {
            Issue.record("needs root to connect as another user")
            return
        }
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let control = fixture.directory.appendingPathComponent("host.sock").path
        let link = fixture.directory.appendingPathComponent("guest1.sock").path
        // Open the way a careless administrator might: directory and sockets for everyone.
        chmod(fixture.directory.path, 0o755)
        chmod(control, 0o666)
        chmod(link, 0o666)
        // Read only: the host answers a refused peer at once and closes, so a write could meet EPIPE.
        let (_, reply) = try sh("setpriv --reuid=65534 --regid=65534 --clear-groups socat -u -t 2 UNIX-CONNECT:\(control) STDOUT")
        #expect(reply.contains("not allowed") && !reply.contains("partitions"), "\(reply)")
        let (_, linkReply) = try sh("echo hello | setpriv --reuid=65534 --regid=65534 --clear-groups socat -t 2 - UNIX-CONNECT:\(link),type=5")
        _ = linkReply
        #expect(eventually(seconds: 5) { fixture.host.text.contains("not root and not this host's user") }, "\(fixture.host.text)")
        // This host's own user still gets its answer.
        #expect(try fixture.status().partitions.count == 1)
    }
}
