// The guest's record of one offered channel, and of a GPADL it is creating or tearing down.

import GuestMemory
import VMBusChannel
import VMBusWire

/// Where a guest channel is in its life.
public enum ClientChannelState: Equatable, Sendable {
    /// Offered, not open.
    case offered
    /// Ring GPADL sent, waiting for GPADL_CREATED.
    case creatingRingGPADL
    /// OPENCHANNEL sent, waiting for OPENCHANNEL_RESULT.
    case opening
    case open
    /// CLOSECHANNEL sent, waiting for GPADL_TORNDOWN of the ring.
    case closing
    /// Open failed; the reason is kept.
    case failed(ClientError)
    /// Rescinded by the host.
    case rescinded
}

/// A channel as the guest sees it: the offer, and once open, the endpoint over its rings.
public final class ClientChannel {
    public let offer: OfferChannel
    public internal(set) var state: ClientChannelState = .offered
    /// Available while `state == .open`.
    public internal(set) var endpoint: ChannelEndpoint?
    /// Called from the interrupt scan when the host signals this channel.
    public var onSignal: ((ClientChannel) -> Void)?
    /// Called when the state changes (open completed, failed, closed, rescinded).
    public var onStateChange: ((ClientChannel) -> Void)?

    public internal(set) var targetVP: UInt32 = 0
    var ringGPADL: UInt32 = 0
    var ringFirstPage: UInt64 = 0
    var ringPages = 0
    var sendPages = 0
    var userData: [UInt8] = []

    init(offer: OfferChannel) { self.offer = offer }

    public var relid: UInt32 { offer.childRelid }
    public var deviceClass: DeviceClass { DeviceClass.named(offer.interfaceType) }

    func set(_ newState: ClientChannelState) {
        state = newState
        onStateChange?(self)
    }
}
