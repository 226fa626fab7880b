// NVSP wire formats: the 40-byte nvsp_message, its versions, types, statuses and field offsets.

import VMBusWire

/// NVSP protocol versions as netvsc negotiates them (INIT with min = max = one of these).
public enum NVSPVersion {
    public static let v1: UInt32 = 0x0000_0002
    public static let v2: UInt32 = 0x0003_0002
    public static let v4: UInt32 = 0x0004_0000
    public static let v5: UInt32 = 0x0005_0000
    public static let v6: UInt32 = 0x0006_0000
    public static let v61: UInt32 = 0x0006_0001
    /// Linux's order of trial.
    public static let linuxPreference: [UInt32] = [v61, v6, v5, v4, v2, v1]
}

/// `nvsp_message.hdr.msg_type`.
public enum NVSPMessageType: UInt32, Sendable {
    case initialize = 1, initializeComplete = 2
    case sendNDISVersion = 100, sendReceiveBuffer = 101, sendReceiveBufferComplete = 102, revokeReceiveBuffer = 103
    case sendSendBuffer = 104, sendSendBufferComplete = 105, revokeSendBuffer = 106
    case sendRNDISPacket = 107, sendRNDISPacketComplete = 108
    case sendNDISConfig = 125
    case sendVFAssociation = 128, switchDataPath = 129
    case subChannel = 133, sendIndirectionTable = 134
}

/// NVSP status values.
public enum NVSPStatus {
    public static let none: UInt32 = 0
    public static let success: UInt32 = 1
    public static let failure: UInt32 = 2
    public static let protocolTooNew: UInt32 = 3
    public static let protocolTooOld: UInt32 = 4
    public static let invalidRNDISPacket: UInt32 = 5
    public static let busy: UInt32 = 6
    public static let protocolUnsupported: UInt32 = 7
}

/// One NVSP message: a u32 type followed by the type's fields. Linux always sends (and a host
/// should answer with) the full 40-byte union; decoding accepts any length that covers the type's
/// own fields and reads missing trailing bytes as zero.
public struct NVSPMessage: Equatable, Sendable {
    /// `sizeof(struct nvsp_message)`.
    public static let size = 40
    /// Bytes each type needs, header included (what current Linux checks).
    public static func minimumSize(of type: NVSPMessageType) -> Int {
        switch type {
        case .initialize: 12
        case .initializeComplete: 16
        case .sendNDISVersion: 12
        case .sendReceiveBuffer, .sendSendBuffer: 10
        case .sendReceiveBufferComplete: 28
        case .revokeReceiveBuffer, .revokeSendBuffer: 6
        case .sendSendBufferComplete: 12
        case .sendRNDISPacket: 16
        case .sendRNDISPacketComplete: 8
        case .sendNDISConfig: 20
        case .sendVFAssociation: 12
        case .switchDataPath: 8
        case .subChannel: 12
        case .sendIndirectionTable: 12
        }
    }

    /// The 40 bytes (type at offset 0).
    public var bytes: [UInt8]

    public init(_ type: NVSPMessageType) {
        bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.putLE(type.rawValue, at: 0)
    }

    /// Decodes `raw` (the packet payload). Throws for an unknown type or a short message.
    public init(decoding raw: UnsafeRawBufferPointer) throws(WireError) {
        guard raw.count >= 4 else { throw .truncated(needed: 4, got: raw.count) }
        let code = raw.le(UInt32.self, at: 0)
        guard let type = NVSPMessageType(rawValue: code) else { throw .unknownMessageType(code) }
        let needed = Self.minimumSize(of: type)
        guard raw.count >= needed else { throw .truncated(needed: needed, got: raw.count) }
        bytes = [UInt8](repeating: 0, count: Self.size)
        let n = min(raw.count, Self.size)
        bytes.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: raw.baseAddress!, byteCount: n) }
    }

    public init(decoding raw: [UInt8]) throws(WireError) {
        let result = raw.withUnsafeBytes { r in Result { () throws(WireError) -> NVSPMessage in try NVSPMessage(decoding: r) } }
        self = try result.get()
    }

    public var type: NVSPMessageType { NVSPMessageType(rawValue: bytes.le(UInt32.self, at: 0))! }

    /// The u32 field at `offset` (4, 8, 12 …).
    public func u32(_ offset: Int) -> UInt32 { bytes.le(UInt32.self, at: offset) }
    public func u16(_ offset: Int) -> UInt16 { bytes.le(UInt16.self, at: offset) }
    public func u64(_ offset: Int) -> UInt64 { bytes.le(UInt64.self, at: offset) }
    public mutating func set(_ offset: Int, _ value: UInt32) { bytes.putLE(value, at: offset) }
    public mutating func set16(_ offset: Int, _ value: UInt16) { bytes.putLE(value, at: offset) }
    public mutating func set64(_ offset: Int, _ value: UInt64) { bytes.putLE(value, at: offset) }
}

/// Field offsets within the NVSP message, per type (H.3).
public enum NVSPField {
    // INIT
    public static let minVersion = 4, maxVersion = 8
    // INIT_COMPLETE
    public static let negotiatedVersion = 4, maxMDLChainLength = 8, initStatus = 12
    // SEND_NDIS_VER
    public static let ndisMajor = 4, ndisMinor = 8
    // SEND_RECV_BUF / SEND_SEND_BUF: gpadl handle, u16 id; REVOKE_*: u16 id at 4
    public static let gpadlHandle = 4, bufferID = 8, revokeID = 4
    // SEND_RECV_BUF_COMPLETE: status, num_sections, then {offset, sub_alloc_size, num_sub_allocs, end_offset}
    public static let status = 4, sectionCount = 8
    public static let sectionOffset = 12, subAllocationSize = 16, subAllocationCount = 20, sectionEnd = 24
    // SEND_SEND_BUF_COMPLETE
    public static let sendSectionSize = 8
    // SEND_RNDIS_PKT
    public static let channelType = 4, sendSectionIndex = 8, sendSectionSize2 = 12
    // SEND_NDIS_CONFIG
    public static let configMTU = 4, configCapabilities = 12
    // SUBCHANNEL request: op, count; completion: status, count
    public static let subChannelOperation = 4, subChannelCount = 8
    // SEND_INDIRECTION_TABLE
    public static let tableCount = 4, tableOffset = 8
}

extension NVSPMessage {
    /// No send-buffer section: the RNDIS message came by GPA-direct pages.
    public static let noSection: UInt32 = 0xFFFF_FFFF
    /// The receive buffer's transfer page set id Linux uses.
    public static let receiveBufferID: UInt16 = 0xCAFE
    /// The send buffer's id.
    public static let sendBufferID: UInt16 = 0
    /// Hyper-V's send-buffer section size.
    public static let sendSectionSize: UInt32 = 6144

    /// SEND_RNDIS_PKT: `control` = channel type 1 (RNDIS control), else 0 (data).
    public static func rndisPacket(control: Bool, section: UInt32 = noSection, size: UInt32 = 0) -> NVSPMessage {
        var m = NVSPMessage(.sendRNDISPacket)
        m.set(NVSPField.channelType, control ? 1 : 0)
        m.set(NVSPField.sendSectionIndex, section)
        m.set(NVSPField.sendSectionSize2, size)
        return m
    }

    /// SEND_RNDIS_PKT_COMPLETE with `status`.
    public static func rndisPacketComplete(_ status: UInt32) -> NVSPMessage {
        var m = NVSPMessage(.sendRNDISPacketComplete)
        m.set(NVSPField.status, status)
        return m
    }
}
