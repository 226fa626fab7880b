// Synthetic storage between processes: image file on the host, NBD export in the guest, real block tools on top.

import Foundation
import Glibc
import HostRuntime
import Testing

/// Runs a shell command; returns its status and output.
@discardableResult
func sh(_ command: String, seconds: Double = 300) throws -> (Int32, String) {
    try run("/bin/sh", ["-c", command + " 2>&1"], seconds: seconds)
}

/// Formats an NBD export through nbdfuse and a loop device (mkfs.ext4 with `mkfsOptions`), writes
/// 1000 files of known content, unmounts, runs `e2fsck -f -n`, then mounts the host's `image` read-only
/// and expects the same 1000 files. Returns e2fsck's output for the caller's own checks.
func filesystemRoundTrip(export: String, image: String, dir: String, mkfsOptions: String = "", seconds: Double = 300,
                         context: @autoclosure () -> String = "") throws -> String {
    try FileManager.default.createDirectory(atPath: "\(dir)/fuse", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: "\(dir)/mnt", withIntermediateDirectories: true)
    let fuse = try Child("/usr/bin/nbdfuse", ["\(dir)/fuse/disk", "--unix", export])
    defer { _ = try? sh("fusermount3 -u \(dir)/fuse") }
    try waitFor(path: "\(dir)/fuse/disk")
    let (loop, loopOut) = try attachLoopDevice("\(dir)/fuse/disk")
    #expect(loop.hasPrefix("/dev/loop"), "\(loopOut)")
    defer { _ = try? sh("losetup -d \(loop)") }
    let (code, out) = try sh("""
        set -e
        mkfs.ext4 -q -F \(mkfsOptions) \(loop)
        mount \(loop) \(dir)/mnt
        for i in $(seq 1 1000); do head -c $((i * 37 % 9000 + 1)) /dev/urandom > \(dir)/mnt/file$i; done
        (cd \(dir)/mnt && sha256sum file* | sort) > \(dir)/sums
        sync
        umount \(dir)/mnt
        e2fsck -f -n \(loop)
        """, seconds: seconds)
    #expect(code == 0, "\(out)\n\(context())")
    _ = try sh("losetup -d \(loop)")
    _ = try sh("fusermount3 -u \(dir)/fuse")
    fuse.wait(seconds: 10)

    // The host image holds the same files.
    let (verify, verified) = try sh("""
        set -e
        mount -o ro,loop,noload \(image) \(dir)/mnt
        (cd \(dir)/mnt && sha256sum file* | sort) > \(dir)/sums-host
        umount \(dir)/mnt
        cmp \(dir)/sums \(dir)/sums-host && wc -l < \(dir)/sums-host
        """)
    #expect(verify == 0 && verified.contains("1000"), "\(verified)")
    return out
}

/// Attaches `file` to a free loop device and returns the device path ("" on failure, with the output).
func attachLoopDevice(_ file: String) throws -> (String, String) {
    let (_, out) = try sh("losetup -f --show \(file)")
    return (out.trimmingCharacters(in: .whitespacesAndNewlines), out)
}

@Suite("Synthetic storage between processes", .serialized)
struct StorageProcessTests {
    /// Host with a 256 MiB read-write LUN 0 and a 16 MiB read-only LUN 1; agent exporting both.
    func start() throws -> (HostFixture, Child, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-st-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data(repeating: 0xAB, count: 16 << 20).write(to: URL(fileURLWithPath: "\(dir)/ro.img"))
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            [[partition.disk]]
            path = "\(dir)/disk.img"
            size_mib = 256
            [[partition.disk]]
            path = "\(dir)/ro.img"
            read_only = true
            """)
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "off"
            export_dir = "\(dir)/exports"
            """)])
        return (fixture, agent, dir)
    }

    @Test("mkfs.ext4, 1000 files, e2fsck clean, the same files in the host image; a read-only LUN refuses writes")
    func filesystem() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for losetup, mount and FUSE")
            return
        }
        let (fixture, agent, dir) = try start()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let export = "\(dir)/exports"
        #expect(eventually(seconds: 30) {
            FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json")
        }, "\(agent.text)")
        let (listed, list) = try run("viridian-agent", ["disk", "list", "--state-dir", "\(fixture.directory.path)/state"])
        #expect(listed == 0 && list.contains("256 MiB") && list.contains("ro "), "\(list)")
        let lun0 = try #require(try FileManager.default.contentsOfDirectory(atPath: export).first { $0.hasSuffix("lun0.sock") })
        let lun1 = try #require(try FileManager.default.contentsOfDirectory(atPath: export).first { $0.hasSuffix("lun1.sock") })
        let out = try filesystemRoundTrip(export: "\(export)/\(lun0)", image: "\(dir)/disk.img", dir: dir)
        #expect(out.contains("1011/65536 files") || out.contains("/65536 files"), "\(out)")

        // The read-only LUN: writes fail (the NBD client sees EPERM), reads return the image.
        let (readCode, head) = try sh("nbdcopy 'nbd+unix:///?socket=\(export)/\(lun1)' - | head -c 4 | od -An -tx1")
        #expect(readCode == 0 && head.contains("ab ab ab ab"), "\(head)")
        let (writeCode, writeOut) = try sh("head -c 4096 /dev/zero > \(dir)/zeros && nbdcopy \(dir)/zeros 'nbd+unix:///?socket=\(export)/\(lun1)'")
        #expect(writeCode != 0, "\(writeOut)")
        let untouched = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/ro.img"))
        #expect(untouched.prefix(4096).allSatisfy { $0 == 0xAB })
        _ = agent
    }

    @Test("fio verify (randwrite 4k, crc32c) through the NBD export")
    func fioVerify() throws {
        let (fixture, agent, dir) = try start()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json") }, "\(agent.text)")
        let lun0 = try #require(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports").first { $0.hasSuffix("lun0.sock") })
        let (code, out) = try sh("""
            fio --name=verify --ioengine=nbd --uri='nbd+unix:///?socket=\(dir)/exports/\(lun0)' --rw=randwrite --bs=4k \
                --size=16M --verify=crc32c --do_verify=1 --verify_state_save=0 --iodepth=4 --output-format=terse --terse-version=3
            """)
        #expect(code == 0, "\(out)")
        #expect(!out.contains("verify:") && !out.lowercased().contains("bad magic"), "\(out)")
    }
}

@Suite("Storage durability", .serialized)
struct StorageDurabilityTests {
    @Test("SIGKILL of the agent under write load: everything synced before is in the image; e2fsck clean after journal replay")
    func killUnderLoad() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for losetup, mount and FUSE")
            return
        }
        let (fixture, agent, dir) = try StorageProcessTests().start()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json") }, "\(agent.text)")
        let lun0 = try #require(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports").first { $0.hasSuffix("lun0.sock") })
        try FileManager.default.createDirectory(atPath: "\(dir)/fuse", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(dir)/mnt", withIntermediateDirectories: true)
        let fuse = try Child("/usr/bin/nbdfuse", ["\(dir)/fuse/disk", "--unix", "\(dir)/exports/\(lun0)"])
        try waitFor(path: "\(dir)/fuse/disk")
        let (loop, _) = try attachLoopDevice("\(dir)/fuse/disk")
        #expect(try sh("mkfs.ext4 -q -F \(loop) && mount \(loop) \(dir)/mnt").0 == 0)
        // Batches of files; after each batch `sync` returns, the batch number is recorded outside the disk.
        let writer = try Child("/bin/sh", ["-c", """
            i=0
            while true; do
              i=$((i + 1)); mkdir -p \(dir)/mnt/b$i
              for f in 1 2 3 4 5 6 7 8; do head -c 20000 /dev/urandom > \(dir)/mnt/b$i/f$f; done
              (cd \(dir)/mnt/b$i && sha256sum f* > ../sums$i.tmp) && mv \(dir)/mnt/sums$i.tmp \(dir)/mnt/sums$i
              sync -f \(dir)/mnt && cp \(dir)/mnt/sums$i \(dir)/synced$i
            done
            """])
        #expect(eventually(seconds: 60) { FileManager.default.fileExists(atPath: "\(dir)/synced5") })
        agent.signal(SIGKILL)
        agent.wait(seconds: 10)
        writer.signal(SIGKILL)
        writer.wait(seconds: 10)
        _ = try sh("umount -l \(dir)/mnt; losetup -d \(loop); fusermount3 -u -z \(dir)/fuse", seconds: 30)
        fuse.signal(SIGKILL)
        fuse.wait(seconds: 10)
        // The host image: journal replay, then a clean check; every synced batch intact.
        let (fsck, fsckOut) = try sh("e2fsck -f -y \(dir)/disk.img; e2fsck -f -n \(dir)/disk.img")
        #expect(fsck == 0, "\(fsckOut)")
        let synced = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("synced") }.count
        #expect(synced >= 5)
        let (verify, verifyOut) = try sh("""
            set -e
            mount -o ro,loop \(dir)/disk.img \(dir)/mnt
            for s in \(dir)/synced*; do n=${s##*synced}; (cd \(dir)/mnt/b$n && sha256sum -c --quiet $s); done
            umount \(dir)/mnt
            """)
        #expect(verify == 0, "\(verifyOut)")
    }
}

@Suite("Storage hot plug", .serialized)
struct StorageHotPlugTests {
    @Test("viridian-host disk add/remove: the running agent adds and removes its export without a restart")
    func hotPlug() throws {
        let (fixture, agent, dir) = try StorageProcessTests().start()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = "\(fixture.directory.path)/state"
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(state)/disks.json") }, "\(agent.text)")
        func exports() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports")) ?? []).sorted() }
        #expect(exports().count == 2)
        let control = ["--runtime-dir", fixture.directory.path]
        let (added, addOut) = try run("viridian-host", ["disk", "add", "guest1", "\(dir)/hot.img", "--size-mib", "8"] + control)
        #expect(added == 0 && addOut.contains("is LUN 2"), "\(addOut)")
        #expect(eventually(seconds: 10) { exports().contains { $0.hasSuffix("lun2.sock") } }, "\(exports())")
        let hot = try #require(exports().first { $0.hasSuffix("lun2.sock") })
        let (info, infoOut) = try sh("nbdinfo --size 'nbd+unix:///?socket=\(dir)/exports/\(hot)'")
        #expect(info == 0 && infoOut.contains("8388608"), "\(infoOut)")
        let (removed, removeOut) = try run("viridian-host", ["disk", "remove", "guest1", "1"] + control)
        #expect(removed == 0, "\(removeOut)")
        #expect(eventually(seconds: 10) { !exports().contains { $0.hasSuffix("lun1.sock") } }, "\(exports())")
        let (listed, list) = try run("viridian-agent", ["disk", "list", "--state-dir", state])
        #expect(listed == 0 && list.contains("8 MiB") && !list.contains("16 MiB"), "\(list)")
        let (missing, missingOut) = try run("viridian-host", ["disk", "remove", "guest1", "9"] + control)
        #expect(missing != 0 && missingOut.contains("no LUN 9"), "\(missingOut)")
        // Sizes a client can put on the control socket: negative, past off_t, zero (they used to trap
        // in UInt64(_:) and ftruncate's off_t(_:), or make an image without a block). Each is refused.
        for size in [-1, 1 << 43, 0, Int.min] {
            let reply = try ViridianHostService.send(ControlRequest(op: "disk", partition: "guest1", action: "add",
                                                                    path: "\(dir)/bad\(size).img", sizeMiB: size),
                                                     controlPath: "\(fixture.directory.path)/host.sock")
            let text = String(decoding: reply, as: UTF8.self)
            #expect(text.contains("size_mib must be"), "size \(size): \(text)")
        }
        #expect(try fixture.status().partitions[0].state == "attached", "the host serves on: \(fixture.host.text)")
        _ = agent
    }
}

@Suite("Storage sub-channels between processes", .serialized)
struct StorageSubChannelProcessTests {
    @Test("4 VPs, one sub-channel per VP when asked: four SCSI channels open, on distinct VPs, and fio verify passes")
    func subChannels() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-sc-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            vps = 4
            [[partition.disk]]
            path = "\(dir)/disk.img"
            size_mib = 64
            """)
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "off"
            export_dir = "\(dir)/exports"
            storage_vcpus_per_sub_channel = 1
            """)])
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json") }, "\(agent.text)")
        let scsi = try fixture.status().partitions[0].channels.filter { $0.device == "Synthetic SCSI Controller" && $0.state == "open" }
        #expect(scsi.count == 4 && Set(scsi.map(\.targetVP)) == [0, 1, 2, 3], "\(scsi.map { ($0.relid, $0.targetVP) })")
        let lun0 = try #require(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports").first { $0.hasSuffix("lun0.sock") })
        let (code, out) = try sh("""
            fio --name=verify --ioengine=nbd --uri='nbd+unix:///?socket=\(dir)/exports/\(lun0)' --rw=randwrite --bs=4k \
                --size=8M --verify=crc32c --do_verify=1 --verify_state_save=0 --iodepth=16 --output-format=terse --terse-version=3
            """)
        #expect(code == 0, "\(out)")
        let after = try fixture.status().partitions[0].channels.filter { $0.device == "Synthetic SCSI Controller" }
        #expect(after.filter { $0.packetsIn > 0 }.count >= 3, "I/O spread over channels: \(after.map(\.packetsIn))")
    }
}

@Suite("Storage controllers", .serialized)
struct StorageControllerTests {
    @Test("Disks on two controllers: two SCSI channels, LUNs numbered per controller, all exported")
    func twoControllers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-ctl-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            [[partition.disk]]
            path = "\(dir)/a.img"
            size_mib = 8
            [[partition.disk]]
            path = "\(dir)/b.img"
            size_mib = 16
            controller = 1
            [[partition.disk]]
            path = "\(dir)/c.img"
            size_mib = 24
            controller = 1
            """)
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, "timesync = \"off\"\nexport_dir = \"\(dir)/exports\"")])
        let state = "\(fixture.directory.path)/state/disks.json"
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: state) }, "\(agent.text)")
        let exports = try JSONDecoder().decode([DiskExportRecord].self, from: Data(contentsOf: URL(fileURLWithPath: state)))
        #expect(Set(exports.map(\.controller)).count == 2)
        #expect(exports.map { "\($0.lun):\($0.sizeBytes >> 20)" }.sorted() == ["0:16", "0:8", "1:24"])
        let scsi = try fixture.status().partitions[0].channels.filter { $0.device == "Synthetic SCSI Controller" }
        #expect(scsi.count == 2 && scsi.allSatisfy { $0.state == "open" })
    }
}

/// The fields of `disks.json` the test reads.
struct DiskExportRecord: Decodable {
    var controller: UInt32
    var lun: UInt8
    var sizeBytes: UInt64
}
