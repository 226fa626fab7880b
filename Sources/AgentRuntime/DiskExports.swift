// Binds synthetic SCSI controllers: finds the LUNs and exports each as an NBD socket for standard tools.

import CSystem
import Foundation
import Glibc
import Logging
import NBD
import PartitionLink
import SyntheticStorage
import VMBusClient
import VMBusWire

/// One exported LUN, as `viridian-agent disk list` shows it.
public struct DiskExport: Codable, Sendable, Equatable {
    public var controller: UInt32
    public var lun: UInt8
    public var sizeBytes: UInt64
    public var readOnly: Bool
    /// The NBD socket (nbd+unix:///?socket=PATH).
    public var export: String
}

/// A LUN seen through storvsc, served to NBD clients. One command at a time through a 256 KiB
/// buffer in guest memory that the host reads and writes directly.
final class SCSIBlockDevice: NBDBlockDevice, @unchecked Sendable {
    let session: AgentSession
    let storage: StorageClient
    let lun: UInt8
    /// For probing: address this LUN instead of `lun`.
    var lunOverride: UInt8?
    let size: UInt64
    let isReadOnly: Bool
    let blockSize = 512
    private let buffer: GuestBuffer
    var bufferView: UnsafeMutableRawBufferPointer { buffer.bytes }
    private let chunk: Int
    private let lock = Lock()
    /// Buffers for pipelined requests (nil for probing devices).
    let pool: GuestBufferPool?
    private let done: EventFD
    private var result: SCSICompletion?

    init(session: AgentSession, storage: StorageClient, lun: UInt8, size: UInt64, readOnly: Bool, pipelineBuffers: Int = 0) throws {
        self.session = session
        self.storage = storage
        self.lun = lun
        self.size = size
        self.isReadOnly = readOnly
        chunk = Int(min(storage.maximumTransferBytes, 256 << 10))
        buffer = try session.withBus { try GuestBuffer(client: $0, bytes: 256 << 10) }
        // As many in-flight buffers as guest memory allows, up to `pipelineBuffers`.
        let buffers: [GuestBuffer] = session.withBus { client in
            var out: [GuestBuffer] = []
            for _ in 0..<pipelineBuffers {
                guard let b = try? GuestBuffer(client: client, bytes: 256 << 10) else { break }
                out.append(b)
            }
            return out
        }
        pool = buffers.isEmpty ? nil : GuestBufferPool(buffers)
        done = try EventFD()
    }

    /// Runs one command and waits for it; nil if the host never answers.
    func command(_ cdb: [UInt8], _ direction: SCSIDataDirection, length: Int) -> SCSICompletion? {
        submit(cdb, direction, buffer: buffer, length: length) { [self] c in
            result = c
            done.ring()
        }
        // Up to 60 s for the host, but not a moment longer once the host is gone (nothing will answer).
        var fd = pollfd(fd: done.fd, events: Int16(POLLIN), revents: 0)
        var waited = 0
        while poll(&fd, 1, 250) <= 0 {
            waited += 250
            if waited >= 60_000 || session.hostLost != nil { return nil }
        }
        done.wait()
        return session.withBus { _ in result }
    }

    static func cdb16(_ op: UInt8, lba: UInt64, blocks: UInt32, flags: UInt8 = 0) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 16)
        c[0] = op
        c[1] = flags
        for i in 0..<8 { c[2 + i] = UInt8(truncatingIfNeeded: lba >> (8 * UInt64(7 - i))) }
        for i in 0..<4 { c[10 + i] = UInt8(truncatingIfNeeded: blocks >> (8 * UInt32(3 - i))) }
        return c
    }

    func errno(_ c: SCSICompletion?) -> UInt32 {
        guard let c else { return NBD.Error.io }
        if c.isGood { return NBD.Error.ok }
        switch c.senseKey {
        // DATA PROTECT, SPACE ALLOCATION FAILED: the host's image store is full.
        case 0x07? where c.sense.count > 13 && c.sense[12] == 0x27 && c.sense[13] == 0x07: return NBD.Error.nospc
        case 0x07?: return NBD.Error.perm
        case 0x05? where c.sense.count > 12 && c.sense[12] == 0x21: return NBD.Error.nospc
        case 0x05?: return NBD.Error.inval
        default: return NBD.Error.io
        }
    }

    /// Reads or writes whole blocks through the buffer, chunk by chunk.
    private func transfer(offset: UInt64, count: Int, write: Bool, fua: Bool, data: UnsafeMutableRawPointer) -> UInt32 {
        var done = 0
        while done < count {
            let n = min(chunk, count - done)
            let lba = (offset + UInt64(done)) / 512
            if write { buffer.bytes.baseAddress!.copyMemory(from: data + done, byteCount: n) }
            let c = command(Self.cdb16(write ? 0x8A : 0x88, lba: lba, blocks: UInt32(n / 512), flags: fua ? 0x08 : 0),
                            write ? .write : .read, length: n)
            let e = errno(c)
            guard e == 0 else { return e }
            if !write { (data + done).copyMemory(from: buffer.bytes.baseAddress!, byteCount: n) }
            done += n
        }
        return 0
    }

    func read(offset: UInt64, into out: UnsafeMutableRawBufferPointer) -> UInt32 {
        lock.withLock {
            let start = offset & ~511, end = (offset + UInt64(out.count) + 511) & ~511
            if start == offset && end == offset + UInt64(out.count) {
                return transfer(offset: offset, count: out.count, write: false, fua: false, data: out.baseAddress!)
            }
            // Unaligned: read whole blocks, copy the part asked for.
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: 512)
            defer { staging.deallocate() }
            let e = transfer(offset: start, count: staging.count, write: false, fua: false, data: staging.baseAddress!)
            if e == 0 { out.baseAddress!.copyMemory(from: staging.baseAddress! + Int(offset - start), byteCount: out.count) }
            return e
        }
    }

    func write(offset: UInt64, from data: UnsafeRawBufferPointer, fua: Bool) -> UInt32 {
        lock.withLock {
            let start = offset & ~511, end = (offset + UInt64(data.count) + 511) & ~511
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: 512)
            defer { staging.deallocate() }
            if start != offset || end != offset + UInt64(data.count) {
                // Read-modify-write of the partial blocks at either end.
                let e = transfer(offset: start, count: staging.count, write: false, fua: false, data: staging.baseAddress!)
                guard e == 0 else { return e }
            }
            (staging.baseAddress! + Int(offset - start)).copyMemory(from: data.baseAddress!, byteCount: data.count)
            return transfer(offset: start, count: staging.count, write: true, fua: fua, data: staging.baseAddress!)
        }
    }

    func flush() -> UInt32 {
        lock.withLock { errno(command([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], .none, length: 0)) }
    }

    func trim(offset: UInt64, length: UInt64) -> UInt32 {
        lock.withLock {
            // Only whole blocks can be released; the rest is left as it is (TRIM is advisory).
            let start = (offset + 511) & ~511, end = (offset + length) & ~511
            guard end > start else { return 0 }
            var at = start
            while at < end {
                let blocks = UInt32(min((end - at) / 512, 0x10_0000))
                let e = errno(command(Self.cdb16(0x93, lba: at / 512, blocks: blocks, flags: 0x08), .none, length: 0))
                guard e == 0 else { return e }
                at += UInt64(blocks) * 512
            }
            return 0
        }
    }

    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool) -> UInt32 {
        writeZeroesByWriting(offset: offset, length: length, fua: fua)
    }
}

/// The agent's disks: opens each synthetic SCSI controller, exports every LUN over NBD, and
/// follows the host's hot add and remove (ENUMERATE_BUS) by rescanning.
public final class DiskExporter: @unchecked Sendable {
    let session: AgentSession
    let directory: String
    let stateDir: String
    let timeoutMs: Int
    let logger: Logger
    private var controllers: [UInt32: StorageClient] = [:]
    /// One probing device (and its guest buffer) per controller, reused by every rescan.
    private var probes: [ObjectIdentifier: SCSIBlockDevice] = [:]
    private var served: [String: (export: DiskExport, server: NBDServer)] = [:]
    private let rescanLock = Lock()
    /// Rung when the host says the bus changed.
    public let busChanged: EventFD

    /// Sub-channels per controller: Linux's (VPs − 1) / vcpus_per_sub_channel.
    let subChannels: Int

    public init(session: AgentSession, directory: String, stateDir: String, timeoutMs: Int, vcpusPerSubChannel: Int = 4) throws {
        subChannels = max(0, (session.link.vpCount - 1) / max(vcpusPerSubChannel, 1))
        self.session = session
        self.directory = directory
        self.stateDir = stateDir
        self.timeoutMs = timeoutMs
        logger = session.logger
        busChanged = try EventFD()
    }

    public var exports: [DiskExport] { rescanLock.withLock { served.values.map(\.export).sorted { ($0.controller, $0.lun) < ($1.controller, $1.lun) } } }

    /// Opens new controllers and brings the exports in line with every controller's LUNs.
    public func rescan() throws {
        try rescanLock.withLock {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let offered = session.withBus { $0.channels.values.filter { $0.deviceClass == .scsi && $0.state == .offered }.sorted { $0.relid < $1.relid } }
            for channel in offered { try open(channel) }
            var seen = Set<String>()
            for (relid, storage) in controllers.sorted(by: { $0.key < $1.key }) {
                for lun in try luns(storage) {
                    let path = "\(directory)/scsi\(relid)-lun\(lun.lun).sock"
                    seen.insert(path)
                    if served[path] != nil { continue }
                    let device = try SCSIBlockDevice(session: session, storage: storage, lun: lun.lun, size: lun.size, readOnly: lun.readOnly,
                                                     pipelineBuffers: 32)
                    let server = try NBDServer(path: path, exportName: "", device: device, logger: logger)
                    server.start()
                    served[path] = (DiskExport(controller: relid, lun: lun.lun, sizeBytes: lun.size, readOnly: lun.readOnly, export: path), server)
                    logger.info("disk: LUN \(lun.lun) on controller \(relid): \(lun.size >> 20) MiB\(lun.readOnly ? " read-only" : ""), nbd+unix:///?socket=\(path)")
                }
            }
            for (path, entry) in served where !seen.contains(path) {
                entry.server.stop()
                served[path] = nil
                logger.info("disk: LUN \(entry.export.lun) on controller \(entry.export.controller) removed")
            }
            try record()
        }
    }

    /// `count` devices on the LUN of `export`, each with a buffer of its own, so that a relay can
    /// keep that many commands in flight on the controller.
    public func relayDevices(for export: DiskExport, count: Int) throws -> [any NBDBlockDevice] {
        try rescanLock.withLock {
            guard let storage = controllers[export.controller] else {
                throw AgentError.protocolFailure("SCSI controller \(export.controller) is gone")
            }
            return try (0..<count).map { _ in
                try SCSIBlockDevice(session: session, storage: storage, lun: export.lun, size: export.sizeBytes, readOnly: export.readOnly)
            }
        }
    }

    /// Stops every export and forgets the state file.
    public func stop() {
        rescanLock.withLock {
            for entry in served.values { entry.server.stop() }
            served.removeAll()
            unlink(Self.statePath(stateDir))
        }
    }

    public static func statePath(_ stateDir: String) -> String { stateDir + "/disks.json" }

    private func record() throws {
        try AgentStateFile.write(served.values.map(\.export).sorted { ($0.controller, $0.lun) < ($1.controller, $1.lun) },
                                 to: Self.statePath(stateDir))
    }

    private func open(_ channel: ClientChannel) throws {
        // storvsc's ring: 128 KiB each way.
        try session.withBus { try $0.open(channel, sendPages: 32, receivePages: 32) }
        guard try session.wait(timeoutMs: timeoutMs, until: { _ in channel.state != .creatingRingGPADL && channel.state != .opening }),
            channel.state == .open
        else { throw AgentError.protocolFailure("SCSI controller \(channel.relid) did not open") }
        let changed = busChanged
        let storage = session.withBus { _ in
            let client = StorageClient(channel: channel, subChannels: subChannels, logger: logger)
            client.onBusChange = { changed.ring() }
            // The NBD replies to what one drain completes are sent together, by the VP thread.
            client.drainWrapper = { drain in NBDReplyGrouping.together(drain) }
            return client
        }
        guard try session.wait(timeoutMs: timeoutMs, until: { _ in storage.state != .initializing }), storage.state == .ready else {
            throw AgentError.protocolFailure("SCSI controller \(channel.relid): \(storage.state)")
        }
        controllers[channel.relid] = storage
        // The host offers the sub-channels it granted; open each on its own VP.
        let subs = try session.openSubChannels(of: channel, count: storage.grantedSubChannels, pages: 32, timeoutMs: timeoutMs)
        session.withBus { _ in for sub in subs { storage.addSubChannel(sub) } }
        logger.info("disk: controller \(channel.relid) uses \(storage.subChannels.count) sub-channel(s)")
    }

    /// The byte size a READ CAPACITY (16) answer gives, (last LBA + 1) × block length; nil for a
    /// block length of 0 or values whose product does not fit 64 bits (which used to trap).
    public static func capacityBytes(readCapacity16 b: [UInt8]) -> UInt64? {
        guard b.count >= 12 else { return nil }
        let blockLength = UInt64(b.be(UInt32.self, at: 8))
        let (blocks, carried) = b.be(UInt64.self, at: 0).addingReportingOverflow(1)
        let (bytes, overflowed) = blocks.multipliedReportingOverflow(by: blockLength)
        guard blockLength > 0, !carried, !overflowed else { return nil }
        return bytes
    }

    /// REPORT LUNS, then capacity and write protection of each.
    private func luns(_ storage: StorageClient) throws -> [(lun: UInt8, size: UInt64, readOnly: Bool)] {
        let probe = try probes[ObjectIdentifier(storage)] ?? SCSIBlockDevice(session: session, storage: storage, lun: 0, size: 0, readOnly: true)
        probes[ObjectIdentifier(storage)] = probe
        probe.lunOverride = nil
        guard let report = probe.command([0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], .read, length: 4096), report.isGood else {
            throw AgentError.protocolFailure("REPORT LUNS failed")
        }
        let list = probe.bufferBytes(4096)
        var out: [(UInt8, UInt64, Bool)] = []
        for i in 0..<min(Int(list.be(UInt32.self, at: 0)) / 8, 255) {
            let lun = list[8 + 8 * i + 1]
            probe.lunOverride = lun
            guard let capacity = probe.command([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], .read, length: 32),
                capacity.isGood
            else { continue }
            guard let size = Self.capacityBytes(readCapacity16: probe.bufferBytes(32)) else {
                logger.warning("storage: LUN \(lun): the host's READ CAPACITY (16) gives no usable size; not exported")
                continue
            }
            let mode = probe.command([0x1A, 0, 0x3F, 0, 64, 0], .read, length: 64)
            out.append((lun, size, mode?.isGood == true && probe.bufferBytes(4)[2] & 0x80 != 0))
        }
        return out
    }
}

extension SCSIBlockDevice {
    /// Bytes of the shared buffer (after a command).
    func bufferBytes(_ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(rebasing: bufferView[0..<n])) }
}


/// A pool of guest-memory buffers shared by in-flight requests of one device.
final class GuestBufferPool: @unchecked Sendable {
    let buffers: [GuestBuffer]
    private var free: [Int]
    private var mutex = pthread_mutex_t()
    private var available = pthread_cond_t()

    init(_ buffers: [GuestBuffer]) {
        self.buffers = buffers
        free = Array(buffers.indices)
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&available, nil)
    }

    /// Takes `count` buffers at once (all or none, so requests never deadlock on partial holds).
    func take(_ count: Int) -> [Int] {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while free.count < count { pthread_cond_wait(&available, &mutex) }
        let taken = Array(free.suffix(count))
        free.removeLast(count)
        return taken
    }

    /// `take` if `count` buffers are free now, else nil (never waits).
    func tryTake(_ count: Int) -> [Int]? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        guard free.count >= count else { return nil }
        let taken = Array(free.suffix(count))
        free.removeLast(count)
        return taken
    }

    func give(_ indices: [Int]) {
        pthread_mutex_lock(&mutex)
        free += indices
        pthread_cond_broadcast(&available)
        pthread_mutex_unlock(&mutex)
    }
}

/// Counts chunk completions of one request; the last one finishes the request.
final class ChunkedRequest: @unchecked Sendable {
    var remaining: Int
    var error: UInt32 = 0
    init(chunks: Int) { remaining = chunks }

    /// Counts one chunk with its error (the first error wins); true when it was the last.
    func finish(_ e: UInt32) -> Bool {
        if e != 0 && error == 0 { error = e }
        remaining -= 1
        return remaining == 0
    }
}

/// A CDB of up to 20 bytes (what an SRB carries) held inline: building one allocates nothing.
struct InlineCDB {
    private var bytes: (UInt64, UInt64, UInt32) = (0, 0, 0)
    /// Bytes used.
    let count: Int

    private init(count: Int) { self.count = count }

    /// The first 20 bytes of `cdb` (an SRB carries no more; its CDB length stops at 16).
    init(_ cdb: [UInt8]) {
        count = min(cdb.count, 20)
        let n = count
        withUnsafeMutableBytes(of: &bytes) { b in cdb.withUnsafeBytes { b.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) } }
    }

    /// READ (16) / WRITE (16) and the like: `SCSIBlockDevice.cdb16` without the array.
    static func cdb16(_ op: UInt8, lba: UInt64, blocks: UInt32, flags: UInt8 = 0) -> InlineCDB {
        var c = InlineCDB(count: 16)
        withUnsafeMutableBytes(of: &c.bytes) { b in
            b[0] = op
            b[1] = flags
            b.storeBytes(of: lba.bigEndian, toByteOffset: 2, as: UInt64.self)
            b.storeBytes(of: blocks.bigEndian, toByteOffset: 10, as: UInt32.self)
        }
        return c
    }

    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: bytes) { body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
    }
}

/// One SCSI command ready for the ring.
struct SCSICommand {
    var cdb: InlineCDB
    var direction: SCSIDataDirection
    var buffer: GuestBuffer
    var length: Int
    /// Runs once: with the bus locked in a VP thread, or in the submitting thread if the host is gone.
    var completion: (SCSICompletion) -> Void
}

extension SCSIBlockDevice: NBDPipelinedDevice {
    /// How many chunks (one SCSI command on its own pool buffer each) an aligned request takes;
    /// nil when it cannot be pipelined.
    fileprivate func chunkCount(offset: UInt64, length: Int) -> Int? {
        guard let pool, chunk > 0, offset % 512 == 0, length % 512 == 0, length > 0 else { return nil }
        let count = (length + chunk - 1) / chunk
        return count <= pool.buffers.count ? count : nil
    }

    /// Submits one command (see `submit(_:)`).
    private func submit(_ cdb: [UInt8], _ direction: SCSIDataDirection, buffer: GuestBuffer, length: Int,
                        completion: @escaping (SCSICompletion) -> Void) {
        var one = [SCSICommand(cdb: InlineCDB(cdb), direction: direction, buffer: buffer, length: length, completion: completion)]
        submit(&one)
    }

    /// Writes `commands` to the ring in order under one bus lock and publishes them with one commit.
    /// While the ring is full it publishes what it wrote and retries the rest; a command that does
    /// not fit once the host is gone completes with an error.
    func submit(_ commands: inout [SCSICommand]) {
        let target = lunOverride ?? lun
        var next = 0
        while next < commands.count {
            let stalled = session.withBus { _ -> Bool in
                while next < commands.count {
                    let c = commands[next]
                    let written = c.cdb.withBytes { cdb in
                        storage.enqueue(lun: target, cdb: cdb, direction: c.direction, buffer: c.buffer, length: c.length, completion: c.completion)
                    }
                    guard written else { break }
                    next += 1
                }
                storage.commitWrites()
                return next < commands.count
            }
            guard stalled else { return }
            if session.hostLost != nil {
                commands[next].completion(SCSICompletion(ntStatus: 0xC000_0185, srbStatus: SRBStatus.error, scsiStatus: 0, sense: [], transferred: 0))
                next += 1
                continue
            }
            usleep(50)
        }
    }

    /// The commands of a read of `length` bytes at `offset` on the pool buffers `taken` (one per chunk).
    fileprivate func readCommands(offset: UInt64, length: Int, taken: [Int], into commands: inout [SCSICommand],
                                  done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) {
        guard let pool else { return }
        let request = ChunkedRequest(chunks: taken.count)
        var views: [UnsafeRawBufferPointer] = []
        views.reserveCapacity(taken.count)
        for (i, index) in taken.enumerated() {
            views.append(UnsafeRawBufferPointer(rebasing: pool.buffers[index].bytes[0..<min(chunk, length - i * chunk)]))
        }
        nonisolated(unsafe) let segments = views
        for (i, index) in taken.enumerated() {
            let n = min(chunk, length - i * chunk)
            commands.append(SCSICommand(cdb: .cdb16(0x88, lba: (offset + UInt64(i * chunk)) / 512, blocks: UInt32(n / 512)), direction: .read,
                                        buffer: pool.buffers[index], length: n) { [self] c in
                // Runs with the bus locked, in a VP thread.
                if request.finish(errno(c)) { done(request.error, segments) { pool.give(taken) } }
            })
        }
    }

    /// The commands of a write of `data` at `offset` on the pool buffers `taken`; the data is copied now.
    fileprivate func writeCommands(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, taken: [Int], into commands: inout [SCSICommand],
                                   done: @escaping @Sendable (UInt32) -> Void) {
        guard let pool else { return }
        let request = ChunkedRequest(chunks: taken.count)
        for (i, index) in taken.enumerated() {
            let n = min(chunk, data.count - i * chunk)
            pool.buffers[index].bytes.baseAddress!.copyMemory(from: data.baseAddress! + i * chunk, byteCount: n)
            commands.append(SCSICommand(cdb: .cdb16(0x8A, lba: (offset + UInt64(i * chunk)) / 512, blocks: UInt32(n / 512), flags: fua ? 0x08 : 0),
                                        direction: .write, buffer: pool.buffers[index], length: n) { [self] c in
                if request.finish(errno(c)) {
                    pool.give(taken)
                    done(request.error)
                }
            })
        }
    }

    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        guard let count = chunkCount(offset: offset, length: length), let pool else { return false }
        var commands: [SCSICommand] = []
        readCommands(offset: offset, length: length, taken: pool.take(count), into: &commands, done: done)
        submit(&commands)
        return true
    }

    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool {
        guard let count = chunkCount(offset: offset, length: data.count), let pool else { return false }
        var commands: [SCSICommand] = []
        writeCommands(offset: offset, data: data, fua: fua, taken: pool.take(count), into: &commands, done: done)
        submit(&commands)
        return true
    }

    func makeBatch() -> any NBDRequestBatch { SCSIRequestBatch(device: self) }
}

/// The requests one NBD connection starts back to back: their commands are held, then written to
/// the ring under one bus lock and published with one commit (at most one signal to the host).
final class SCSIRequestBatch: NBDRequestBatch {
    let device: SCSIBlockDevice
    private var held: [SCSICommand] = []
    /// Commands held at most before they are submitted anyway.
    static let limit = 32

    init(device: SCSIBlockDevice) {
        self.device = device
        held.reserveCapacity(Self.limit)
    }

    /// Pool buffers for `count` chunks. If they are not free now, what is held goes out first: its
    /// completions are what free them.
    private func take(_ count: Int, from pool: GuestBufferPool) -> [Int] {
        if let taken = pool.tryTake(count) { return taken }
        submit()
        return pool.take(count)
    }

    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        guard let count = device.chunkCount(offset: offset, length: length), let pool = device.pool else { return false }
        let taken = take(count, from: pool)
        device.readCommands(offset: offset, length: length, taken: taken, into: &held, done: done)
        if held.count >= Self.limit { submit() }
        return true
    }

    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool {
        guard let count = device.chunkCount(offset: offset, length: data.count), let pool = device.pool else { return false }
        let taken = take(count, from: pool)
        device.writeCommands(offset: offset, data: data, fua: fua, taken: taken, into: &held, done: done)
        if held.count >= Self.limit { submit() }
        return true
    }

    func submit() {
        guard !held.isEmpty else { return }
        device.submit(&held)
        held.removeAll(keepingCapacity: true)
    }
}
