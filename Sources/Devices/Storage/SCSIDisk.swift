// A SCSI direct-access logical unit over a block backend: the commands Linux's sd and storvsc send.

import Glibc
import VMBusWire

/// Fixed-format sense data.
public struct SenseData: Equatable, Sendable {
    public var key: UInt8
    public var asc: UInt8
    public var ascq: UInt8

    public static let invalidOpcode = SenseData(key: 0x05, asc: 0x20, ascq: 0)
    public static let invalidField = SenseData(key: 0x05, asc: 0x24, ascq: 0)
    public static let lbaOutOfRange = SenseData(key: 0x05, asc: 0x21, ascq: 0)
    public static let parameterListLength = SenseData(key: 0x05, asc: 0x1A, ascq: 0)
    public static let writeProtected = SenseData(key: 0x07, asc: 0x27, ascq: 0)
    /// NOT READY, MEDIUM NOT PRESENT: an image smaller than one block.
    public static let mediumNotPresent = SenseData(key: 0x02, asc: 0x3A, ascq: 0)
    public static let mediumError = SenseData(key: 0x03, asc: 0x11, ascq: 0)
    public static let writeError = SenseData(key: 0x03, asc: 0x0C, ascq: 0)
    /// DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (SBC-3 4.7.3.7): the image's file
    /// system is full (ENOSPC, EDQUOT), as a thin-provisioned disk reports it (QEMU's scsi-disk too).
    public static let spaceAllocationFailed = SenseData(key: 0x07, asc: 0x27, ascq: 0x07)

    /// The sense for a failed write or flush: out of space, else a write error.
    public static func writeFailure(_ error: BlockError) -> SenseData {
        if case .system(_, let e) = error, e == ENOSPC || e == EDQUOT { return .spaceAllocationFailed }
        return .writeError
    }

    /// 18 bytes, response code 0x70.
    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 18)
        b[0] = 0x70
        b[2] = key
        b[7] = 10
        b[12] = asc
        b[13] = ascq
        return b
    }
}

/// The outcome of one command.
public struct SCSIResult: Equatable, Sendable {
    /// SAM status: 0 GOOD, 2 CHECK CONDITION.
    public var status: UInt8
    public var sense: SenseData?
    /// Bytes of data moved.
    public var transferred: Int

    public static func good(_ n: Int = 0) -> SCSIResult { SCSIResult(status: 0, sense: nil, transferred: n) }
    public static func check(_ sense: SenseData) -> SCSIResult { SCSIResult(status: 2, sense: sense, transferred: 0) }
}

/// Guest data of one command: the GPA-direct pages, already translated and bounds-checked.
public struct SCSIData {
    public var segments: [UnsafeMutableRawBufferPointer]
    public var count: Int { segments.reduce(0) { $0 + $1.count } }

    public init(segments: [UnsafeMutableRawBufferPointer]) { self.segments = segments }
    public static var empty: SCSIData { SCSIData(segments: []) }

    /// The first `length` bytes (for writes).
    func prefix(_ length: Int) -> [UnsafeRawBufferPointer] {
        var left = length
        var out: [UnsafeRawBufferPointer] = []
        for s in segments where left > 0 {
            let n = min(left, s.count)
            out.append(UnsafeRawBufferPointer(rebasing: s[0..<n]))
            left -= n
        }
        return out
    }

    /// The first `length` bytes, writable (for reads).
    func mutablePrefix(_ length: Int) -> [UnsafeMutableRawBufferPointer] {
        var left = length
        var out: [UnsafeMutableRawBufferPointer] = []
        for s in segments where left > 0 {
            let n = min(left, s.count)
            out.append(UnsafeMutableRawBufferPointer(rebasing: s[0..<n]))
            left -= n
        }
        return out
    }

    /// Copies `bytes` into the data buffer (truncated to it); returns the count copied.
    func fill(_ bytes: [UInt8]) -> Int {
        var at = 0
        for s in segments where at < bytes.count {
            let n = min(s.count, bytes.count - at)
            bytes.withUnsafeBytes { s.baseAddress!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
            at += n
        }
        return at
    }

    /// The first `length` bytes as an array (small parameter lists).
    func gather(_ length: Int) -> [UInt8] {
        var out: [UInt8] = []
        for s in prefix(length) { out += Array(s) }
        return out
    }
}

/// One disk: 512-byte blocks, write cache on (flush = fsync), thin provisioning via UNMAP.
public final class SCSIDisk: @unchecked Sendable {
    public let backend: any BlockBackend
    public let serial: String
    public static let blockSize = 512
    /// Largest transfer accepted in one command (also advertised in VPD B0).
    public static let maximumTransferBlocks = 2048

    public init(backend: any BlockBackend, serial: String) {
        self.backend = backend
        self.serial = String(serial.prefix(20))
    }

    public var blockCount: UInt64 { backend.sizeBytes / UInt64(Self.blockSize) }

    /// Executes one CDB against `data`. Thread-safe: the disk keeps no mutable state of its own.
    public func execute(cdb: [UInt8], data: SCSIData) -> SCSIResult { run(cdb, data) }

    /// LBA and block count of a READ/WRITE 6/10/12/16 CDB; nil if it is not one or is too short.
    static func transfer(_ cdb: [UInt8]) -> (lba: UInt64, blocks: UInt64)? {
        switch cdb.first {
        case 0x08?, 0x0A?:
            guard cdb.count >= 6 else { return nil }
            return (UInt64(cdb[1] & 0x1F) << 16 | UInt64(cdb[2]) << 8 | UInt64(cdb[3]), cdb[4] == 0 ? 256 : UInt64(cdb[4]))
        case 0x28?, 0x2A?:
            guard cdb.count >= 10 else { return nil }
            return (UInt64(cdb.be(UInt32.self, at: 2)), UInt64(cdb.be(UInt16.self, at: 7)))
        case 0xA8?, 0xAA?:
            guard cdb.count >= 12 else { return nil }
            return (UInt64(cdb.be(UInt32.self, at: 2)), UInt64(cdb.be(UInt32.self, at: 6)))
        case 0x88?, 0x8A?:
            guard cdb.count >= 16 else { return nil }
            return (cdb.be(UInt64.self, at: 2), UInt64(cdb.be(UInt32.self, at: 10)))
        default:
            return nil
        }
    }

    /// A READ served from the page cache without blocking, or nil (not a READ, or not all cached).
    public func readIfCached(cdb: [UInt8], data: SCSIData) -> SCSIResult? {
        guard let op = cdb.first, [0x08, 0x28, 0xA8, 0x88].contains(op), let (lba, blocks) = Self.transfer(cdb) else { return nil }
        // Anything unusual (errors, bounds) takes the ordinary path.
        guard lba <= blockCount, blocks <= blockCount - lba, blocks > 0 else { return nil }
        let bytes = Int(blocks) * Self.blockSize
        guard bytes <= data.count, backend.readWithoutBlocking(offset: lba * UInt64(Self.blockSize), into: data.mutablePrefix(bytes)) else {
            return nil
        }
        return .good(bytes)
    }

    private func run(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        guard let opcode = cdb.first else { return .check(.invalidOpcode) }
        func need(_ n: Int) -> Bool { cdb.count >= n }
        switch opcode {
        case 0x00, 0x1B, 0x1E:  // TEST UNIT READY, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL
            return .good()
        case 0x03:  // REQUEST SENSE
            guard need(6) else { return .check(.invalidField) }
            let sense = SenseData(key: 0, asc: 0, ascq: 0).bytes
            return .good(data.fill(Array(sense.prefix(Int(cdb[4])))))
        case 0x12:
            guard need(6) else { return .check(.invalidField) }
            return inquiry(cdb, data)
        case 0x25:  // READ CAPACITY (10)
            // An image smaller than one block has no last LBA to report.
            guard blockCount > 0 else { return .check(.mediumNotPresent) }
            var b = [UInt8](repeating: 0, count: 8)
            let last = blockCount - 1
            b.putBE(UInt32(min(last, 0xFFFF_FFFF)), at: 0)
            b.putBE(UInt32(Self.blockSize), at: 4)
            return .good(data.fill(b))
        case 0x9E where need(16) && cdb[1] & 0x1F == 0x10:  // READ CAPACITY (16)
            guard blockCount > 0 else { return .check(.mediumNotPresent) }
            var b = [UInt8](repeating: 0, count: 32)
            b.putBE(blockCount - 1, at: 0)
            b.putBE(UInt32(Self.blockSize), at: 8)
            b[14] = backend.isReadOnly ? 0 : 0xC0  // LBPME | LBPRZ
            return .good(data.fill(Array(b.prefix(Int(cdb.be(UInt32.self, at: 10))))))
        case 0x1A, 0x5A:
            return modeSense(cdb, data)
        case 0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A:
            return readWrite(cdb, data)
        case 0x35, 0x91:  // SYNCHRONIZE CACHE (10) / (16)
            do { try backend.flush() } catch { return .check(SenseData.writeFailure(error)) }
            return .good()
        case 0x42:
            return unmap(cdb, data)
        case 0x93:
            return writeSame16(cdb, data)
        default:
            return .check(.invalidOpcode)
        }
    }

    // MARK: INQUIRY

    private func inquiry(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        let evpd = cdb[1] & 1 != 0
        let allocation = Int(cdb.be(UInt16.self, at: 3))
        var b: [UInt8]
        if !evpd {
            guard cdb[2] == 0 else { return .check(.invalidField) }
            b = [UInt8](repeating: 0x20, count: 36)
            b[0] = 0x00  // connected, direct access block device
            b[1] = 0
            b[2] = 0x06  // SPC-4
            b[3] = 0x02
            b[4] = 31
            b[5] = 0
            b[6] = 0
            b[7] = 0x02  // CMDQUE
            b.replaceSubrange(8..<16, with: Array("Msft    ".utf8))
            b.replaceSubrange(16..<32, with: Array("Virtual Disk    ".utf8))
            b.replaceSubrange(32..<36, with: Array("1.0 ".utf8))
        } else {
            switch cdb[2] {
            case 0x00: b = page(0x00, [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])
            case 0x80: b = page(0x80, Array(serial.utf8))
            case 0x83:
                // One T10 vendor-id designator (ASCII): vendor + serial.
                let id = Array("Msft    ".utf8) + Array(serial.utf8)
                b = page(0x83, [0x02, 0x01, 0x00, UInt8(id.count)] + id)
            case 0xB0:
                var p = [UInt8](repeating: 0, count: 0x3C)
                p.putBE(UInt32(Self.maximumTransferBlocks), at: 4)  // maximum transfer length
                p.putBE(UInt32(Self.maximumTransferBlocks), at: 8)  // optimal transfer length
                p.putBE(UInt32(0x10_0000), at: 16)  // maximum unmap LBA count
                p.putBE(UInt32(64), at: 20)  // maximum unmap block descriptors
                p.putBE(UInt32(8), at: 24)  // optimal unmap granularity (4 KiB)
                p.putBE(UInt64(0x10_0000), at: 36)  // maximum WRITE SAME length
                b = page(0xB0, p)
            case 0xB1:
                var p = [UInt8](repeating: 0, count: 0x3C)
                p.putBE(UInt16(1), at: 0)  // non-rotating medium
                b = page(0xB1, p)
            case 0xB2:
                var p = [UInt8](repeating: 0, count: 4)
                p[1] = backend.isReadOnly ? 0 : 0xC0  // LBPU | LBPWS
                p[2] = 0x02  // thin provisioned
                b = page(0xB2, p)
            default:
                return .check(.invalidField)
            }
        }
        return .good(data.fill(Array(b.prefix(allocation))))
    }

    private func page(_ code: UInt8, _ body: [UInt8]) -> [UInt8] {
        var b: [UInt8] = [0x00, code, 0, 0]
        b.putBE(UInt16(body.count), at: 2)
        return b + body
    }

    // MARK: MODE SENSE

    private func modeSense(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        let ten = cdb[0] == 0x5A
        guard cdb.count >= (ten ? 10 : 6) else { return .check(.invalidField) }
        let pageCode = cdb[2] & 0x3F
        guard pageCode == 0x08 || pageCode == 0x3F else { return .check(.invalidField) }
        // Caching page: WCE = 1.
        var caching = [UInt8](repeating: 0, count: 20)
        caching[0] = 0x08
        caching[1] = 18
        caching[2] = 0x04
        let wp: UInt8 = backend.isReadOnly ? 0x80 : 0
        var b: [UInt8]
        if ten {
            b = [0, 0, 0, wp, 0, 0, 0, 0] + caching
            b.putBE(UInt16(b.count - 2), at: 0)
            return .good(data.fill(Array(b.prefix(Int(cdb.be(UInt16.self, at: 7))))))
        }
        b = [UInt8(3 + caching.count), 0, wp, 0] + caching
        return .good(data.fill(Array(b.prefix(Int(cdb[4])))))
    }

    // MARK: Data

    private func readWrite(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        let op = cdb[0]
        guard let (lba, blocks) = Self.transfer(cdb) else { return .check(.invalidField) }
        let isWrite = op == 0x0A || op == 0x2A || op == 0xAA || op == 0x8A
        if isWrite && backend.isReadOnly { return .check(.writeProtected) }
        guard lba <= blockCount, blocks <= blockCount - lba else { return .check(.lbaOutOfRange) }
        let bytes = Int(blocks) * Self.blockSize
        guard blocks <= UInt64(Self.maximumTransferBlocks) * 16, bytes <= data.count else { return .check(.invalidField) }
        let offset = lba * UInt64(Self.blockSize)
        do {
            if isWrite {
                try backend.write(offset: offset, from: data.prefix(bytes))
                if op != 0x0A, cdb[1] & 0x08 != 0 { try backend.flush() }  // FUA
            } else {
                try backend.read(offset: offset, into: data.mutablePrefix(bytes))
            }
        } catch {
            return .check(isWrite ? SenseData.writeFailure(error) : .mediumError)
        }
        return .good(bytes)
    }

    private func unmap(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        guard cdb.count >= 10 else { return .check(.invalidField) }
        if backend.isReadOnly { return .check(.writeProtected) }
        let length = Int(cdb.be(UInt16.self, at: 7))
        guard length >= 8, length <= data.count else { return length == 0 ? .good() : .check(.parameterListLength) }
        let list = data.gather(length)
        let descriptors = Int(list.be(UInt16.self, at: 2)) / 16
        guard 8 + descriptors * 16 <= list.count else { return .check(.parameterListLength) }
        for i in 0..<descriptors {
            let lba = list.be(UInt64.self, at: 8 + 16 * i)
            let count = UInt64(list.be(UInt32.self, at: 16 + 16 * i))
            guard lba <= blockCount, count <= blockCount - lba else { return .check(.lbaOutOfRange) }
            if count == 0 { continue }
            do {
                try backend.discard(offset: lba * UInt64(Self.blockSize), length: count * UInt64(Self.blockSize))
            } catch { return .check(SenseData.writeFailure(error)) }
        }
        return .good()
    }

    private func writeSame16(_ cdb: [UInt8], _ data: SCSIData) -> SCSIResult {
        guard cdb.count >= 16 else { return .check(.invalidField) }
        if backend.isReadOnly { return .check(.writeProtected) }
        let lba = cdb.be(UInt64.self, at: 2)
        let blocks = UInt64(cdb.be(UInt32.self, at: 10))
        guard lba <= blockCount, blocks <= blockCount - lba, blocks <= 0x10_0000 else { return .check(.lbaOutOfRange) }
        do {
            if cdb[1] & 0x08 != 0 {
                try backend.discard(offset: lba * UInt64(Self.blockSize), length: blocks * UInt64(Self.blockSize))
            } else {
                guard data.count >= Self.blockSize else { return .check(.invalidField) }
                let block = data.gather(Self.blockSize)
                let backend = self.backend
                let failure = block.withUnsafeBytes { b -> BlockError? in
                    for i in 0..<blocks {
                        do throws(BlockError) { try backend.write(offset: (lba + i) * UInt64(Self.blockSize), from: [b]) } catch { return error }
                    }
                    return nil
                }
                if let failure { return .check(SenseData.writeFailure(failure)) }
            }
        } catch { return .check(SenseData.writeFailure(error)) }
        return .good()
    }
}
