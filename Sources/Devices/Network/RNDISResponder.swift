// The host's RNDIS control side: answers INITIALIZE, QUERY, SET, RESET, KEEPALIVE, follows HALT.

import VMBusWire

/// The RNDIS "miniport" state of a synthetic NIC and its answers to the guest's control
/// messages. Every request that expects an answer gets one (Linux waits without a timeout),
/// unknown OIDs included (NOT_SUPPORTED).
public struct RNDISResponder: Sendable {
    public var mac: [UInt8]
    public var mtu: Int
    public var linkUp = true
    /// The NVSP version decides the offload structure's revision.
    public var nvspVersion: UInt32 = NVSPVersion.v61
    public private(set) var initialized = false
    public private(set) var packetFilter: UInt32 = 0
    public private(set) var offload = NDISOffloadParameters()
    /// Receive queues the device offers (RSS); more than one lets the guest ask for sub-channels.
    public var receiveQueues = 1
    /// Link speed in 100 bps units (10 Gbit/s).
    public var linkSpeed: UInt32 = 100_000_000
    public static let friendlyName = "Viridian synthetic network adapter"

    public init(mac: [UInt8], mtu: Int) {
        self.mac = mac
        self.mtu = mtu
    }

    /// What changed that the device must act on.
    public enum Effect: Equatable, Sendable {
        case none, initialized, halted, packetFilterChanged, offloadChanged
    }

    /// Answers `message`; the reply (nil for HALT and unknown types) and what changed.
    public mutating func handle(_ message: RNDISControlMessage) -> (reply: [UInt8]?, effect: Effect) {
        let id = message.requestID
        switch message.type {
        case RNDISMessageType.initialize:
            initialized = true
            // req_id, status, major, minor, dev_flags (connectionless), medium 802.3, max packets per
            // message, max transfer size, packet alignment 2^3, no address-family list.
            let body = RNDIS.words([id, RNDISStatus.success, 1, 0, 1, 0, 8, 0xEFFF_FFFF, 3, 0, 0])
            return (RNDIS.message(type: RNDISMessageType.initializeComplete, body: body), .initialized)
        case RNDISMessageType.halt:
            initialized = false
            packetFilter = 0
            return (nil, .halted)
        case RNDISMessageType.query:
            let (status, info) = query(oid: message.u32(4))
            let body = RNDIS.words([id, status, UInt32(info.count), info.isEmpty ? 0 : UInt32(RNDIS.queryCompleteBody)]) + info
            return (RNDIS.message(type: RNDISMessageType.queryComplete, body: body), .none)
        case RNDISMessageType.set:
            let (status, effect): (UInt32, Effect)
            if let info = message.buffer(lengthAt: 8, offsetAt: 12) {
                (status, effect) = set(oid: message.u32(4), info)
            } else {
                (status, effect) = (RNDISStatus.invalidData, .none)
            }
            return (RNDIS.message(type: RNDISMessageType.setComplete, body: RNDIS.words([id, status])), effect)
        case RNDISMessageType.reset:
            packetFilter = 0
            return (RNDIS.message(type: RNDISMessageType.resetComplete, body: RNDIS.words([RNDISStatus.success, 1])), .packetFilterChanged)
        case RNDISMessageType.keepalive:
            return (RNDIS.message(type: RNDISMessageType.keepaliveComplete, body: RNDIS.words([id, RNDISStatus.success])), .none)
        default:
            return (nil, .none)
        }
    }

    func query(oid: UInt32) -> (UInt32, [UInt8]) {
        func u32(_ v: UInt32) -> [UInt8] { RNDIS.words([v]) }
        switch oid {
        case OID.permanentAddress, OID.currentAddress: return (RNDISStatus.success, mac)
        case OID.maximumFrameSize: return (RNDISStatus.success, u32(UInt32(mtu)))
        case OID.linkSpeed: return (RNDISStatus.success, u32(linkSpeed))
        case OID.mediaConnectStatus: return (RNDISStatus.success, u32(linkUp ? 0 : 1))
        case OID.currentPacketFilter: return (RNDISStatus.success, u32(packetFilter))
        case OID.offloadHardwareCapabilities: return (RNDISStatus.success, NDISOffload.capabilities(nvsp: nvspVersion))
        case OID.receiveScaleCapabilities where receiveQueues > 1 && nvspVersion >= NVSPVersion.v5:
            return (RNDISStatus.success, NDISReceiveScale.capabilities(queues: receiveQueues))
        case OID.friendlyName:
            var name = [UInt8]()
            for unit in Self.friendlyName.utf16 + [0] { name += [UInt8(unit & 0xFF), UInt8(unit >> 8)] }
            return (RNDISStatus.success, name)
        default: return (RNDISStatus.notSupported, [])
        }
    }

    mutating func set(oid: UInt32, _ info: [UInt8]) -> (UInt32, Effect) {
        switch oid {
        case OID.currentPacketFilter:
            guard info.count >= 4 else { return (RNDISStatus.invalidLength, .none) }
            packetFilter = info.le(UInt32.self, at: 0)
            return (RNDISStatus.success, .packetFilterChanged)
        case OID.receiveScaleParameters where receiveQueues > 1:
            guard info.count >= 4, info[0] == NDISReceiveScale.parametersType else { return (RNDISStatus.invalidData, .none) }
            return (RNDISStatus.success, .none)
        case OID.offloadParameters:
            guard let p = try? NDISOffloadParameters(decoding: info) else { return (RNDISStatus.invalidData, .none) }
            offload = p
            return (RNDISStatus.success, .offloadChanged)
        default:
            return (RNDISStatus.notSupported, .none)
        }
    }

    /// INDICATE_STATUS for the current link state.
    public var linkIndication: [UInt8] {
        RNDIS.indicateStatus(linkUp ? RNDISStatus.mediaConnect : RNDISStatus.mediaDisconnect)
    }
}
