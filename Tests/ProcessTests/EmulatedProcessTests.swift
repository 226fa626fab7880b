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
        try FileManager.default.createDirectory(atPath: "\(dir)/fuse", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(dir)/mnt", withIntermediateDirectories: true)
        let fuse = try Child("/usr/bin/nbdfuse", ["\(dir)/fuse/disk", "--unix", "\(dir)/exports/ide0-master.sock"])
        defer { _ = try? sh("fusermount3 -u \(dir)/fuse") }
        try waitFor(path: "\(dir)/fuse/disk")
        let (loop, loopOut) = try attachLoopDevice("\(dir)/fuse/disk")
        #expect(loop.hasPrefix("/dev/loop"), "\(loopOut)")
        defer { _ = try? sh("losetup -d \(loop)") }
        // Every sector crosses 128 port traps: mkfs leaves inode tables and journal to lazy init.
        let (code, out) = try sh("""
            set -e
            mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 \(loop)
            mount \(loop) \(dir)/mnt
            for i in $(seq 1 1000); do head -c $((i * 37 % 9000 + 1)) /dev/urandom > \(dir)/mnt/file$i; done
            (cd \(dir)/mnt && sha256sum file* | sort) > \(dir)/sums
            sync
            umount \(dir)/mnt
            e2fsck -f -n \(loop)
            """, seconds: 900)
        #expect(code == 0, "\(out)\n\(agent.text)")
        #expect(out.contains("1011/"), "\(out)")
        _ = try sh("losetup -d \(loop)")
        _ = try sh("fusermount3 -u \(dir)/fuse")
        fuse.wait(seconds: 10)
        let (verify, verified) = try sh("""
            set -e
            mount -o ro,loop,noload \(dir)/disk.img \(dir)/mnt
            (cd \(dir)/mnt && sha256sum file* | sort) > \(dir)/sums-host
            umount \(dir)/mnt
            cmp \(dir)/sums \(dir)/sums-host && wc -l < \(dir)/sums-host
            """)
        #expect(verify == 0 && verified.contains("1000"), "\(verified)")
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
