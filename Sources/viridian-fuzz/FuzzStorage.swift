// Targets "vstor-wire" and "scsi-disk": vstor packet decoding, and SCSI CDBs executed on a disk
// in memory with guest data buffers split as the input says.

import SyntheticStorage
import VMBusWire

let vstorWireTarget = FuzzTarget(
    name: "vstor-wire",
    summary: "VStorPacket (48/64-byte), SCSIRequest and VStorChannelProperties decoding; what decodes re-encodes to the same value"
) { data in
    StorageWireFuzz.run([UInt8](data))
}

let scsiDiskTarget = FuzzTarget(
    name: "scsi-disk",
    summary: "SCSIDisk.execute/readIfCached on CDBs from the input over an in-memory disk (read-write, read-only, smaller than a block), injected I/O errors"
) { data in
    var r = FuzzReader(data)
    SCSIDiskFuzz.run(&r)
}

enum StorageWireFuzz {
    static func run(_ bytes: [UInt8]) {
        for minimum in [VStorPacket.legacySize, VStorPacket.size] {
            guard let p = try? VStorPacket(decoding: bytes, minimumSize: minimum) else { continue }
            fuzzCheck(p.body.count == SCSIRequest.size, "vstor body of \(p.body.count) bytes")
            _ = p.op
            let full = p.encode()
            fuzzCheck(full.count == VStorPacket.size, "vstor packet encoded to \(full.count) bytes")
            fuzzCheck((try? VStorPacket(decoding: full)) == p, "vstor packet does not survive encode and decode")
            fuzzCheck(p.encode(size: VStorPacket.legacySize).count == VStorPacket.legacySize, "legacy vstor packet size")
            request(p.body)
            if let properties = try? VStorChannelProperties(decoding: p.body) {
                fuzzCheck((try? VStorChannelProperties(decoding: properties.encoded)) == properties, "channel properties do not survive")
            }
        }
        request(bytes)
    }

    static func request(_ bytes: [UInt8]) {
        guard let srb = try? SCSIRequest(decoding: bytes) else { return }
        fuzzCheck(srb.cdb.count == Int(srb.cdbLength) && srb.cdbLength <= 16, "CDB of \(srb.cdb.count) bytes")
        let encoded = srb.encoded
        fuzzCheck(encoded.count == SCSIRequest.size, "SRB encoded to \(encoded.count) bytes")
        if bytes.count >= SCSIRequest.size {
            fuzzCheck((try? SCSIRequest(decoding: encoded)) == srb, "SRB does not survive encode and decode")
        }
        _ = SCSIDataDirection(rawValue: srb.dataIn)
    }
}

enum SCSIDiskFuzz {
    static let readWrite = FuzzBlockBackend(size: 1 << 20, readOnly: false)
    static let readOnly = FuzzBlockBackend(size: 64 << 10, readOnly: true)
    static let tiny = FuzzBlockBackend(size: 300, readOnly: false)
    /// The guest's data buffer.
    static let buffer = FuzzPages(bytes: 128 << 10)
    static let opcodes: [UInt8] = [
        0x00, 0x03, 0x12, 0x25, 0x9E, 0x1A, 0x5A, 0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x35, 0x91, 0x42, 0x93,
        0x1B, 0x1E, 0xA0, 0x4D, 0xFF,
    ]

    static func run(_ r: inout FuzzReader) {
        for b in [readWrite, readOnly, tiny] { b.reset() }
        buffer.zero()
        let setup = r.u8()
        let backend = [readWrite, readOnly, tiny, readWrite][Int(setup & 3)]
        backend.failReads = setup & 0x04 != 0
        backend.failWrites = setup & 0x08 != 0
        backend.failFlush = setup & 0x10 != 0
        backend.cached = setup & 0x20 != 0
        let serialLength = Int(r.u8() % 24)
        let disk = SCSIDisk(backend: backend, serial: String(decoding: r.take(serialLength), as: UTF8.self))
        fuzzConsume(disk.blockCount)
        var steps = 0
        while steps < 32 && !r.isAtEnd {
            steps += 1
            let cdb = command(&r)
            let data = segments(&r)
            let result = disk.execute(cdb: cdb, data: data)
            check(result, data)
            if backend.cached, let cached = disk.readIfCached(cdb: cdb, data: data) { check(cached, data) }
        }
    }

    /// A CDB: its length and bytes from the input, the opcode usually one the disk knows.
    static func command(_ r: inout FuzzReader) -> [UInt8] {
        let header = r.u8()
        let length = Int(header % 33)
        var cdb = r.padded(length)
        if !cdb.isEmpty && header & 0x80 == 0 { cdb[0] = opcodes[Int(r.u8()) % opcodes.count] }
        return cdb
    }

    /// The data buffer: a length, contents (parameter lists, data to write) and up to four segments.
    static func segments(_ r: inout FuzzReader) -> SCSIData {
        let sel = r.u8()
        let length = min(Int(r.u16()) << Int(sel & 3), buffer.count)
        if sel & 0x04 != 0 {
            let contents = r.blob(limit: 1024)
            if !contents.isEmpty { contents.withUnsafeBytes { buffer.base.copyMemory(from: $0.baseAddress!, byteCount: min(contents.count, length)) } }
        }
        let pieces = 1 + Int((sel >> 3) & 3)
        var cuts: [Int] = []
        for _ in 1..<pieces { cuts.append(length == 0 ? 0 : Int(r.u16()) % (length + 1)) }
        cuts.sort()
        var out: [UnsafeMutableRawBufferPointer] = []
        var at = 0
        for cut in cuts + [length] {
            out.append(UnsafeMutableRawBufferPointer(start: buffer.base + at, count: cut - at))
            at = cut
        }
        return SCSIData(segments: out)
    }

    static func check(_ result: SCSIResult, _ data: SCSIData) {
        fuzzCheck(result.transferred >= 0 && result.transferred <= data.count, "\(result.transferred) bytes moved for a \(data.count)-byte buffer")
        fuzzCheck(result.status == 0 || result.status == 2, "SAM status \(result.status)")
        fuzzCheck((result.status == 2) == (result.sense != nil), "sense data and status disagree")
        if let sense = result.sense { fuzzCheck(sense.bytes.count == 18, "sense of \(sense.bytes.count) bytes") }
    }
}
