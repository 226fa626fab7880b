// A partition with its VMBus server and two offered devices, over the shared guest memory, with
// the guest-side steps a harness needs: programming a SynIC, taking messages, posting them.

import GuestMemory
import Hypervisor
import VMBusChannel
import VMBusRing
import VMBusWire

/// A VMBus device that echoes packets and lets the guest drive the server's device-facing API:
/// a payload "S" n asks for n sub-channels, "G" handle maps a GPADL of the channel.
final class FuzzDevice: VMBusDevice, GuestMemoryClient, SubChannelDevice, GpadlClient {
    let deviceClass: DeviceClass
    let instanceID: GUID
    /// What `open` answers (0 accepts).
    var openStatus: UInt32 = 0
    weak var subChannels: (any SubChannelOffering)?
    weak var gpadls: (any GpadlMapper)?
    private var memory: GuestPhysicalMemory?
    private var mappings: [PageMapping] = []
    private(set) var opened = 0
    private(set) var closed = 0

    init(deviceClass: DeviceClass, instanceID: GUID) {
        self.deviceClass = deviceClass
        self.instanceID = instanceID
    }

    func attach(memory: GuestPhysicalMemory) { self.memory = memory }
    func attach(subChannels: any SubChannelOffering) { self.subChannels = subChannels }
    func attach(gpadls: any GpadlMapper) { self.gpadls = gpadls }

    func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32 {
        opened += 1
        fuzzConsume(userData)
        return openStatus
    }

    func channelSignalled(_ channel: ChannelEndpoint) {
        channel.drainInbound { packet in
            let payload = packet.payloadBytes()
            if payload.count >= 2 && payload[0] == 0x53 {
                _ = subChannels?.offerSubChannels(of: self, count: Int(payload[1]))
            } else if payload.count >= 5 && payload[0] == 0x47 {
                if let mapping = try? gpadls?.mapGPADL(payload.le(UInt32.self, at: 1), relid: channel.relid) {
                    fuzzConsume(UnsafeRawBufferPointer(rebasing: mapping.buffer.prefix(4096)))
                    if mappings.count < 4 { mappings.append(mapping) }
                }
            } else {
                _ = try? channel.writer.tryWrite(type: .completion, transactionID: packet.transactionID, payload: payload)
            }
        }
        channel.commitWrites()
    }

    func close(_ channel: ChannelEndpoint) {
        closed += 1
        mappings.removeAll()
    }
}

/// Takes a partition's message ports once a harness is done, so the server (which the partition
/// holds through them) goes away with its rig.
final class FuzzParkedPort: MessagePort {
    func receiveMessage(_ payload: [UInt8], connectionID: UInt32, fromVP vp: UInt32) -> HvStatus { .success }
}

/// Partition, server and devices for one input.
final class FuzzPartitionRig {
    /// Guest pages: SIMP/SIEFP of VP n at 1 + 2n / 2 + 2n, the hypercall input page, the 0.13
    /// interrupt page; GPADLs and rings from `firstFreePage` on.
    static let hypercallPage: UInt64 = 8
    static let interruptPage: UInt64 = 9
    static let firstFreePage = 10

    let memory: GuestPhysicalMemory
    let sink: FuzzInterruptSink
    let partition: Partition
    let server: VMBusServer
    let observer = FuzzPacketObserver()
    private(set) var devices: [FuzzDevice] = []

    init(vpCount: Int, configuration: VMBusServerConfiguration = .init()) {
        fuzzMemory.reset()
        let memory = fuzzMemory.memory
        let sink = FuzzInterruptSink()
        let partition = Partition(id: 1, name: "fuzz", memory: memory, vpCount: vpCount, interrupts: sink)
        self.memory = memory
        self.sink = sink
        self.partition = partition
        server = VMBusServer(partition: partition, configuration: configuration, logger: fuzzLogger)
        server.messageObserver = { _, bytes in fuzzConsume(UInt64(truncatingIfNeeded: bytes.count)) }
        server.packetObserver = observer
        addDevice()
        addDevice()
    }

    /// Offers one more device (at most eight), alternating device classes.
    func addDevice(openStatus: UInt32 = 0) {
        guard devices.count < 8 else { return }
        let classes: [DeviceClass] = [.scsi, .kvp, .network, .viridianEcho]
        let device = FuzzDevice(deviceClass: classes[devices.count % classes.count],
                                instanceID: GUID(low: 0x465A_5A46, high: UInt64(devices.count + 1)))
        device.openStatus = openStatus
        devices.append(device)
        server.offer(device)
    }

    /// The connection id the server expects channel messages on now.
    var messageConnection: UInt32 {
        guard let version = server.connection?.version else { return VMBusConnectionID.message }
        return version.usesMessageConnection4 ? server.configuration.messageConnectionID : VMBusConnectionID.message
    }

    /// What Linux's hv_synic_enable_regs writes: SIMP, SIEFP, SINT2 unmasked, SCONTROL on.
    func enableSynIC(vp: Int) {
        guard vp < partition.vpCount else { return }
        let v = UInt32(vp)
        let page = UInt64(1 + 2 * vp)
        _ = try? partition.writeMSR(vp: v, HvMSR.simp, SynICPageRegister(enabled: true, pageNumber: page).rawValue)
        _ = try? partition.writeMSR(vp: v, HvMSR.siefp, SynICPageRegister(enabled: true, pageNumber: page + 1).rawValue)
        _ = try? partition.writeMSR(vp: v, HvMSR.sint(SynICLayout.vmbusSINT), SintRegister(vector: 0xF3, autoEOI: true).rawValue)
        _ = try? partition.writeMSR(vp: v, HvMSR.scontrol, SControlRegister(enabled: true).rawValue)
    }

    /// The guest's message handler on `vp`: takes what waits in the VMBus SINT's slot, frees it
    /// and writes EOM when the host has more. Returns the payloads taken.
    @discardableResult
    func takeMessages(vp: Int, limit: Int = 64) -> [[UInt8]] {
        guard vp < partition.vpCount else { return [] }
        let synic = partition.synics[vp]
        var taken: [[UInt8]] = []
        while taken.count < limit {
            guard synic.simp.enabled,
                let slot = try? memory.buffer(gpa: synic.simp.gpa + UInt64(SynICLayout.messageSlotOffset(sint: SynICLayout.vmbusSINT)),
                                              count: HvMessage.size)
            else { break }
            guard slot.load(fromByteOffset: HvMessage.Offset.messageType, as: UInt32.self) != 0 else { break }
            if let m = try? HvMessage(decoding: UnsafeRawBufferPointer(slot)) { taken.append(m.payload) }
            let pending = slot[HvMessage.Offset.messageFlags] & HvMessage.flagMessagePending != 0
            slot.storeBytes(of: UInt32(0), toByteOffset: HvMessage.Offset.messageType, as: UInt32.self)
            guard pending else { break }
            _ = try? partition.writeMSR(vp: UInt32(vp), HvMSR.eom, 0)
        }
        for payload in taken { fuzzConsume(payload) }
        return taken
    }

    /// HvPostMessage from `vp` through the hypercall input page.
    @discardableResult
    func post(_ payload: [UInt8], connectionID: UInt32, messageType: UInt32 = PostMessageInput.vmbusMessageType, vp: UInt32 = 0) -> HvStatus {
        let input = PostMessageInput(connectionID: connectionID, messageType: messageType, payload: Array(payload.prefix(PostMessageInput.payloadCapacity)))
        guard let block = try? input.encode() else { return .invalidParameter }
        let gpa = Self.hypercallPage * 4096
        fuzzMemory.poke(gpa: gpa, block)
        return partition.hypercall(vp: vp, control: HypercallControl(.postMessage).rawValue, input: gpa, output: 0).status
    }

    /// Open channels, by relid.
    var openChannels: [ServerChannel] {
        server.channels.keys.sorted().compactMap { server.channels[$0] }.filter { $0.endpoint != nil }
    }

    /// Ends the rig: the partition lets go of the server.
    func finish() {
        let parked = FuzzParkedPort()
        for id in [VMBusConnectionID.message, VMBusConnectionID.message4, server.configuration.messageConnectionID] {
            partition.registerMessagePort(connectionID: id, parked)
        }
        withExtendedLifetime(sink) {}
    }
}
