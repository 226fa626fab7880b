// What a VSP implements to be offered on the bus, and the server's record of each offered channel.

import GuestMemory
import VMBusChannel
import VMBusWire

/// A virtualization service provider: a device the VMBus server offers to a guest.
public protocol VMBusDevice: AnyObject {
    var deviceClass: DeviceClass { get }
    var instanceID: GUID { get }
    /// The 120 device-defined bytes of the offer (pipe mode and the like).
    var offerUserDefined: [UInt8] { get }
    /// Offer flags (`chn_flags`), e.g. named-pipe mode for integration services.
    var offerFlags: OfferChannel.Flags { get }
    /// The guest opened the channel; return 0 to accept or a failure status.
    func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32
    /// The guest signalled the channel: packets to read, or room to write.
    func channelSignalled(_ channel: ChannelEndpoint)
    /// The channel closed (guest close, rescind or unload); stop touching its rings.
    func close(_ channel: ChannelEndpoint)
}

/// A device that moves data through guest memory (GPA-direct pages, GPADL buffers). The server
/// hands it the partition's memory before the channel opens.
public protocol GuestMemoryClient: AnyObject {
    func attach(memory: GuestPhysicalMemory)
}

/// Lets a device ask the bus for sub-channels (same class and instance, sub_channel_index ≥ 1).
public protocol SubChannelOffering: AnyObject {
    /// Offers `count` more sub-channels of `device`; returns how many it has in all.
    func offerSubChannels(of device: any VMBusDevice, count: Int) -> Int
}

/// A device that can use sub-channels; the server introduces itself when it offers the device.
public protocol SubChannelDevice: AnyObject {
    func attach(subChannels: any SubChannelOffering)
}

/// Lets a device map the guest buffers it is handed by GPADL handle (netvsc's receive and send buffers).
public protocol GpadlMapper: AnyObject {
    /// Maps the complete GPADL `handle` of channel `relid` as one contiguous view of its pages
    /// (whole pages only). Throws when the handle is unknown, foreign, incomplete or not page-aligned.
    func mapGPADL(_ handle: UInt32, relid: UInt32) throws -> PageMapping
}

/// A device that uses GPADL buffers beyond its rings; the server introduces itself when it offers the device.
public protocol GpadlClient: AnyObject {
    func attach(gpadls: any GpadlMapper)
}

/// The partition's service loop, as a device sees it: it can watch a descriptor (a TAP) for input.
public protocol DescriptorWatcher: AnyObject {
    /// Starts (`wanted`) or stops watching `fd` for input; `handler` runs on the partition's thread.
    func watch(_ fd: Int32, wanted: Bool, handler: @escaping () -> Void)
}

/// A device fed by a host descriptor; the service loop introduces itself before any guest attaches.
public protocol DescriptorDevice: AnyObject {
    func attach(watcher: any DescriptorWatcher)
}

extension VMBusDevice {
    public var offerUserDefined: [UInt8] { [] }
    public var offerFlags: OfferChannel.Flags { [] }
}

/// Life of an offered channel on the host.
public enum ServerChannelState: String, Sendable {
    /// Registered, not yet sent to a connected guest.
    case registered
    /// Sent to the guest.
    case offered
    /// Open: rings mapped, device running.
    case open
    /// Rescinded; waiting for RELID_RELEASED.
    case rescinded
}

/// The server's record of one channel.
public final class ServerChannel {
    public let relid: UInt32
    public let device: any VMBusDevice
    /// Connection id the guest passes to HvSignalEvent for this channel.
    public let connectionID: UInt32
    public internal(set) var state: ServerChannelState = .registered
    public internal(set) var targetVP: UInt32 = 0
    public internal(set) var ringGPADL: UInt32 = 0
    public internal(set) var endpoint: ChannelEndpoint?
    var mapping: PageMapping?
    /// A teardown of the ring GPADL that arrived while the channel was open.
    var deferredTeardown: UInt32?
    /// While the open is being answered, signals to the guest wait (the guest may not look at
    /// the channel before OPENCHANNEL_RESULT); `signalDeferred` remembers one was wanted.
    var holdSignals = false
    var signalDeferred = false
    /// A sub-channel the guest closed: rescinded once its last GPADL is torn down.
    var rescindWhenTornDown = false

    /// 0 for the primary channel, 1… for sub-channels of the same device.
    public let subChannelIndex: UInt16

    init(relid: UInt32, device: any VMBusDevice, subChannelIndex: UInt16 = 0) {
        self.relid = relid
        self.device = device
        self.subChannelIndex = subChannelIndex
        connectionID = relid | 0x2000
    }
}
