// Faults injected under load: workers and the whole host killed, the image store full. Nothing the guest saw flushed is lost.

import Foundation
import Glibc
import HostRuntime
import Testing

/// A host with one disk image in `dir`, an agent exporting it over NBD, and the export mounted
/// with nbdfuse as a plain file (`fuseDisk`).
final class DiskRig: @unchecked Sendable {
    let dir: String
    let fixture: HostFixture
    let agent: Child
    var fuse: Child?
    /// Each mount gets a directory of its own (a lazily unmounted one may still be busy).
    var mounts = 0
    var fuseDisk: String { "\(dir)/fuse\(mounts)/disk" }

    init(dir: String, sizeMiB: Int, agentArguments: [String] = []) throws {
        self.dir = dir
        fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            echo_devices = 0
            integration_services = []
            [[partition.disk]]
            path = "\(dir)/disk.img"
            size_mib = \(sizeMiB)
            """)
        agent = try Child("viridian-agent", ["run"] + agentArguments + ["--config", try agentConfig(fixture, """
            timesync = "off"
            export_dir = "\(dir)/exports"
            """)])
    }

    /// Waits for the export and mounts it through nbdfuse.
    func mount() throws {
        guard eventually(seconds: 30, { (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports"))?.contains { $0.hasSuffix("lun0.sock") } == true })
        else { throw HarnessError.timeout("no export: \(agent.text)") }
        let lun0 = try #require(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/exports").first { $0.hasSuffix("lun0.sock") })
        // After a rejoin the agent serves the export again once the disk is back: wait for it to answer.
        guard eventually(seconds: 30, { (try? sh("nbdinfo --size 'nbd+unix:///?socket=\(dir)/exports/\(lun0)'", seconds: 10))?.0 == 0 })
        else { throw HarnessError.timeout("the export \(lun0) does not answer: \(agent.text.suffix(2000))") }
        mounts += 1
        try FileManager.default.createDirectory(atPath: "\(dir)/fuse\(mounts)", withIntermediateDirectories: true)
        let child = try Child("/usr/bin/nbdfuse", [fuseDisk, "--unix", "\(dir)/exports/\(lun0)"])
        fuse = child
        do { try waitFor(path: fuseDisk) } catch { throw HarnessError.timeout("nbdfuse: \(child.text)\nagent: \(agent.text.suffix(2000))") }
    }

    func unmount() {
        // A dd of the writer may still hang in the old mount: it goes first.
        _ = try? sh("pkill -9 -f 'of=\(fuseDisk)'; fusermount3 -u -z \(dir)/fuse\(mounts)", seconds: 30)
        fuse?.signal(SIGKILL)
        fuse?.wait(seconds: 10)
        fuse = nil
    }

    /// Writes 4 KiB blocks numbered 0, 1, 2, … round-robin over `blocks` blocks, each followed by
    /// fsync (NBD FLUSH → SYNCHRONIZE CACHE → fdatasync on the host); a block's number is logged
    /// only after its fsync returned. Runs until killed or until a write fails.
    func flushedWriter(log: String, blocks: Int = 256) throws -> Child {
        try Child("/bin/sh", ["-c", """
            i=0
            while :; do
              { printf '%08d' $i; head -c 4088 /dev/zero; } | dd of=\(fuseDisk) bs=4096 seek=$((i % \(blocks))) count=1 iflag=fullblock conv=notrunc,fsync status=none || exit 1
              echo $i >> \(log)
              i=$((i + 1))
            done
            """])
    }

    /// Blocks whose flushed write the image does not hold: for each block, the last number
    /// logged as flushed must be there, or a later write of the same block.
    func lostWrites(log: String, blocks: Int = 256) throws -> (lost: [String], flushed: Int) {
        let logged = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        var last = [Int: Int]()
        for line in logged.split(separator: "\n") { if let n = Int(line) { last[n % blocks] = n } }
        let image = try FileHandle(forReadingFrom: URL(fileURLWithPath: "\(dir)/disk.img"))
        defer { try? image.close() }
        var lost: [String] = []
        for (block, flushed) in last.sorted(by: { $0.key < $1.key }) {
            try image.seek(toOffset: UInt64(block * 4096))
            let head = String(decoding: try image.read(upToCount: 8) ?? Data(), as: UTF8.self)
            guard let found = Int(head), found >= flushed, found % blocks == block else {
                lost.append("block \(block): flushed write \(flushed), image holds '\(head)'")
                continue
            }
        }
        return (lost, logged.split(separator: "\n").count)
    }
}

@Suite("Fault injection", .serialized)
struct FaultInjectionTests {
    func scratch(_ tag: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-fi-\(tag)-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test("SIGKILL of the partition's worker, then of the whole host, under flushed writes: no flushed write is lost; a new worker serves the disk in between")
    func killUnderFlushedWrites() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for FUSE")
            return
        }
        let dir = try scratch("kill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let rig = try DiskRig(dir: dir, sizeMiB: 16, agentArguments: ["--reconnect"])
        try rig.mount()
        // 1. The worker dies; the supervisor and the agent live on.
        let worker = try #require(try rig.fixture.status().partitions[0].worker?.pid)
        let writer = try rig.flushedWriter(log: "\(dir)/flushed1")
        #expect(eventually(seconds: 60) { ((try? String(contentsOfFile: "\(dir)/flushed1", encoding: .utf8)) ?? "").split(separator: "\n").count >= 100 },
                "\(rig.agent.text)")
        kill(worker, SIGKILL)
        if writer.wait(seconds: 30) == nil { writer.signal(SIGKILL); writer.wait(seconds: 5) }
        rig.unmount()
        let first = try rig.lostWrites(log: "\(dir)/flushed1")
        #expect(first.lost.isEmpty && first.flushed >= 100, "\(first.flushed) flushed writes; lost: \(first.lost.prefix(5))")
        // The agent rejoins: a new worker serves the same image, and the flushed blocks read back.
        #expect(try eventually(seconds: 30) {
            let p = try rig.fixture.status().partitions[0]
            return p.state == "attached" && p.worker?.starts == 2
        }, "\(rig.fixture.host.text.suffix(2000))")
        try rig.mount()
        let (readBack, readOut) = try sh("dd if=\(rig.fuseDisk) bs=4096 count=1 status=none | head -c 8")
        #expect(readBack == 0 && Int(readOut) != nil && Int(readOut)! % 256 == 0, "\(readOut)")
        // 2. The whole host dies at once: supervisor and worker, no chance to flush anything.
        let second = try rig.flushedWriter(log: "\(dir)/flushed2")
        #expect(eventually(seconds: 60) { ((try? String(contentsOfFile: "\(dir)/flushed2", encoding: .utf8)) ?? "").split(separator: "\n").count >= 100 })
        let newWorker = try #require(try rig.fixture.status().partitions[0].worker?.pid)
        kill(newWorker, SIGKILL)
        rig.fixture.host.signal(SIGKILL)
        if second.wait(seconds: 30) == nil { second.signal(SIGKILL); second.wait(seconds: 5) }
        rig.unmount()
        let after = try rig.lostWrites(log: "\(dir)/flushed2")
        #expect(after.lost.isEmpty && after.flushed >= 100, "\(after.flushed) flushed writes; lost: \(after.lost.prefix(5))")
        print("fault injection: worker SIGKILL after \(first.flushed) flushed writes, host SIGKILL after \(after.flushed): 0 lost")
    }

    @Test("The image's file system fills up: the guest's write fails with ENOSPC (SCSI DATA PROTECT / SPACE ALLOCATION FAILED), earlier data is intact, the host serves on")
    func imageStoreFull() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for tmpfs and FUSE")
            return
        }
        let dir = try scratch("full")
        defer {
            _ = try? sh("umount -l \(dir)")
            try? FileManager.default.removeItem(atPath: dir)
        }
        // An 8 MiB file system holding a sparse 64 MiB image.
        #expect(try sh("mount -t tmpfs -o size=8m viridian-full \(dir)").0 == 0)
        let rig = try DiskRig(dir: dir, sizeMiB: 64)
        try rig.mount()
        defer { rig.unmount() }
        let (early, earlyOut) = try sh("head -c 1048576 /dev/urandom > \(dir)/../viridian-full-early-\(getpid()) && dd if=\(dir)/../viridian-full-early-\(getpid()) of=\(rig.fuseDisk) bs=1M count=1 conv=notrunc,fsync status=none")
        #expect(early == 0, "\(earlyOut)")
        let (fill, fillOut) = try sh("dd if=/dev/zero of=\(rig.fuseDisk) bs=1M seek=1 count=32 conv=notrunc,fsync oflag=direct status=none", seconds: 120)
        #expect(fill != 0 && fillOut.contains("No space left on device"), "the write past the full store: \(fillOut)")
        let (same, sameOut) = try sh("dd if=\(rig.fuseDisk) bs=1M count=1 status=none iflag=direct | cmp - \(dir)/../viridian-full-early-\(getpid()); rc=$?; rm -f \(dir)/../viridian-full-early-\(getpid()); exit $rc")
        #expect(same == 0, "the first MiB changed: \(sameOut)")
        let status = try rig.fixture.status().partitions[0]
        #expect(status.state == "attached" && status.worker?.state == "serving", "\(status.state)")
    }
}

@Suite("Fault injection: the host TAP", .serialized)
struct TapLossTests {
    @Test("The host TAP is deleted under the worker: the guest sees the link down; when a TAP of that name is made again the supervisor hands it back, the link returns and traffic flows")
    func tapVanishes() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = NetworkRig(tag: "tv", subnet: 61)
        defer { rig.tearDown() }
        try rig.start()
        #expect(rig.ping(from: rig.guestNS, rig.hostAddress).0 == 0, "\(rig.logs)")
        try rig.check(ipCommand(["-n", rig.hostNS, "link", "del", rig.hostTap]), "deleting \(rig.hostTap)")
        // The next frame either way meets the dead descriptor.
        _ = rig.ping(from: rig.guestNS, rig.hostAddress, count: 1)
        #expect(eventually(seconds: 10) { rig.flags(rig.guestNS, rig.guestTap).contains("NO-CARRIER") },
                "the guest still sees carrier: \(rig.linkShow(rig.guestNS, rig.guestTap))\n\(rig.logs)")
        #expect(try rig.nicStatus().link == false)
        #expect(try rig.fixture?.status().partitions[0].worker?.state == "serving", "the worker lives on")
        // Made again (the host's TAPs of several queues are multi-queue), it is taken back.
        try rig.check(ipCommand(["-n", rig.hostNS, "tuntap", "add", "dev", rig.hostTap, "mode", "tap", "multi_queue", "vnet_hdr"]), "recreating \(rig.hostTap)")
        #expect(eventually(seconds: 15) { !rig.flags(rig.guestNS, rig.guestTap).contains("NO-CARRIER") },
                "the link did not come back: \(rig.linkShow(rig.guestNS, rig.guestTap))\n\(rig.logs)")
        try rig.check(ipCommand(["-n", rig.hostNS, "addr", "add", "\(rig.hostAddress)/24", "dev", rig.hostTap]), "address on the new TAP")
        #expect(eventually(seconds: 15) { rig.ping(from: rig.guestNS, rig.hostAddress, count: 1).0 == 0 }, "no traffic after the TAP returned\n\(rig.logs)")
        #expect(try rig.nicStatus().link)
    }
}
