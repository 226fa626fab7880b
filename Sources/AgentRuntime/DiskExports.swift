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
    private let done: EventFD
    private var result: SCSICompletion?

    init(session: AgentSession, storage: StorageClient, lun: UInt8, size: UInt64, readOnly: Bool) throws {
        self.session = session
        self.storage = storage
        self.lun = lun
        self.size = size
        self.isReadOnly = readOnly
        chunk = Int(min(storage.maximumTransferBytes, 256 << 10))
        buffer = try session.withBus { try GuestBuffer(client: $0, bytes: 256 << 10) }
        done = try EventFD()
    }

    /// Runs one command and waits for it; nil if the host never answers.
    func command(_ cdb: [UInt8], _ direction: SCSIDataDirection, length: Int) -> SCSICompletion? {
        for _ in 0..<1000 {
            let submitted = session.withBus { _ in
                storage.execute(lun: lunOverride ?? lun, cdb: cdb, direction: direction, buffer: buffer, length: length) { [self] c in
                    result = c
                    done.ring()
                }
            }
            if submitted { break }
            usleep(1000)
        }
        var fd = pollfd(fd: done.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&fd, 1, 60_000) > 0 else { return nil }
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
        // Zeros written in chunks (holes read back as zeros too, so trimming is a valid shortcut).
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(length, 1 << 20)), alignment: 512)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at: UInt64 = 0
        while at < length {
            let n = Int(min(length - at, UInt64(zeros.count)))
            let e = write(offset: offset + at, from: UnsafeRawBufferPointer(rebasing: zeros[0..<n]), fua: fua)
            guard e == 0 else { return e }
            at += UInt64(n)
        }
        return 0
    }
}

extension AgentSession {
    /// Opens every synthetic SCSI controller, finds its LUNs and exports each over NBD in `directory`.
    public func exportDisks(directory: String, timeoutMs: Int) throws -> (exports: [DiskExport], servers: [NBDServer]) {
        let controllers = withBus { $0.channels.values.filter { $0.deviceClass == .scsi && $0.state == .offered }.sorted { $0.relid < $1.relid } }
        guard !controllers.isEmpty else { return ([], []) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var exports: [DiskExport] = [], servers: [NBDServer] = []
        for channel in controllers {
            // storvsc's ring: 128 KiB each way.
            try withBus { try $0.open(channel, sendPages: 32, receivePages: 32) }
            guard try wait(timeoutMs: timeoutMs, until: { _ in channel.state != .creatingRingGPADL && channel.state != .opening }),
                channel.state == .open
            else { throw AgentError.protocolFailure("SCSI controller \(channel.relid) did not open") }
            let storage = withBus { _ in StorageClient(channel: channel, logger: logger) }
            guard try wait(timeoutMs: timeoutMs, until: { _ in storage.state != .initializing }), storage.state == .ready else {
                throw AgentError.protocolFailure("SCSI controller \(channel.relid): \(storage.state)")
            }
            let probe = try SCSIBlockDevice(session: self, storage: storage, lun: 0, size: 0, readOnly: true)
            guard let report = probe.command([0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], .read, length: 4096), report.isGood else {
                throw AgentError.protocolFailure("REPORT LUNS failed on controller \(channel.relid)")
            }
            let lunBytes = probe.bufferBytes(4096)
            let count = min(Int(lunBytes.be32(at: 0)) / 8, 255)
            for i in 0..<count {
                let lun = lunBytes[8 + 8 * i + 1]
                probe.lunOverride = lun
                guard let capacity = probe.command([0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], .read, length: 32),
                    capacity.isGood
                else { continue }
                let cap = probe.bufferBytes(32)
                var lastLBA: UInt64 = 0
                for j in 0..<8 { lastLBA = lastLBA << 8 | UInt64(cap[j]) }
                let size = (lastLBA + 1) * UInt64(cap.be32(at: 8))
                let mode = probe.command([0x1A, 0, 0x3F, 0, 64, 0], .read, length: 64)
                let readOnly = mode?.isGood == true && probe.bufferBytes(4)[2] & 0x80 != 0
                let device = try SCSIBlockDevice(session: self, storage: storage, lun: lun, size: size, readOnly: readOnly)
                let path = "\(directory)/scsi\(channel.relid)-lun\(lun).sock"
                let server = try NBDServer(path: path, exportName: "", device: device, logger: logger)
                server.start()
                servers.append(server)
                exports.append(DiskExport(controller: channel.relid, lun: lun, sizeBytes: size, readOnly: readOnly, export: path))
                logger.info("disk: LUN \(lun) on controller \(channel.relid): \(size >> 20) MiB\(readOnly ? " read-only" : ""), nbd+unix:///?socket=\(path)")
            }
        }
        return (exports, servers)
    }
}

extension SCSIBlockDevice {
    /// Bytes of the shared buffer (after a command).
    func bufferBytes(_ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(rebasing: bufferView[0..<n])) }
}

extension Array where Element == UInt8 {
    func be32(at offset: Int) -> UInt32 {
        guard offset + 4 <= count else { return 0 }
        return UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }
}
