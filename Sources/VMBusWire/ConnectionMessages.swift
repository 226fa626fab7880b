// Connection-level channel messages: INITIATE_CONTACT, VERSION_RESPONSE, offers requests, UNLOAD.

/// INITIATE_CONTACT (14): the guest proposes a protocol version. 40 bytes, 56 with a 6.0 client id.
public struct InitiateContact: ChannelMessageBody {
    public static let messageType = ChannelMessageType.initiateContact
    public static let minimumSize = 40
    public static let sizeWithClientID = 56

    public var version: VMBusVersion
    public var targetVCPU: UInt32
    /// Bytes 16–23: the interrupt page GPA before 5.0; {msg_sint, msg_vtl, reserved, feature_flags} from 5.0.
    public var interruptPageOrTargetInfo: UInt64
    public var monitorPage1: UInt64
    public var monitorPage2: UInt64
    /// 6.0 only, when the client-id feature is requested.
    public var clientID: GUID?

    public init(version: VMBusVersion, targetVCPU: UInt32, interruptPageOrTargetInfo: UInt64,
                monitorPage1: UInt64, monitorPage2: UInt64, clientID: GUID? = nil) {
        self.version = version
        self.targetVCPU = targetVCPU
        self.interruptPageOrTargetInfo = interruptPageOrTargetInfo
        self.monitorPage1 = monitorPage1
        self.monitorPage2 = monitorPage2
        self.clientID = clientID
    }

    /// The form a guest sends for `version`: the interrupt page before 5.0, msg_sint/msg_vtl from 5.0.
    public init(version: VMBusVersion, targetVCPU: UInt32, interruptPage: UInt64, messageSINT: UInt8 = 2,
                messageVTL: UInt8 = 0, monitorPage1: UInt64, monitorPage2: UInt64) {
        let info = version.usesMessageConnection4 ? UInt64(messageSINT) | UInt64(messageVTL) << 8 : interruptPage
        self.init(version: version, targetVCPU: targetVCPU, interruptPageOrTargetInfo: info,
                  monitorPage1: monitorPage1, monitorPage2: monitorPage2)
    }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        version = VMBusVersion(rawValue: b.le(at: 8))
        targetVCPU = b.le(at: 12)
        interruptPageOrTargetInfo = b.le(at: 16)
        monitorPage1 = b.le(at: 24)
        monitorPage2 = b.le(at: 32)
        clientID = b.count >= Self.sizeWithClientID ? GUID.read(b, at: 40) : nil
    }

    public var encodedSize: Int { clientID == nil ? Self.minimumSize : Self.sizeWithClientID }

    public func encodeFields(into b: inout [UInt8]) {
        b.putLE(version.rawValue, at: 8)
        b.putLE(targetVCPU, at: 12)
        b.putLE(interruptPageOrTargetInfo, at: 16)
        b.putLE(monitorPage1, at: 24)
        b.putLE(monitorPage2, at: 32)
        clientID?.write(into: &b, at: 40)
    }

    /// Before 5.0: the guest's interrupt page.
    public var interruptPage: UInt64 { interruptPageOrTargetInfo }
    /// From 5.0: the SINT the guest wants messages on (byte 16).
    public var messageSINT: UInt8 { UInt8(truncatingIfNeeded: interruptPageOrTargetInfo) }
    /// From 5.0: the guest's VTL (byte 17).
    public var messageVTL: UInt8 { UInt8(truncatingIfNeeded: interruptPageOrTargetInfo >> 8) }
    /// 6.0: requested feature flags (bytes 20–23).
    public var featureFlags: UInt32 { UInt32(truncatingIfNeeded: interruptPageOrTargetInfo >> 32) }
}

/// VERSION_RESPONSE (15): accept or refuse the requested version. 16 bytes; 20 or 40 in 6.0.
public struct VersionResponse: ChannelMessageBody {
    public static let messageType = ChannelMessageType.versionResponse
    public static let minimumSize = 16
    public static let sizeWithFeatures = 20
    public static let sizeWithMonitorPages = 40

    /// `connection_state` values.
    public enum ConnectionState: UInt8, Sendable {
        case successful = 0
        case failedLowResources = 1
        case failedUnknownFailure = 2
    }

    /// Non-zero = accepted.
    public var versionSupported: UInt8
    public var connectionState: UInt8
    /// From 5.0: the message connection id for later messages.
    public var messageConnectionID: UInt32
    /// 6.0 (20-byte form): the accepted feature flags.
    public var supportedFeatures: UInt32?
    /// 6.0 (40-byte form): host-supplied monitor pages.
    public var monitorPages: MonitorPages?

    /// The two monitor-page GPAs of the 40-byte form.
    public struct MonitorPages: Equatable, Sendable {
        public var parentToChild: UInt64
        public var childToParent: UInt64
        public init(parentToChild: UInt64, childToParent: UInt64) {
            self.parentToChild = parentToChild
            self.childToParent = childToParent
        }
    }

    public init(versionSupported: Bool, connectionState: ConnectionState = .successful, messageConnectionID: UInt32,
                supportedFeatures: UInt32? = nil, monitorPages: MonitorPages? = nil) {
        self.versionSupported = versionSupported ? 1 : 0
        self.connectionState = connectionState.rawValue
        self.messageConnectionID = messageConnectionID
        self.supportedFeatures = supportedFeatures
        self.monitorPages = monitorPages
    }

    public var isSupported: Bool { versionSupported != 0 }

    public init(decodingChecked b: [UInt8]) throws(WireError) {
        versionSupported = b[8]
        connectionState = b[9]
        messageConnectionID = b.le(at: 12)
        supportedFeatures = b.count >= Self.sizeWithFeatures ? b.le(UInt32.self, at: 16) : nil
        monitorPages = b.count >= Self.sizeWithMonitorPages
            ? MonitorPages(parentToChild: b.le(at: 24), childToParent: b.le(at: 32)) : nil
    }

    public var encodedSize: Int {
        monitorPages != nil ? Self.sizeWithMonitorPages : supportedFeatures != nil ? Self.sizeWithFeatures : Self.minimumSize
    }

    public func encodeFields(into b: inout [UInt8]) {
        b[8] = versionSupported
        b[9] = connectionState
        b.putLE(messageConnectionID, at: 12)
        if let supportedFeatures { b.putLE(supportedFeatures, at: 16) }
        if let monitorPages {
            if supportedFeatures == nil { b.putLE(UInt32(0), at: 16) }
            b.putLE(monitorPages.parentToChild, at: 24)
            b.putLE(monitorPages.childToParent, at: 32)
        }
    }
}

/// REQUESTOFFERS (3): the guest asks for every offer.
public struct RequestOffers: HeaderOnlyMessage {
    public static let messageType = ChannelMessageType.requestOffers
    public init() {}
}

/// ALLOFFERS_DELIVERED (4): the host has sent every offer it had.
public struct AllOffersDelivered: HeaderOnlyMessage {
    public static let messageType = ChannelMessageType.allOffersDelivered
    public init() {}
}

/// UNLOAD (16): the guest disconnects from the bus.
public struct Unload: HeaderOnlyMessage {
    public static let messageType = ChannelMessageType.unload
    public init() {}
}

/// UNLOAD_RESPONSE (17): the host has closed everything; the guest may reconnect.
public struct UnloadResponse: HeaderOnlyMessage {
    public static let messageType = ChannelMessageType.unloadResponse
    public init() {}
}
