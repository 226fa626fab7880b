// Per-channel messages: OPENCHANNEL, OPENCHANNEL_RESULT, CLOSECHANNEL, MODIFYCHANNEL and its response.

/// OPENCHANNEL (5): open a channel over a ring GPADL. 148 bytes; 156 in the 6.0 form.
public struct OpenChannel: ChannelMessageBody {
    public static let messageType = ChannelMessageType.openChannel
    public static let minimumSize = 148
    public static let extendedSize = 156
    public static let userDataSize = 120

    public var childRelid: UInt32
    public var openID: UInt32
    public var ringBufferGPADL: UInt32
    public var targetVP: UInt32
    /// Offset of the host→guest ring inside the GPADL, in 4 KiB pages.
    public var downstreamRingBufferPageOffset: UInt32
    /// 120 bytes handed to the device.
    public var userData: [UInt8]
    /// 6.0 form only: guest-chosen connection id, event flag, flags.
    public var extended: Extended?

    /// The 8 extra bytes of the 6.0 form.
    public struct Extended: Equatable, Sendable {
        public var connectionID: UInt32
        public var eventFlag: UInt16
        public var flags: UInt16
        public init(connectionID: UInt32, eventFlag: UInt16, flags: UInt16) {
            self.connectionID = connectionID
            self.eventFlag = eventFlag
            self.flags = flags
        }
    }

    public init(childRelid: UInt32, openID: UInt32, ringBufferGPADL: UInt32, targetVP: UInt32,
                downstreamRingBufferPageOffset: UInt32, userData: [UInt8] = [], extended: Extended? = nil) {
        self.childRelid = childRelid
        self.openID = openID
        self.ringBufferGPADL = ringBufferGPADL
        self.targetVP = targetVP
        self.downstreamRingBufferPageOffset = downstreamRingBufferPageOffset
        var ud = Array(userData.prefix(Self.userDataSize))
        ud += [UInt8](repeating: 0, count: Self.userDataSize - ud.count)
        self.userData = ud
        self.extended = extended
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        childRelid = b.le(at: 8)
        openID = b.le(at: 12)
        ringBufferGPADL = b.le(at: 16)
        targetVP = b.le(at: 20)
        downstreamRingBufferPageOffset = b.le(at: 24)
        userData = Array(b[28..<148])
        extended = b.count >= Self.extendedSize
            ? Extended(connectionID: b.le(at: 148), eventFlag: b.le(at: 152), flags: b.le(at: 154)) : nil
    }

    public var encodedSize: Int { extended == nil ? Self.minimumSize : Self.extendedSize }

    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(openID, at: 12)
        b.putLE(ringBufferGPADL, at: 16)
        b.putLE(targetVP, at: 20)
        b.putLE(downstreamRingBufferPageOffset, at: 24)
        for (i, byte) in userData.prefix(Self.userDataSize).enumerated() { b[28 + i] = byte }
        if let extended {
            b.putLE(extended.connectionID, at: 148)
            b.putLE(extended.eventFlag, at: 152)
            b.putLE(extended.flags, at: 154)
        }
    }
}

/// OPENCHANNEL_RESULT (6): 0 = opened, anything else = refused. 20 bytes.
public struct OpenChannelResult: ChannelMessageBody {
    public static let messageType = ChannelMessageType.openChannelResult
    public static let minimumSize = 20
    public var childRelid: UInt32
    public var openID: UInt32
    public var status: UInt32

    public init(childRelid: UInt32, openID: UInt32, status: UInt32) {
        self.childRelid = childRelid
        self.openID = openID
        self.status = status
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(childRelid: b.le(at: 8), openID: b.le(at: 12), status: b.le(at: 16))
    }

    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(openID, at: 12)
        b.putLE(status, at: 16)
    }
}

/// CLOSECHANNEL (7): the guest closes a channel. There is no reply.
public struct CloseChannel: RelidOnlyMessage {
    public static let messageType = ChannelMessageType.closeChannel
    public var childRelid: UInt32
    public init(childRelid: UInt32) { self.childRelid = childRelid }
}

/// MODIFYCHANNEL (22): move host→guest interrupts of a channel to another VP. 16 bytes.
public struct ModifyChannel: ChannelMessageBody {
    public static let messageType = ChannelMessageType.modifyChannel
    public static let minimumSize = 16
    public var childRelid: UInt32
    public var targetVP: UInt32
    public init(childRelid: UInt32, targetVP: UInt32) {
        self.childRelid = childRelid
        self.targetVP = targetVP
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(childRelid: b.le(at: 8), targetVP: b.le(at: 12))
    }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(targetVP, at: 12)
    }
}

/// MODIFYCHANNEL_RESPONSE (24, from 5.3): the outcome of a MODIFYCHANNEL. 16 bytes.
public struct ModifyChannelResponse: ChannelMessageBody {
    public static let messageType = ChannelMessageType.modifyChannelResponse
    public static let minimumSize = 16
    public var childRelid: UInt32
    public var status: UInt32
    public init(childRelid: UInt32, status: UInt32) {
        self.childRelid = childRelid
        self.status = status
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(childRelid: b.le(at: 8), status: b.le(at: 12))
    }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(childRelid, at: 8)
        b.putLE(status, at: 12)
    }
}
