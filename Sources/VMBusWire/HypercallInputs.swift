// Input blocks of HvPostMessage (256 bytes) and HvSignalEvent (8 bytes).

/// The 24-bit connection id field: bits 31:24 are reserved.
@inlinable
func connectionID(_ raw: UInt32, field: String) throws(WireError) -> UInt32 {
    guard raw & 0xFF00_0000 == 0 else { throw .reservedNonZero(field) }
    return raw
}

/// HvPostMessage's input block: connection id, message type, and up to 240 payload bytes.
public struct PostMessageInput: Equatable, Sendable {
    public static let size = 256
    public static let payloadCapacity = 240
    /// Message type Linux uses for every VMBus channel message.
    public static let vmbusMessageType: UInt32 = 1

    public var connectionID: UInt32
    public var messageType: UInt32
    public var payload: [UInt8]

    public init(connectionID: UInt32, messageType: UInt32 = PostMessageInput.vmbusMessageType, payload: [UInt8]) {
        self.connectionID = connectionID
        self.messageType = messageType
        self.payload = payload
    }

    /// Decodes the block at a guest address. `bytes` is the whole 256-byte block.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        connectionID = try VMBusWire.connectionID(bytes.le(UInt32.self, at: 0), field: "connection_id")
        guard bytes.le(UInt32.self, at: 4) == 0 else { throw .reservedNonZero("reserved") }
        messageType = bytes.le(UInt32.self, at: 8)
        let size = Int(bytes.le(UInt32.self, at: 12))
        guard size <= Self.payloadCapacity else { throw .oversized(limit: Self.payloadCapacity, got: size) }
        payload = Array(bytes[16..<(16 + size)])
    }

    /// Encodes the 256-byte block. Throws if the payload does not fit.
    public func encode() throws(WireError) -> [UInt8] {
        guard payload.count <= Self.payloadCapacity else {
            throw .oversized(limit: Self.payloadCapacity, got: payload.count)
        }
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(connectionID, at: 0)
        out.putLE(messageType, at: 8)
        out.putLE(UInt32(payload.count), at: 12)
        out.replaceSubrange(16..<(16 + payload.count), with: payload)
        return out
    }
}

/// HvSignalEvent's input: a connection id and an event flag number.
public struct SignalEventInput: Equatable, Sendable {
    public static let size = 8
    public var connectionID: UInt32
    public var flagNumber: UInt16

    public init(connectionID: UInt32, flagNumber: UInt16 = 0) {
        self.connectionID = connectionID
        self.flagNumber = flagNumber
    }

    /// Decodes the fast-call form: the 8 bytes as one u64 in RDX.
    public init(fastInput: UInt64) throws(WireError) {
        connectionID = try VMBusWire.connectionID(UInt32(truncatingIfNeeded: fastInput), field: "connection_id")
        flagNumber = UInt16(truncatingIfNeeded: fastInput >> 32)
        guard fastInput >> 48 == 0 else { throw .reservedNonZero("reserved") }
    }

    /// Decodes the memory form (old Linux passed a pointer).
    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        try self.init(fastInput: bytes.le(UInt64.self, at: 0))
    }

    /// The u64 passed in RDX for the fast call.
    public var fastInput: UInt64 { UInt64(connectionID) | UInt64(flagNumber) << 32 }
}
