// GPADL messages: GPADL_HEADER and GPADL_BODY (built across several messages), CREATED, TEARDOWN, TORNDOWN.

/// GPADL_HEADER (8): starts a GPADL. 20 bytes plus range data as packed u64 words.
public struct GpadlHeader: ChannelMessageBody {
    public static let messageType = ChannelMessageType.gpadlHeader
    public static let minimumSize = 20
    /// u64 words of range data that fit in one header (range header + 26 PFNs).
    public static let maximumWords = (HvMessage.payloadCapacity - minimumSize) / 8

    public var childRelid: UInt32
    public var gpadl: UInt32
    /// Total bytes of range data across the header and all bodies.
    public var rangeBufferLength: UInt16
    public var rangeCount: UInt16
    /// The range data carried in this message, as u64 words.
    public var words: [UInt64]

    public init(childRelid: UInt32, gpadl: UInt32, rangeBufferLength: UInt16, rangeCount: UInt16, words: [UInt64]) {
        self.childRelid = childRelid
        self.gpadl = gpadl
        self.rangeBufferLength = rangeBufferLength
        self.rangeCount = rangeCount
        self.words = words
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        let tail = b.count - Self.minimumSize
        guard tail % 8 == 0 else { throw .misalignedLength(tail) }
        childRelid = b.le(at: 8)
        gpadl = b.le(at: 12)
        rangeBufferLength = b.le(at: 16)
        rangeCount = b.le(at: 18)
        words = (0..<(tail / 8)).map { b.le(UInt64.self, at: Self.minimumSize + 8 * $0) }
    }

    public var encodedSize: Int { Self.minimumSize + 8 * words.count }

    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(gpadl, at: 12)
        b.putLE(rangeBufferLength, at: 16)
        b.putLE(rangeCount, at: 18)
        for (i, w) in words.enumerated() { b.putLE(w, at: Self.minimumSize + 8 * i) }
    }
}

/// GPADL_BODY (9): more range data for a GPADL being built. 16 bytes plus u64 words.
public struct GpadlBody: ChannelMessageBody {
    public static let messageType = ChannelMessageType.gpadlBody
    public static let minimumSize = 16
    /// u64 words per body message (28).
    public static let maximumWords = (HvMessage.payloadCapacity - minimumSize) / 8

    /// Linux leaves it 0; hosts ignore it.
    public var messageNumber: UInt32
    public var gpadl: UInt32
    public var words: [UInt64]

    public init(messageNumber: UInt32 = 0, gpadl: UInt32, words: [UInt64]) {
        self.messageNumber = messageNumber
        self.gpadl = gpadl
        self.words = words
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        let tail = b.count - Self.minimumSize
        guard tail % 8 == 0 else { throw .misalignedLength(tail) }
        messageNumber = b.le(at: 8)
        gpadl = b.le(at: 12)
        words = (0..<(tail / 8)).map { b.le(UInt64.self, at: Self.minimumSize + 8 * $0) }
    }

    public var encodedSize: Int { Self.minimumSize + 8 * words.count }

    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(messageNumber, at: 8)
        b.putLE(gpadl, at: 12)
        for (i, w) in words.enumerated() { b.putLE(w, at: Self.minimumSize + 8 * i) }
    }
}

/// GPADL_CREATED (10): the host's answer to a complete GPADL. 20 bytes.
public struct GpadlCreated: ChannelMessageBody {
    public static let messageType = ChannelMessageType.gpadlCreated
    public static let minimumSize = 20
    /// STATUS_UNSUCCESSFUL, the failure status OpenVMM sends.
    public static let statusUnsuccessful: UInt32 = 0x8000_FFFF
    public var childRelid: UInt32
    public var gpadl: UInt32
    public var creationStatus: UInt32
    public init(childRelid: UInt32, gpadl: UInt32, creationStatus: UInt32) {
        self.childRelid = childRelid
        self.gpadl = gpadl
        self.creationStatus = creationStatus
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(childRelid: b.le(at: 8), gpadl: b.le(at: 12), creationStatus: b.le(at: 16))
    }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(gpadl, at: 12)
        b.putLE(creationStatus, at: 16)
    }
}

/// GPADL_TEARDOWN (11): the guest withdraws a GPADL. 16 bytes.
public struct GpadlTeardown: ChannelMessageBody {
    public static let messageType = ChannelMessageType.gpadlTeardown
    public static let minimumSize = 16
    public var childRelid: UInt32
    public var gpadl: UInt32
    public init(childRelid: UInt32, gpadl: UInt32) {
        self.childRelid = childRelid
        self.gpadl = gpadl
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(childRelid: b.le(at: 8), gpadl: b.le(at: 12))
    }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(gpadl, at: 12)
    }
}

/// GPADL_TORNDOWN (12): the host no longer touches the GPADL's pages. 12 bytes.
public struct GpadlTorndown: ChannelMessageBody {
    public static let messageType = ChannelMessageType.gpadlTorndown
    public static let minimumSize = 12
    public var gpadl: UInt32
    public init(gpadl: UInt32) { self.gpadl = gpadl }
    public init(decodingChecked b: [UInt8]) throws(WireError) { self.init(gpadl: b.le(at: 8)) }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) { b.putLE(gpadl, at: 8) }
}
