// Synthetic storage in memory: storvsc against storvsp over real rings, with real image files behind.

import Foundation
import GuestMemory
import Hypervisor
import Logging
import Loopback
import SyntheticStorage
import Testing
import VMBusClient
import VMBusRing
import VMBusWire

let quiet: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}()

/// A temporary image file.
final class TempImage {
    let path: String
    init(size: UInt64, fill: UInt8? = nil) throws {
        path = NSTemporaryDirectory() + "viridian-img-\(UUID().uuidString.prefix(8)).img"
        _ = try FileBackend(path: path, createSize: size)
        if let fill {
            try Data(repeating: fill, count: Int(size)).write(to: URL(fileURLWithPath: path))
        }
    }
    deinit { unlink(path) }
    var contents: Data { (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data() }
}

/// A machine with one storvsp (LUN 0 read-write, LUN 1 read-only) and a ready storvsc.
func storageMachine(_ rw: TempImage, _ ro: TempImage) throws -> (LoopbackMachine, StorageVSP, StorageClient) {
    let machine = try LoopbackMachine(memoryBytes: 16 << 20, logger: quiet)
    let vsp = StorageVSP(instanceID: GUID(low: 9, high: 9), luns: [
        0: SCSIDisk(backend: try FileBackend(path: rw.path), serial: "VIRIDIAN0"),
        1: SCSIDisk(backend: try FileBackend(path: ro.path, readOnly: true), serial: "VIRIDIAN1"),
    ], logger: quiet)
    machine.server.offer(vsp)
    try machine.connect()
    let channel = try #require(machine.client.channels.values.first)
    try machine.client.open(channel, sendPages: 32, receivePages: 32)
    try machine.run(until: { channel.state == .open }, "open")
    let client = StorageClient(channel: channel, logger: quiet)
    try machine.run(until: { client.state != .initializing }, "init")
    return (machine, vsp, client)
}

/// Runs one command synchronously through the loopback.
func command(_ machine: LoopbackMachine, _ client: StorageClient, lun: UInt8 = 0, _ cdb: [UInt8], _ direction: SCSIDataDirection,
             _ buffer: GuestBuffer?, _ length: Int) throws -> SCSICompletion {
    var result: SCSICompletion?
    #expect(client.execute(lun: lun, cdb: cdb, direction: direction, buffer: buffer, length: length) { result = $0 })
    try machine.run(until: { result != nil }, "completion")
    return result!
}

func rw10(_ op: UInt8, lba: UInt32, blocks: UInt16, fua: Bool = false) -> [UInt8] {
    [op, fua ? 0x08 : 0, UInt8(lba >> 24), UInt8(truncatingIfNeeded: lba >> 16), UInt8(truncatingIfNeeded: lba >> 8), UInt8(truncatingIfNeeded: lba),
     0, UInt8(blocks >> 8), UInt8(truncatingIfNeeded: blocks), 0]
}

@Suite("Synthetic storage in memory")
struct StorageLoopbackTests {
    @Test("Initialization negotiates Win10 vstor; INQUIRY, READ CAPACITY, REPORT LUNS answer like a disk")
    func identify() throws {
        let rw = try TempImage(size: 8 << 20), ro = try TempImage(size: 1 << 20, fill: 0xAB)
        let (machine, vsp, client) = try storageMachine(rw, ro)
        #expect(client.state == .ready && client.protocolVersion == 0x0602 && client.maximumTransferBytes == 0x40000)
        let buffer = try GuestBuffer(client: machine.client, bytes: 4096)
        var c = try command(machine, client, [0x12, 0, 0, 0, 96, 0], .read, buffer, 96)
        #expect(c.isGood && c.transferred == 36)
        #expect(Array(buffer.bytes[8..<16]) == Array("Msft    ".utf8) && buffer.bytes[0] == 0 && buffer.bytes[2] == 6)
        c = try command(machine, client, [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], .read, buffer, 32)
        #expect(c.isGood && Array(buffer.bytes[0..<8]) == [0, 0, 0, 0, 0, 0, 0x3F, 0xFF] && Array(buffer.bytes[8..<12]) == [0, 0, 2, 0])
        c = try command(machine, client, [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], .read, buffer, 256)
        #expect(c.isGood && Array(buffer.bytes[0..<4]) == [0, 0, 0, 16] && buffer.bytes[17] == 1)
        c = try command(machine, client, [0x12, 1, 0x80, 0, 64, 0], .read, buffer, 64)
        #expect(c.isGood && String(decoding: buffer.bytes[4..<13], as: UTF8.self) == "VIRIDIAN0")
        // An absent LUN: INQUIRY says peripheral 0x7F; anything else is INVALID_LUN.
        c = try command(machine, client, lun: 5, [0x12, 0, 0, 0, 36, 0], .read, buffer, 36)
        #expect(c.isGood && buffer.bytes[0] == 0x7F)
        c = try command(machine, client, lun: 5, [0x00, 0, 0, 0, 0, 0], .none, nil, 0)
        #expect(c.srbStatus == SRBStatus.invalidLUN)
        #expect(vsp.protocolErrors == 0)
    }

    @Test("Linux's scan of other paths and targets (INQUIRY says PQ 3, then REPORT LUNS) gets an empty LUN list, never INVALID_LUN (storvsc would remove disk 0:0:0:0 for it)")
    func otherPathScan() throws {
        let rw = try TempImage(size: 8 << 20), ro = try TempImage(size: 1 << 20, fill: 0xAB)
        let (machine, vsp, client) = try storageMachine(rw, ro)
        let buffer = try GuestBuffer(client: machine.client, bytes: 4096)
        for (path, target) in [(UInt8(1), UInt8(0)), (0, 1), (7, 1)] {
            var result: SCSICompletion?
            #expect(client.execute(path: path, target: target, lun: 0, cdb: [0x12, 0, 0, 0, 36, 0], direction: .read, buffer: buffer, length: 36) { result = $0 })
            try machine.run(until: { result != nil }, "inquiry")
            #expect(result?.isGood == true && buffer.bytes[0] == 0x7F, "path \(path) target \(target): \(String(describing: result))")
            result = nil
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0xEE)
            #expect(client.execute(path: path, target: target, lun: 0, cdb: [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], direction: .read, buffer: buffer, length: 256) { result = $0 })
            try machine.run(until: { result != nil }, "report luns")
            #expect(result?.isGood == true && result?.transferred == 8 && Array(buffer.bytes[0..<8]) == [0, 0, 0, 0, 0, 0, 0, 0],
                    "path \(path) target \(target): \(String(describing: result)) \(Array(buffer.bytes[0..<8]))")
        }
        // The disks stay where they are.
        let c = try command(machine, client, [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], .read, buffer, 256)
        #expect(c.isGood && Array(buffer.bytes[0..<4]) == [0, 0, 0, 16])
        #expect(vsp.protocolErrors == 0)
    }

    @Test("WRITE and READ through GPA-direct pages land in the image file; FLUSH; bounds and opcodes checked")
    func readWrite() throws {
        let rw = try TempImage(size: 8 << 20), ro = try TempImage(size: 1 << 20, fill: 0xAB)
        let (machine, _, client) = try storageMachine(rw, ro)
        let buffer = try GuestBuffer(client: machine.client, bytes: 256 << 10)
        for i in 0..<(256 << 10) { buffer.bytes[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 3) }
        let expected = Data(buffer.bytes[0..<(256 << 10)])
        var c = try command(machine, client, rw10(0x2A, lba: 100, blocks: 512, fua: true), .write, buffer, 256 << 10)
        #expect(c.isGood && c.transferred == 256 << 10)
        #expect(rw.contents.subdata(in: (100 * 512)..<(100 * 512 + (256 << 10))) == expected)
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        c = try command(machine, client, rw10(0x28, lba: 100, blocks: 512), .read, buffer, 256 << 10)
        #expect(c.isGood && Data(buffer.bytes[0..<(256 << 10)]) == expected)
        c = try command(machine, client, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], .none, nil, 0)
        #expect(c.isGood)
        // Past the end: ILLEGAL REQUEST / LBA OUT OF RANGE with autosense.
        c = try command(machine, client, rw10(0x28, lba: 16383, blocks: 2), .read, buffer, 1024)
        #expect(c.scsiStatus == 2 && c.senseKey == 5 && c.sense[12] == 0x21)
        // Unknown opcode.
        c = try command(machine, client, [0xEE, 0, 0, 0, 0, 0], .none, nil, 0)
        #expect(c.senseKey == 5 && c.sense[12] == 0x20)
        // UNMAP punches a hole that reads back as zeros.
        var list = [UInt8](repeating: 0, count: 24)
        list[1] = 22; list[3] = 16
        list[15] = 100; list[19] = 8
        buffer.bytes.copyBytes(from: list)
        c = try command(machine, client, [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], .write, buffer, 24)
        #expect(c.isGood)
        #expect(rw.contents.subdata(in: (100 * 512)..<(108 * 512)) == Data(count: 4096))
    }

    @Test("A read-only LUN refuses writes with DATA PROTECT and reports write-protect in MODE SENSE")
    func readOnly() throws {
        let rw = try TempImage(size: 1 << 20), ro = try TempImage(size: 1 << 20, fill: 0xAB)
        let (machine, _, client) = try storageMachine(rw, ro)
        let buffer = try GuestBuffer(client: machine.client, bytes: 4096)
        var c = try command(machine, client, lun: 1, rw10(0x2A, lba: 0, blocks: 8), .write, buffer, 4096)
        #expect(c.scsiStatus == 2 && c.senseKey == 7 && c.sense[12] == 0x27)
        #expect(ro.contents.allSatisfy { $0 == 0xAB })
        c = try command(machine, client, lun: 1, [0x1A, 0, 0x3F, 0, 64, 0], .read, buffer, 64)
        #expect(c.isGood && buffer.bytes[2] & 0x80 != 0)
        c = try command(machine, client, lun: 0, [0x1A, 0, 0x08, 0, 64, 0], .read, buffer, 64)
        #expect(c.isGood && buffer.bytes[2] & 0x80 == 0 && buffer.bytes[4] == 0x08 && buffer.bytes[6] & 0x04 != 0)
    }

    @Test("Hostile guests: GPA-direct pages outside memory, random vstor packets and CDBs never crash the host")
    func hostile() throws {
        let rw = try TempImage(size: 1 << 20), ro = try TempImage(size: 1 << 20)
        let (machine, vsp, client) = try storageMachine(rw, ro)
        let endpoint = try #require(client.channel.endpoint)
        let refusedBefore = vsp.refusedPages
        // A READ of range.byteCount bytes into the one GPA-direct range given.
        func read(into range: GpaRange, transactionID: UInt64) throws {
            var srb = SCSIRequest()
            srb.cdbLength = 10
            srb.cdbOrSense = rw10(0x28, lba: 0, blocks: 8) + [UInt8](repeating: 0, count: 10)
            srb.dataIn = 1
            srb.dataTransferLength = range.byteCount
            _ = try endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: 1, transactionID: transactionID,
                                             extension: GpaDirectHeader.extensionBytes(for: [range]),
                                             payload: VStorPacket(operation: .executeSRB, body: srb.encoded).encode())
            endpoint.commitWrites()
            machine.pump()
        }
        try read(into: GpaRange(byteCount: 4096, byteOffset: 0, pfns: [UInt64(machine.memory.pageCount) + 5]), transactionID: 999_999)
        #expect(vsp.refusedPages == refusedBefore + 1)
        // A PFN at the top of the address space followed by another: the run test added 1 to it
        // before the page bound was checked (it used to trap).
        try read(into: GpaRange(byteCount: 8192, byteOffset: 0, pfns: [UInt64.max, 0]), transactionID: 999_998)
        #expect(vsp.refusedPages == refusedBefore + 2)
        // Random packets and random CDBs.
        var rng: UInt64 = 77
        let buffer = try GuestBuffer(client: machine.client, bytes: 8192)
        for i in 0..<5000 {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            if i % 2 == 0 {
                let bytes = (0..<Int(rng % 80)).map { j in UInt8(truncatingIfNeeded: rng >> UInt64(j % 50)) }
                _ = try endpoint.writer.tryWrite(type: .dataInBand, flags: 1, transactionID: 1_000_000 + UInt64(i), payload: bytes)
                endpoint.commitWrites()
                machine.pump()
            } else {
                let cdb = (0..<Int(6 + rng % 11)).map { j in UInt8(truncatingIfNeeded: rng >> UInt64(j * 3 % 60)) }
                var done = false
                _ = client.execute(lun: UInt8(rng % 3), cdb: cdb, direction: SCSIDataDirection(rawValue: UInt8(rng % 3))!,
                                   buffer: buffer, length: Int(rng % 8192)) { _ in done = true }
                try machine.run(until: { done }, "random CDB")
            }
        }
        // Still a working disk.
        let c = try command(machine, client, [0x00, 0, 0, 0, 0, 0], .none, nil, 0)
        #expect(c.isGood)
    }
}

/// Holds device work until the test runs it, in any order.
final class DeferredExecutor: DeviceExecutor {
    var jobs: [(work: @Sendable () -> Void, then: () -> Void)] = []
    func run(_ work: @escaping @Sendable () -> Void, then completion: @escaping () -> Void) { jobs.append((work, completion)) }
}

@Suite("Synthetic storage: queue depth")
struct StorageQueueDepthTests {
    @Test("100 writes in flight on one channel, completed out of order, each landing in its own block")
    func deepQueue() throws {
        let rw = try TempImage(size: 8 << 20), ro = try TempImage(size: 1 << 20)
        let (machine, vsp, client) = try storageMachine(rw, ro)
        let executor = DeferredExecutor()
        vsp.executor = executor
        var buffers: [GuestBuffer] = []
        var results: [Int: SCSICompletion] = [:]
        for i in 0..<100 {
            let buffer = try GuestBuffer(client: machine.client, bytes: 512)
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(i))
            buffers.append(buffer)
            #expect(client.execute(lun: 0, cdb: rw10(0x2A, lba: UInt32(i), blocks: 1), direction: .write, buffer: buffer, length: 512) {
                results[i] = $0
            })
            if i % 10 == 9 { machine.pump() }
        }
        machine.pump()
        #expect(vsp.inFlight == 100 && executor.jobs.count == 100 && results.isEmpty)
        for job in executor.jobs.reversed() {
            job.work()
            job.then()
        }
        machine.pump()
        #expect(results.count == 100 && vsp.inFlight == 0 && results.values.allSatisfy(\.isGood))
        let image = rw.contents
        for i in 0..<100 { #expect(image[(i * 512)..<(i * 512 + 512)].allSatisfy { $0 == UInt8(i) }, "block \(i)") }
        // Those blocks are now in the page cache: a READ is answered without a worker.
        executor.jobs.removeAll()
        var read: SCSICompletion?
        #expect(client.execute(lun: 0, cdb: rw10(0x28, lba: 7, blocks: 1), direction: .read, buffer: buffers[0], length: 512) { read = $0 })
        machine.pump()
        #expect(read?.isGood == true && executor.jobs.isEmpty && vsp.cachedReads >= 1)
        #expect(buffers[0].bytes[0..<512].allSatisfy { $0 == 7 })
    }
}

@Suite("Synthetic storage: sub-channels")
struct StorageSubChannelTests {
    @Test("CREATE_SUB_CHANNELS: the host offers them, I/O spreads over all channels and their VPs")
    func subChannels() throws {
        let rw = try TempImage(size: 4 << 20)
        let machine = try LoopbackMachine(memoryBytes: 32 << 20, vpCount: 4, logger: quiet)
        let vsp = StorageVSP(instanceID: GUID(low: 4, high: 4), luns: [0: SCSIDisk(backend: try FileBackend(path: rw.path), serial: "S")], logger: quiet)
        machine.server.offer(vsp)
        try machine.connect()
        let primary = try #require(machine.client.channels.values.first)
        try machine.client.open(primary, sendPages: 8, receivePages: 8)
        try machine.run(until: { primary.state == .open }, "open")
        let client = StorageClient(channel: primary, subChannels: 3, logger: quiet)
        try machine.run(until: { client.state != .initializing }, "init")
        #expect(client.state == .ready && client.grantedSubChannels == 3)
        let subs = machine.client.channels.values.filter { $0.offer.subChannelIndex > 0 }.sorted { $0.offer.subChannelIndex < $1.offer.subChannelIndex }
        #expect(subs.map(\.offer.subChannelIndex) == [1, 2, 3])
        #expect(subs.allSatisfy { $0.offer.interfaceInstance == primary.offer.interfaceInstance && $0.offer.interfaceType == DeviceClass.scsi.guid })
        for sub in subs { try machine.client.open(sub, sendPages: 8, receivePages: 8, targetVP: UInt32(sub.offer.subChannelIndex)) }
        try machine.run(until: { subs.allSatisfy { $0.state == .open } }, "open subs")
        for sub in subs { client.addSubChannel(sub) }
        let before = machine.partition.synics.map(\.eventsSignalled)
        var done = 0
        let buffer = try GuestBuffer(client: machine.client, bytes: 4096)
        for i in 0..<40 {
            #expect(client.execute(lun: 0, cdb: rw10(0x28, lba: UInt32(i), blocks: 8), direction: .read, buffer: buffer, length: 4096) { c in
                if c.isGood { done += 1 }
            })
            machine.pump()
        }
        #expect(done == 40)
        let after = machine.partition.synics.map(\.eventsSignalled)
        #expect((0..<4).allSatisfy { after[$0] > before[$0] }, "every VP got completions: \(before) → \(after)")
        #expect(machine.server.channels.values.filter { $0.device === vsp && $0.state == .open }.count == 4)
        // Sub-channels carry I/O only.
        let subEndpoint = try #require(subs[0].endpoint)
        _ = try subEndpoint.writer.tryWrite(type: .dataInBand, flags: 1, transactionID: 77,
                                            payload: VStorPacket(operation: .beginInitialization).encode())
        subEndpoint.commitWrites()
        machine.pump()
        #expect(vsp.protocolErrors == 0)
    }

    @Test("A sub-channel the guest closes is rescinded after its ring's GPADL is torn down; the primary reopened asks again and gets new ones (Linux's hv_netvsc does this on every MTU change)")
    func closedSubChannelsAreRescinded() throws {
        let rw = try TempImage(size: 4 << 20)
        let machine = try LoopbackMachine(memoryBytes: 32 << 20, vpCount: 2, logger: quiet)
        let vsp = StorageVSP(instanceID: GUID(low: 5, high: 5), luns: [0: SCSIDisk(backend: try FileBackend(path: rw.path), serial: "S")], logger: quiet)
        machine.server.offer(vsp)
        try machine.connect()
        let primary = try #require(machine.client.channels.values.first)
        func start(subChannels: Int) throws -> [ClientChannel] {
            try machine.client.open(primary, sendPages: 8, receivePages: 8)
            try machine.run(until: { primary.state == .open }, "open")
            let client = StorageClient(channel: primary, subChannels: subChannels, logger: quiet)
            try machine.run(until: { client.state != .initializing }, "init")
            #expect(client.state == .ready && client.grantedSubChannels == subChannels)
            let subs = machine.client.channels.values.filter { $0.offer.subChannelIndex > 0 && $0.state != .rescinded }
            for sub in subs { try machine.client.open(sub, sendPages: 8, receivePages: 8) }
            try machine.run(until: { subs.allSatisfy { $0.state == .open } }, "open subs")
            return subs
        }
        let first = try start(subChannels: 2)
        #expect(first.count == 2)
        // Sub-channels first, then the primary, as Linux closes.
        for sub in first { machine.client.close(sub) }
        try machine.run(until: { first.allSatisfy { $0.state == .rescinded } }, "sub-channels rescinded")
        machine.client.close(primary)
        try machine.run(until: { primary.state != .open }, "primary closed")
        machine.pump()
        // The guest released the relids (RELID_RELEASED): the host forgot the old sub-channels.
        #expect(machine.server.channels.values.filter { $0.device === vsp }.count == 1)
        let second = try start(subChannels: 2)
        #expect(second.count == 2 && Set(second.map(\.offer.subChannelIndex)) == [1, 2])
        #expect(machine.server.channels.values.filter { $0.device === vsp && $0.state == .open }.count == 3)
        #expect(vsp.protocolErrors == 0 && machine.server.guestProtocolErrors == 0)
    }
}

@Suite("SCSI disk over tiny images")
struct SCSITinyImageTests {
    @Test("READ CAPACITY of an image smaller than one block: CHECK CONDITION, medium not present (it used to trap)")
    func belowOneBlock() throws {
        for size: UInt64 in [0, 100, 511] {
            let image = try TempImage(size: size)
            let disk = SCSIDisk(backend: try FileBackend(path: image.path), serial: "TINY")
            #expect(disk.blockCount == 0)
            #expect(disk.execute(cdb: [0x25] + [UInt8](repeating: 0, count: 9), data: .empty) == .check(.mediumNotPresent))
            var rc16 = [UInt8](repeating: 0, count: 16)
            rc16[0] = 0x9E; rc16[1] = 0x10; rc16[13] = 32
            #expect(disk.execute(cdb: rc16, data: .empty) == .check(.mediumNotPresent))
            // Reads and writes are out of range, not a crash.
            #expect(disk.execute(cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], data: .empty).status == 2)
        }
    }
}

@Suite("Image files")
struct ImageFileTests {
    @Test("An image path that is a symbolic link is refused with a message (it could point the host at another file)")
    func symlinkRefused() throws {
        let image = try TempImage(size: 1 << 20)
        let link = image.path + ".link"
        #expect(symlink(image.path, link) == 0)
        defer { unlink(link) }
        do {
            _ = try FileBackend(path: link)
            Issue.record("a symlinked image was opened")
        } catch {
            #expect("\(error)".contains("symbolic link"), "\(error)")
        }
        #expect(try FileBackend(path: image.path).sizeBytes == 1 << 20)
    }
}

/// An image store that fills up: writes past `room` bytes fail with ENOSPC, reads see what fit.
final class FillingBackend: BlockBackend {
    var bytes: [UInt8]
    var room: Int
    var isReadOnly: Bool { false }
    var sizeBytes: UInt64 { UInt64(bytes.count) }
    init(size: Int, room: Int) {
        bytes = [UInt8](repeating: 0, count: size)
        self.room = room
    }
    func read(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws(BlockError) {
        var at = Int(offset)
        for s in segments {
            guard at + s.count <= bytes.count else { throw .outOfRange }
            bytes.withUnsafeBytes { s.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[at..<at + s.count])) }
            at += s.count
        }
    }
    func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError) {
        var at = Int(offset)
        for s in segments {
            guard at + s.count <= room else { throw .system(call: "pwrite", errno: ENOSPC) }
            bytes.replaceSubrange(at..<at + s.count, with: s)
            at += s.count
        }
    }
    func flush() throws(BlockError) {}
    func discard(offset: UInt64, length: UInt64) throws(BlockError) {}
}

@Suite("A full image store")
struct FullImageStoreTests {
    @Test("A write the image's file system has no room for: CHECK CONDITION, DATA PROTECT / SPACE ALLOCATION FAILED (07/27/07); what was written before reads back intact")
    func spaceAllocationFailed() throws {
        let backend = FillingBackend(size: 1 << 20, room: 64 * 1024)
        let disk = SCSIDisk(backend: backend, serial: "FULL")
        var block = [UInt8](repeating: 0xA5, count: 4096)
        let write10: (UInt32) -> [UInt8] = { lba in [0x2A, 0, UInt8(lba >> 24), UInt8(truncatingIfNeeded: lba >> 16), UInt8(truncatingIfNeeded: lba >> 8), UInt8(truncatingIfNeeded: lba), 0, 0, 8, 0] }
        let fits = block.withUnsafeMutableBytes { disk.execute(cdb: write10(0), data: SCSIData(segments: [$0])) }
        #expect(fits == .good(4096))
        let full = block.withUnsafeMutableBytes { disk.execute(cdb: write10(1024), data: SCSIData(segments: [$0])) }
        #expect(full == .check(.spaceAllocationFailed))
        #expect(full.sense?.bytes[2] == 0x07 && full.sense?.bytes[12] == 0x27 && full.sense?.bytes[13] == 0x07)
        // Other write failures stay MEDIUM ERROR / WRITE ERROR.
        #expect(SenseData.writeFailure(.system(call: "pwrite", errno: EIO)) == .writeError)
        block = [UInt8](repeating: 0, count: 4096)
        let read = block.withUnsafeMutableBytes { disk.execute(cdb: [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], data: SCSIData(segments: [$0])) }
        #expect(read == .good(4096) && block.allSatisfy { $0 == 0xA5 })
    }
}

@Suite("Synthetic storage: bounded queues")
struct StorageBoundedQueueTests {
    @Test("A guest that submits more than the VSP's outstanding limit: the host holds at most the limit and reads the rest as completions drain")
    func outstandingLimit() throws {
        let rw = try TempImage(size: 8 << 20), ro = try TempImage(size: 1 << 20)
        let (machine, vsp, client) = try storageMachine(rw, ro)
        let executor = DeferredExecutor()
        vsp.executor = executor
        vsp.maximumOutstanding = 16
        var results: [Int: SCSICompletion] = [:]
        var buffers: [GuestBuffer] = []
        for i in 0..<40 {
            let buffer = try GuestBuffer(client: machine.client, bytes: 512)
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(i))
            buffers.append(buffer)
            #expect(client.execute(lun: 0, cdb: rw10(0x2A, lba: UInt32(i), blocks: 1), direction: .write, buffer: buffer, length: 512) { results[i] = $0 })
        }
        machine.pump()
        #expect(vsp.inFlight == 16 && executor.jobs.count == 16, "in flight \(vsp.inFlight), jobs \(executor.jobs.count)")
        // Completing jobs lets the VSP read on; it never holds more than the limit.
        var peak = 0
        while !executor.jobs.isEmpty {
            let job = executor.jobs.removeFirst()
            job.work()
            job.then()
            machine.pump()
            peak = max(peak, vsp.inFlight)
        }
        #expect(peak <= 16 && results.count == 40 && results.values.allSatisfy(\.isGood), "peak \(peak), \(results.count) completed")
        let image = rw.contents
        for i in 0..<40 { #expect(image[(i * 512)..<(i * 512 + 512)].allSatisfy { $0 == UInt8(i) }, "block \(i)") }
    }
}
