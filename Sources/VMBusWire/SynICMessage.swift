// hv_message (the 256-byte SynIC message) and the layouts of the SIMP and SIEFP pages.

/// Message type values in an `hv_message` header.
public struct HvMessageType: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Slot is free.
    public static let none = HvMessageType(rawValue: 0)
    /// A VMBus channel message posted by the other partition.
    public static let vmbus = HvMessageType(rawValue: 1)
    public static let unmappedGPA = HvMessageType(rawValue: 0x8000_0000)
    public static let gpaIntercept = HvMessageType(rawValue: 0x8000_0001)
    public static let timerExpired = HvMessageType(rawValue: 0x8000_0010)
    public static let invalidVPRegisterValue = HvMessageType(rawValue: 0x8000_0020)
    public static let unrecoverableException = HvMessageType(rawValue: 0x8000_0021)
    public static let unsupportedFeature = HvMessageType(rawValue: 0x8000_0022)
    public static let eventLogBufferComplete = HvMessageType(rawValue: 0x8000_0040)
    public static let x64IOPortIntercept = HvMessageType(rawValue: 0x8001_0000)
    public static let x64MSRIntercept = HvMessageType(rawValue: 0x8001_0001)
    public static let x64CPUIDIntercept = HvMessageType(rawValue: 0x8001_0002)
    public static let x64Halt = HvMessageType(rawValue: 0x8001_0007)
    /// Hypervisor-generated types have bit 31 set.
    public var isHypervisorMessage: Bool { rawValue & 0x8000_0000 != 0 }
}

/// One SynIC message: a 16-byte header and a 240-byte payload.
public struct HvMessage: Equatable, Sendable {
    public static let size = 256
    public static let headerSize = 16
    public static let payloadCapacity = 240
    /// Header offsets.
    public enum Offset {
        public static let messageType = 0
        public static let payloadSize = 4
        public static let messageFlags = 5
        public static let reserved = 6
        public static let sender = 8
        public static let payload = 16
    }
    /// `message_flags` bit 0: the host has more messages queued for this SINT.
    public static let flagMessagePending: UInt8 = 1

    public var messageType: HvMessageType
    public var messagePending: Bool
    public var sender: UInt64
    public var payload: [UInt8]

    public init(messageType: HvMessageType, messagePending: Bool = false, sender: UInt64 = 0, payload: [UInt8]) {
        self.messageType = messageType
        self.messagePending = messagePending
        self.sender = sender
        self.payload = payload
    }

    /// Decodes a 256-byte slot. A payload size over 240 is refused, as Linux does.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        messageType = HvMessageType(rawValue: bytes.le(UInt32.self, at: Offset.messageType))
        let size = Int(bytes[Offset.payloadSize])
        guard size <= Self.payloadCapacity else { throw .oversized(limit: Self.payloadCapacity, got: size) }
        messagePending = bytes[Offset.messageFlags] & Self.flagMessagePending != 0
        sender = bytes.le(UInt64.self, at: Offset.sender)
        payload = Array(bytes[Offset.payload..<(Offset.payload + size)])
    }

    /// Encodes the 256-byte slot image.
    public func encode() throws(WireError) -> [UInt8] {
        guard payload.count <= Self.payloadCapacity else {
            throw .oversized(limit: Self.payloadCapacity, got: payload.count)
        }
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(messageType.rawValue, at: Offset.messageType)
        out[Offset.payloadSize] = UInt8(payload.count)
        out[Offset.messageFlags] = messagePending ? Self.flagMessagePending : 0
        out.putLE(sender, at: Offset.sender)
        out.replaceSubrange(Offset.payload..<(Offset.payload + payload.count), with: payload)
        return out
    }
}

/// Geometry of the SynIC message page (SIMP) and event-flags page (SIEFP).
public enum SynICLayout {
    public static let pageSize = 4096
    public static let sintCount = 16
    /// The SINT VMBus uses for messages and channel events.
    public static let vmbusSINT = 2
    /// Bytes of event flags per SINT (2048 flags).
    public static let eventFlagBytesPerSINT = 256
    public static let eventFlagsPerSINT = 2048
    /// Offset of SINT `n`'s message slot in the SIMP page.
    public static func messageSlotOffset(sint: Int) -> Int { sint * HvMessage.size }
    /// Offset of SINT `n`'s event flags in the SIEFP page.
    public static func eventFlagsOffset(sint: Int) -> Int { sint * eventFlagBytesPerSINT }
}
