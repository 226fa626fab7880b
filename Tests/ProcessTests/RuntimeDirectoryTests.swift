// The host's sockets: in a directory that is this user's own, reachable by this user only.

import Foundation
import Glibc
import HostRuntime
import Testing

@Suite("Runtime directory and socket modes")
struct RuntimeDirectoryTests {
    func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-rt-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test("A runtime directory that is a symlink, writable by others or someone else's is refused; a new one is 0700")
    func refused() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try RuntimeDirectory.prepare("\(dir)/new/run")
        var st = stat()
        #expect(lstat("\(dir)/new/run", &st) == 0 && st.st_mode & 0o777 == 0o700)
        // Someone made it first, open to all (as another user's /tmp/viridian-UID could be).
        mkdir("\(dir)/open", 0o777)
        chmod("\(dir)/open", 0o777)
        #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/open") }
        // A symlink to a directory elsewhere.
        symlink("\(dir)/new/run", "\(dir)/link")
        #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/link") }
        // Another user's (only root can hand a directory to someone else).
        if getuid() == 0 {
            mkdir("\(dir)/theirs", 0o755)
            chown("\(dir)/theirs", 65534, 65534)
            #expect(throws: RuntimeDirectory.Refused.self) { try RuntimeDirectory.prepare("\(dir)/theirs") }
        }
    }

    @Test("The partition and control sockets are mode 0600")
    func socketModes() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        for name in ["guest1.sock", "host.sock"] {
            var st = stat()
            let path = fixture.directory.appendingPathComponent(name).path
            #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600, "\(name): mode \(String(st.st_mode & 0o777, radix: 8))")
        }
    }
}

@Suite("A stuck partition")
struct StuckPartitionTests {
    @Test("A partition whose thread is stuck is reported 'not answering'; status still answers, the other partition serves, requests to it fail with a message")
    func notAnswering() throws {
        // The test-only fault: the host honours test-stall only with VIRIDIAN_TEST_FAULTS=1.
        setenv("VIRIDIAN_TEST_FAULTS", "1", 1)
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n[[partition]]\nname = \"guest2\"\n")
        unsetenv("VIRIDIAN_TEST_FAULTS")
        let control = fixture.directory.appendingPathComponent("host.sock").path
        let stall = try ViridianHostService.send(ControlRequest(op: "test-stall", partition: "guest1", value: "20000"), controlPath: control)
        #expect(String(decoding: stall, as: UTF8.self).contains("true"))
        let started = Date()
        let status = try fixture.status()
        let took = Date().timeIntervalSince(started)
        #expect(status.partitions.map(\.state) == ["not answering", "waiting"], "\(status.partitions.map(\.state))")
        #expect(took < Double(PartitionService.performTimeoutMs) / 1000 + 2, "status took \(took) s")
        // The other partition serves an agent meanwhile.
        let agent = try fixture.agent(["echo", "--packets", "1000"], partition: "guest2")
        #expect(agent.wait(seconds: 60) == 0, "\(agent.text)")
        // A request for the stuck one fails with a message instead of hanging.
        let reply = String(decoding: try ViridianHostService.send(ControlRequest(op: "disk", partition: "guest1", action: "remove", lun: 5),
                                                                  controlPath: control), as: UTF8.self)
        #expect(reply.contains("did not answer"), "\(reply)")
        // When the thread is free again, so is the partition.
        #expect(try eventually(seconds: 40) { try fixture.status().partitions[0].state == "waiting" })
    }
}
