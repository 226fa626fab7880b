// Emulated devices between processes: the IDE disk and the NE2000 driven by an agent without enlightenments.

import Foundation
import Glibc
import Testing

@Suite("Emulated IDE disk between processes", .serialized)
struct EmulatedDiskProcessTests {
    @Test("Without enlightenments: mkfs.ext4, 1000 files, e2fsck clean, the same files in the host image")
    func filesystem() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for losetup, mount and FUSE")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-em-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            echo_devices = 0
            integration_services = []
            disk = []
            [[partition.ide]]
            path = "\(dir)/disk.img"
            size_mib = 64
            """)
        let agent = try Child("viridian-agent", ["run", "--no-enlightenments", "--config", try agentConfig(fixture, """
            export_dir = "\(dir)/exports"
            """)])
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json") }, "\(agent.text)")
        let (listed, list) = try run("viridian-agent", ["disk", "list", "--state-dir", "\(fixture.directory.path)/state"])
        #expect(listed == 0 && list.contains("64 MiB") && list.contains("ide0-master.sock"), "\(list)")
        // Every sector crosses 128 port traps: mkfs leaves inode tables and journal to lazy init.
        let out = try filesystemRoundTrip(export: "\(dir)/exports/ide0-master.sock", image: "\(dir)/disk.img", dir: dir,
                                          mkfsOptions: "-E lazy_itable_init=1,lazy_journal_init=1", seconds: 900, context: agent.text)
        #expect(out.contains("1011/"), "\(out)")
        // Only traps, no VMBus: the host served port I/O exits and not one hypercall.
        let (_, status) = try run("viridian-host", ["status", "--json", "--runtime-dir", fixture.directory.path])
        #expect(status.contains("\"hypercalls\" : 0") && !status.contains("\"portIOExits\" : 0"), "\(status)")
        _ = agent
    }
}

@Suite("Emulated NE2000 between processes", .serialized)
struct EmulatedNICProcessTests {
    @Test("Without enlightenments: ping both ways and 10 MiB of TCP with equal SHA-256 through the NE2000")
    func traffic() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = NetworkRig(tag: "ne", subnet: 40, emulated: true)
        defer { rig.tearDown() }
        try rig.start()
        #expect(rig.ping(from: rig.guestNS, rig.hostAddress).0 == 0, "\(rig.logs)")
        #expect(rig.ping(from: rig.hostNS, rig.guestAddress).0 == 0, "\(rig.logs)")
        let (intact, report) = try rig.transfer(mib: 10, from: rig.guestNS, to: rig.hostNS, address: rig.hostAddress, port: 5402, seconds: 600)
        #expect(intact, "guest → host through the NE2000: \(report)\n\(rig.logs)")
        print("NE2000 TCP: \(report.split(separator: "\n").first ?? "")")
    }
}
