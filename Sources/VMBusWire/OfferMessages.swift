// Offer lifecycle messages: OFFERCHANNEL (196 bytes), RESCIND_CHANNELOFFER, RELID_RELEASED.

/// OFFERCHANNEL (1): the host offers one channel (a device or a sub-channel). Always 196 bytes.
public struct OfferChannel: ChannelMessageBody {
    public static let messageType = ChannelMessageType.offerChannel
    public static let minimumSize = 196
    public static let userDefinedSize = 120
    /// Highest relid a Linux guest accepts (its table has 2048 entries, 0 reserved).
    public static let maximumRelid: UInt32 = 2047
    /// Field offsets from the start of the message.
    public enum Offset {
        public static let interfaceType = 8, interfaceInstance = 24, reserved1 = 40, reserved2 = 48
        public static let channelFlags = 56, mmioMegabytes = 58, userDefined = 60, subChannelIndex = 180
        public static let reserved3 = 182, childRelid = 184, monitorID = 188, monitorAllocated = 189
        public static let isDedicatedInterrupt = 190, connectionID = 192
    }

    /// `chn_flags` bits.
    public struct Flags: OptionSet, Hashable, Sendable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let enumerateDeviceInterface = Flags(rawValue: 0x0001)
        public static let serverSupportsTransferPages = Flags(rawValue: 0x0002)
        public static let serverSupportsGPADLs = Flags(rawValue: 0x0004)
        public static let namedPipeMode = Flags(rawValue: 0x0010)
        public static let loopbackOffer = Flags(rawValue: 0x0100)
        public static let parentOffer = Flags(rawValue: 0x0200)
        public static let requestMonitoredNotification = Flags(rawValue: 0x0400)
        public static let tlnpiProviderOffer = Flags(rawValue: 0x2000)
    }

    public var interfaceType: GUID
    public var interfaceInstance: GUID
    public var flags: Flags
    public var mmioMegabytes: UInt16
    /// 120 device-defined bytes.
    public var userDefined: [UInt8]
    public var subChannelIndex: UInt16
    public var mmioMegabytesOptional: UInt16
    public var childRelid: UInt32
    /// MNF id; 0xFF when the channel has none.
    public var monitorID: UInt8
    public var monitorAllocated: Bool
    public var isDedicatedInterrupt: Bool
    public var connectionID: UInt32

    public init(interfaceType: GUID, interfaceInstance: GUID, flags: Flags = [], mmioMegabytes: UInt16 = 0,
                userDefined: [UInt8] = [], subChannelIndex: UInt16 = 0, mmioMegabytesOptional: UInt16 = 0,
                childRelid: UInt32, monitorID: UInt8 = 0xFF, monitorAllocated: Bool = false,
                isDedicatedInterrupt: Bool = true, connectionID: UInt32) {
        self.interfaceType = interfaceType
        self.interfaceInstance = interfaceInstance
        self.flags = flags
        self.mmioMegabytes = mmioMegabytes
        var ud = Array(userDefined.prefix(Self.userDefinedSize))
        ud += [UInt8](repeating: 0, count: Self.userDefinedSize - ud.count)
        self.userDefined = ud
        self.subChannelIndex = subChannelIndex
        self.mmioMegabytesOptional = mmioMegabytesOptional
        self.childRelid = childRelid
        self.monitorID = monitorID
        self.monitorAllocated = monitorAllocated
        self.isDedicatedInterrupt = isDedicatedInterrupt
        self.connectionID = connectionID
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        interfaceType = GUID.read(b, at: Offset.interfaceType)
        interfaceInstance = GUID.read(b, at: Offset.interfaceInstance)
        flags = Flags(rawValue: b.le(at: Offset.channelFlags))
        mmioMegabytes = b.le(at: Offset.mmioMegabytes)
        userDefined = Array(b[Offset.userDefined..<(Offset.userDefined + Self.userDefinedSize)])
        subChannelIndex = b.le(at: Offset.subChannelIndex)
        mmioMegabytesOptional = b.le(at: Offset.reserved3)
        childRelid = b.le(at: Offset.childRelid)
        monitorID = b[Offset.monitorID]
        monitorAllocated = b[Offset.monitorAllocated] & 1 != 0
        isDedicatedInterrupt = b.le(UInt16.self, at: Offset.isDedicatedInterrupt) & 1 != 0
        connectionID = b.le(at: Offset.connectionID)
        guard childRelid != 0, childRelid <= Self.maximumRelid else {
            throw .invalidField("child_relid", UInt64(childRelid))
        }
    }

    public var encodedSize: Int { Self.minimumSize }

    public func encodeFields(into b: inout [UInt8]) {
        interfaceType.write(into: &b, at: Offset.interfaceType)
        interfaceInstance.write(into: &b, at: Offset.interfaceInstance)
        b.putLE(flags.rawValue, at: Offset.channelFlags)
        b.putLE(mmioMegabytes, at: Offset.mmioMegabytes)
        for (i, byte) in userDefined.prefix(Self.userDefinedSize).enumerated() { b[Offset.userDefined + i] = byte }
        b.putLE(subChannelIndex, at: Offset.subChannelIndex)
        b.putLE(mmioMegabytesOptional, at: Offset.reserved3)
        b.putLE(childRelid, at: Offset.childRelid)
        b[Offset.monitorID] = monitorID
        b[Offset.monitorAllocated] = monitorAllocated ? 1 : 0
        b.putLE(UInt16(isDedicatedInterrupt ? 1 : 0), at: Offset.isDedicatedInterrupt)
        b.putLE(connectionID, at: Offset.connectionID)
    }
}

/// RESCIND_CHANNELOFFER (2): the host withdraws an offer.
public struct RescindChannelOffer: RelidOnlyMessage {
    public static let messageType = ChannelMessageType.rescindChannelOffer
    public var childRelid: UInt32
    public init(childRelid: UInt32) { self.childRelid = childRelid }
}

/// RELID_RELEASED (13): the guest is done with a rescinded relid; the host may reuse it.
public struct RelidReleased: RelidOnlyMessage {
    public static let messageType = ChannelMessageType.relidReleased
    public var childRelid: UInt32
    public init(childRelid: UInt32) { self.childRelid = childRelid }
}
