// The guest's VMBus client over a real partition whose VMBus ports only record what the guest
// posts: the harness plays a hostile host, posting messages into the guest's SynIC slot.

import GuestMemory
import Hypervisor
import VMBusClient
import VMBusWire

/// The host side of connections 1 and 4: records the guest's posts, answers with `status`.
final class FuzzMessageRecorder: MessagePort {
    private(set) var posted: [[UInt8]] = []
    var status = HvStatus.success

    func receiveMessage(_ payload: [UInt8], connectionID: UInt32, fromVP vp: UInt32) -> HvStatus {
        if posted.count < 512 { posted.append(payload) }
        return status
    }

    /// The handles of the GPADLs the guest started, newest first.
    var gpadlHandles: [UInt32] { posted.reversed().compactMap { try? GpadlHeader(decoding: $0) }.map(\.gpadl) }
}

/// One VP, the guest's client, and the host's posts into it.
final class FuzzGuestRig: GuestHypervisor, InterruptSink {
    let memory: GuestPhysicalMemory
    let recorder = FuzzMessageRecorder()
    private(set) var partition: Partition!
    private(set) var client: VMBusClient!
    private var pending = false

    init(versions: [VMBusVersion]) {
        fuzzMemory.reset()
        memory = fuzzMemory.memory
        partition = Partition(id: 2, name: "fuzz-guest", memory: memory, vpCount: 1, interrupts: self)
        partition.registerMessagePort(connectionID: VMBusConnectionID.message, recorder)
        partition.registerMessagePort(connectionID: VMBusConnectionID.message4, recorder)
        client = VMBusClient(hypervisor: self, pool: GuestBufferPool(identity: memory), vpCount: 1, versions: versions, logger: fuzzLogger)
    }

    // MARK: GuestHypervisor and InterruptSink

    func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        partition.hypercall(vp: vp, control: control, input: input, output: output).rawValue
    }

    func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { (try? partition.writeMSR(vp: vp, msr, value)) != nil }

    func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { try? partition.readMSR(vp: vp, msr) }

    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) { pending = true }

    // MARK: The host's side

    /// Runs the guest's interrupt handler while interrupts are pending (bounded).
    func run() {
        var rounds = 0
        while pending && rounds < 64 {
            pending = false
            rounds += 1
            client.handleInterrupt(vp: 0)
        }
    }

    /// Posts `payload` (at most 240 bytes are taken) on the guest's VMBus SINT and lets it run.
    func hostPost(_ payload: [UInt8]) {
        partition.synics[0].postMessage(sint: SynICLayout.vmbusSINT, payload: Array(payload.prefix(HvMessage.payloadCapacity)))
        run()
    }

    /// Connects the guest, offers one channel of `deviceClass` as relid 1 and answers the guest's
    /// GPADL and open. The channel, open; nil if the guest did not get there.
    func openChannel(deviceClass: DeviceClass, sendPages: Int, receivePages: Int) -> ClientChannel? {
        guard (try? client.connect()) != nil else { return nil }
        hostPost(VersionResponse(versionSupported: true, messageConnectionID: VMBusConnectionID.message4).encode())
        guard client.version != nil else { return nil }
        let offer = OfferChannel(interfaceType: deviceClass.guid, interfaceInstance: GUID(low: 0x4755_4553_54, high: 1),
                                 flags: [.namedPipeMode], childRelid: 1, connectionID: 0x2001)
        hostPost(offer.encode())
        hostPost(AllOffersDelivered().encode())
        guard let channel = client.channels[1] else { return nil }
        guard (try? client.open(channel, sendPages: sendPages, receivePages: receivePages)) != nil,
            let handle = recorder.gpadlHandles.first
        else { return nil }
        hostPost(GpadlCreated(childRelid: 1, gpadl: handle, creationStatus: 0).encode())
        hostPost(OpenChannelResult(childRelid: 1, openID: 1, status: 0).encode())
        return channel.state == .open ? channel : nil
    }

    /// Ends the rig (the client holds this rig as its hypervisor).
    func finish() {
        client = nil
        partition.registerMessagePort(connectionID: VMBusConnectionID.message, FuzzParkedPort())
        partition.registerMessagePort(connectionID: VMBusConnectionID.message4, FuzzParkedPort())
    }
}
