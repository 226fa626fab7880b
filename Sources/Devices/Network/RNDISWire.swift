// RNDIS wire formats: message header, control messages, the PACKET header, OIDs and status codes.

import VMBusWire

/// `ndis_msg_type` of an RNDIS message.
public enum RNDISMessageType {
    public static let packet: UInt32 = 1
    public static let initialize: UInt32 = 2
    public static let halt: UInt32 = 3
    public static let query: UInt32 = 4
    public static let set: UInt32 = 5
    public static let reset: UInt32 = 6
    public static let indicateStatus: UInt32 = 7
    public static let keepalive: UInt32 = 8
    public static let setEx: UInt32 = 9
    public static let completion: UInt32 = 0x8000_0000
    public static let initializeComplete: UInt32 = 0x8000_0002
    public static let queryComplete: UInt32 = 0x8000_0004
    public static let setComplete: UInt32 = 0x8000_0005
    public static let resetComplete: UInt32 = 0x8000_0006
    public static let keepaliveComplete: UInt32 = 0x8000_0008
}

/// RNDIS / NDIS status codes.
public enum RNDISStatus {
    public static let success: UInt32 = 0
    public static let bufferOverflow: UInt32 = 0x8000_0005
    public static let failure: UInt32 = 0xC000_0001
    public static let notSupported: UInt32 = 0xC000_00BB
    public static let invalidData: UInt32 = 0xC001_0015
    public static let invalidLength: UInt32 = 0xC001_0014
    public static let mediaConnect: UInt32 = 0x4001_000B
    public static let mediaDisconnect: UInt32 = 0x4001_000C
    public static let linkSpeedChange: UInt32 = 0x4001_0013
    public static let networkChange: UInt32 = 0x4001_0018
}

/// The OIDs netvsc queries and sets.
public enum OID {
    public static let maximumFrameSize: UInt32 = 0x0001_0106
    public static let linkSpeed: UInt32 = 0x0001_0107
    public static let currentPacketFilter: UInt32 = 0x0001_010E
    public static let mediaConnectStatus: UInt32 = 0x0001_0114
    public static let receiveScaleCapabilities: UInt32 = 0x0001_0203
    public static let receiveScaleParameters: UInt32 = 0x0001_0204
    public static let friendlyName: UInt32 = 0x0002_0216
    public static let rndisConfigParameter: UInt32 = 0x0001_021B
    public static let permanentAddress: UInt32 = 0x0101_0101
    public static let currentAddress: UInt32 = 0x0101_0102
    public static let offloadParameters: UInt32 = 0xFC01_020C
    public static let offloadHardwareCapabilities: UInt32 = 0xFC01_020D
}

/// Offsets of RNDIS messages. Every message starts `{u32 type, u32 length}`; the body follows at 8
/// and every "offset" field inside a body counts from the body's start.
public enum RNDIS {
    public static let headerSize = 8
    /// Body sizes of the fixed parts.
    public static let initializeBody = 16, initializeCompleteBody = 44
    public static let queryBody = 20, queryCompleteBody = 16, setCompleteBody = 8
    public static let indicateStatusBody = 12, packetBody = 36, haltBody = 4, keepaliveBody = 4
    public static let resetCompleteBody = 8, keepaliveCompleteBody = 8
    /// Largest control message either side accepts (Linux's max_xfer_size is 0x4000).
    public static let maximumControlMessage = 0x4000

    /// A message whose body is `body` (request id first for control messages).
    public static func message(type: UInt32, body: [UInt8]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: headerSize)
        m.putLE(type, at: 0)
        m.putLE(UInt32(headerSize + body.count), at: 4)
        return m + body
    }

    /// A body of `count` u32 fields.
    public static func words(_ values: [UInt32]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 4 * values.count)
        for (i, v) in values.enumerated() { b.putLE(v, at: 4 * i) }
        return b
    }

    /// INITIALIZE as netvsc sends it.
    public static func initialize(requestID: UInt32, maximumTransfer: UInt32 = 0x4000) -> [UInt8] {
        message(type: RNDISMessageType.initialize, body: words([requestID, 1, 0, maximumTransfer]))
    }

    /// QUERY or SET of `oid` with an information buffer at body offset 20.
    public static func request(type: UInt32, requestID: UInt32, oid: UInt32, info: [UInt8] = []) -> [UInt8] {
        message(type: type, body: words([requestID, oid, UInt32(info.count), UInt32(queryBody), 0]) + info)
    }

    /// INDICATE_STATUS with an optional status buffer.
    public static func indicateStatus(_ status: UInt32, buffer: [UInt8] = []) -> [UInt8] {
        message(type: RNDISMessageType.indicateStatus,
                body: words([status, UInt32(buffer.count), buffer.isEmpty ? 0 : UInt32(indicateStatusBody)]) + buffer)
    }
}

/// A parsed RNDIS control message (everything but PACKET): its type and body, validated against
/// its own length field.
public struct RNDISControlMessage: Equatable, Sendable {
    public var type: UInt32
    /// The body (after the 8-byte header), exactly `length - 8` bytes.
    public var body: [UInt8]

    public init(type: UInt32, body: [UInt8]) {
        self.type = type
        self.body = body
    }

    /// Parses one message from the start of `raw`; `raw` may hold more after it.
    public init(decoding raw: [UInt8]) throws(WireError) {
        guard raw.count >= RNDIS.headerSize else { throw .truncated(needed: RNDIS.headerSize, got: raw.count) }
        let length = Int(raw.le(UInt32.self, at: 4))
        guard length >= RNDIS.headerSize else { throw .invalidField("msg_len", UInt64(length)) }
        guard length <= raw.count else { throw .truncated(needed: length, got: raw.count) }
        type = raw.le(UInt32.self, at: 0)
        body = Array(raw[RNDIS.headerSize..<length])
    }

    /// The u32 at `offset` in the body, or 0 when the body is shorter.
    public func u32(_ offset: Int) -> UInt32 { offset + 4 <= body.count ? body.le(UInt32.self, at: offset) : 0 }
    public var requestID: UInt32 { u32(0) }

    /// The information buffer of a QUERY/SET (or the reply buffer of QUERY_C) at `lengthField` /
    /// `offsetField`; nil when it does not lie inside the body.
    public func buffer(lengthAt lengthField: Int, offsetAt offsetField: Int) -> [UInt8]? {
        guard offsetField + 4 <= body.count, lengthField + 4 <= body.count else { return nil }
        let length = Int(u32(lengthField)), offset = Int(u32(offsetField))
        if length == 0 { return [] }
        guard offset >= 0, offset <= body.count, length <= body.count - offset else { return nil }
        return Array(body[offset..<(offset + length)])
    }
}

/// The 36-byte body of an RNDIS PACKET message: where the frame and the per-packet info lie.
public struct RNDISPacketHeader: Equatable, Sendable {
    public var dataOffset: UInt32
    public var dataLength: UInt32
    public var perPacketInfoOffset: UInt32
    public var perPacketInfoLength: UInt32

    public init(dataOffset: UInt32, dataLength: UInt32, perPacketInfoOffset: UInt32, perPacketInfoLength: UInt32) {
        self.dataOffset = dataOffset
        self.dataLength = dataLength
        self.perPacketInfoOffset = perPacketInfoOffset
        self.perPacketInfoLength = perPacketInfoLength
    }

    /// Reads the body at `p` (36 bytes, already bounds-checked by the caller).
    public init(body p: UnsafeRawPointer) {
        dataOffset = p.le(at: 0)
        dataLength = p.le(at: 4)
        perPacketInfoOffset = p.le(at: 20)
        perPacketInfoLength = p.le(at: 24)
    }

    /// Writes a whole PACKET message header (8 + 36 bytes) at `p`; the message is
    /// `44 + ppiLength + dataLength` bytes with the PPIs right after the header.
    public static func store(to p: UnsafeMutableRawPointer, ppiLength: Int, dataLength: Int) {
        p.initializeMemory(as: UInt8.self, repeating: 0, count: RNDIS.headerSize + RNDIS.packetBody)
        p.putLE(RNDISMessageType.packet, at: 0)
        p.putLE(UInt32(RNDIS.headerSize + RNDIS.packetBody + ppiLength + dataLength), at: 4)
        p.putLE(UInt32(RNDIS.packetBody + ppiLength), at: 8)
        p.putLE(UInt32(dataLength), at: 12)
        if ppiLength > 0 {
            p.putLE(UInt32(RNDIS.packetBody), at: 28)
            p.putLE(UInt32(ppiLength), at: 32)
        }
    }
}
