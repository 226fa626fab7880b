// Target "storvsp": the synthetic SCSI controller's host end over a channel whose guest is the
// input: vstor initialization, SRBs with GPA-direct data, hot plug, close, completions run inline
// or later.

import Hypervisor
import SyntheticStorage
import VMBusChannel
import VMBusWire

let storageVSPTarget = FuzzTarget(
    name: "storvsp",
    summary: "StorageVSP.channelSignalled on vstor packets (raw and structured, GPA-direct data in guest memory), add/remove LUNs, deferred completions"
) { data in
    var r = FuzzReader(data)
    StorageVSPFuzz.run(&r)
}

/// Holds device work until the input runs it, so completions come late (and after a close).
final class FuzzQueuedExecutor: DeviceExecutor {
    private var jobs: [(work: @Sendable () -> Void, completion: () -> Void)] = []

    func run(_ work: @escaping @Sendable () -> Void, then completion: @escaping () -> Void) {
        jobs.append((work: work, completion: completion))
    }

    var pending: Int { jobs.count }

    func runNext(_ count: Int) {
        var n = 0
        while n < count && !jobs.isEmpty {
            n += 1
            let job = jobs.removeFirst()
            job.work()
            job.completion()
        }
    }

    func runAll() { runNext(4096) }
}

/// Grants sub-channel requests without offering anything (the channel under test stays the primary).
final class FuzzSubChannels: SubChannelOffering {
    private(set) var requests = 0
    func offerSubChannels(of device: any VMBusDevice, count: Int) -> Int {
        requests += 1
        return min(max(count, 0), 64)
    }
}

enum StorageVSPFuzz {
    static let backends = [
        FuzzBlockBackend(size: 1 << 20, readOnly: false),
        FuzzBlockBackend(size: 128 << 10, readOnly: true),
        FuzzBlockBackend(size: 300, readOnly: false),
    ]
    static let operations: [VStorOperation] = [
        .executeSRB, .executeSRB, .executeSRB, .beginInitialization, .queryProtocolVersion, .queryProperties,
        .endInitialization, .createSubChannels, .resetLUN, .resetAdapter, .resetBus, .completeIO, .removeDevice,
        .enumerateBus, .fcHBAData, .eventNotification,
    ]
    static let versions: [UInt16] = [
        VStorVersion.win10, VStorVersion.win8_1, VStorVersion.win8, VStorVersion.win7, VStorVersion.win6, 0x0101,
    ]
    static let opcodes: [UInt8] = [0x12, 0x28, 0x2A, 0x88, 0x8A, 0x08, 0x0A, 0x25, 0x9E, 0x35, 0x42, 0x93, 0xA0, 0x00, 0x1A, 0x03]

    static func run(_ r: inout FuzzReader) {
        fuzzMemory.reset()
        for b in backends { b.reset() }
        let setup = r.u8()
        backends[0].failWrites = setup & 0x10 != 0
        backends[0].failReads = setup & 0x20 != 0
        backends[0].cached = setup & 0x40 != 0
        guard let channel = try? FuzzChannel(relid: 1, dataBytes: 16384) else { return }
        let vsp = StorageVSP(instanceID: GUID(low: 0x5354_4F52, high: 1), luns: [
            0: SCSIDisk(backend: backends[0], serial: "FUZZ-RW"),
            1: SCSIDisk(backend: backends[1], serial: "FUZZ-RO"),
            2: SCSIDisk(backend: backends[2], serial: "FUZZ-TINY"),
        ], logger: fuzzLogger)
        let executor = FuzzQueuedExecutor()
        if setup & 1 != 0 { vsp.executor = executor }
        let offers = FuzzSubChannels()
        if setup & 2 == 0 { vsp.attach(subChannels: offers) }
        if setup & 4 == 0 { vsp.attach(memory: fuzzMemory.memory) }
        vsp.maximumSubChannels = Int(setup >> 5)
        fuzzCheck(vsp.open(channel.endpoint, userData: []) == 0, "storvsp refused the channel")
        // The server signals a device only while its channel is open.
        var isOpen = true
        func signalDevice() { if isOpen { vsp.channelSignalled(channel.endpoint) } }
        var steps = 0
        while steps < 128 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 10 {
            case 0, 1:
                channel.send(FuzzPacketScript.read(&r, pages: fuzzMemory.pageCount, payloadLimit: 128))
                signalDevice()
            case 2, 3:
                channel.send(structured(&r, op: op))
                signalDevice()
            case 4:
                if isOpen { initialize(channel, vsp, &r) }
            case 5:
                channel.drain()
                signalDevice()
            case 6:
                executor.runNext(1 + Int(r.u8() % 8))
            case 7:
                channel.tamper(&r)
                signalDevice()
            case 8:
                if op & 0x80 != 0 {
                    _ = vsp.add(SCSIDisk(backend: backends[Int(r.u8()) % backends.count], serial: "FUZZ-HOT"))
                } else {
                    vsp.remove(lun: r.u8())
                }
            default:
                if isOpen { vsp.close(channel.endpoint) }
                isOpen = op & 0x80 == 0
                if isOpen { _ = vsp.open(channel.endpoint, userData: r.take(16)) }
            }
            fuzzCheck(vsp.inFlight >= 0 && vsp.inFlight == executor.pending, "\(vsp.inFlight) commands in flight, \(executor.pending) queued")
            channel.drain()
        }
        executor.runAll()
        if isOpen { vsp.close(channel.endpoint) }
        channel.drain()
        fuzzConsume(vsp.requests ^ vsp.protocolErrors ^ vsp.refusedPages ^ vsp.cachedReads ^ UInt64(vsp.protocolVersion))
    }

    /// BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION, QUERY_PROPERTIES, END_INITIALIZATION, as storvsc sends them.
    static func initialize(_ channel: FuzzChannel, _ vsp: StorageVSP, _ r: inout FuzzReader) {
        var version = [UInt8](repeating: 0, count: 2)
        version.putLE(versions[Int(r.u8()) % versions.count], at: 0)
        let steps: [VStorPacket] = [
            VStorPacket(operation: .beginInitialization),
            VStorPacket(operation: .queryProtocolVersion, body: version),
            VStorPacket(operation: .queryProperties),
            VStorPacket(operation: .endInitialization),
        ]
        let size = r.bool() ? VStorPacket.size : VStorPacket.legacySize
        for (i, p) in steps.enumerated() {
            channel.send(FuzzPacket(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested, transactionID: UInt64(i + 1),
                                    ext: [], payload: p.encode(size: size)))
            vsp.channelSignalled(channel.endpoint)
        }
    }

    /// A vstor packet with the input choosing operation and fields; an SRB with a plausible CDB
    /// and GPA-direct ranges for its data.
    static func structured(_ r: inout FuzzReader, op: UInt8) -> FuzzPacket {
        let sel = r.u8()
        var packet = VStorPacket(operation: operations[Int(sel & 0x0F)], flags: r.u32() & 1)
        if sel & 0x10 != 0 { packet.operation = r.u32() }
        var ext: [UInt8] = []
        if packet.op == .executeSRB {
            var srb = SCSIRequest()
            let address = r.u8()
            srb.pathID = address & 0x40 != 0 ? 1 : 0
            srb.targetID = address & 0x80 != 0 ? 1 : 0
            srb.lun = address & 0x3F < 60 ? address & 3 : address
            let cdbLength = r.u8() % 17
            srb.cdbLength = cdbLength
            var cdb = r.padded(Int(cdbLength))
            if !cdb.isEmpty && op & 0x10 == 0 { cdb[0] = opcodes[Int(r.u8()) % opcodes.count] }
            srb.cdbOrSense = cdb + [UInt8](repeating: 0, count: 20 - cdb.count)
            srb.dataIn = r.u8() % 3
            srb.dataTransferLength = UInt32(r.u16()) << UInt32(r.u8() % 5)
            srb.srbFlags = r.u32()
            packet.body = srb.encoded
            if op & 0x20 == 0 { ext = GpaDirectHeader.extensionBytes(for: FuzzPacketScript.ranges(&r, pages: fuzzMemory.pageCount)) }
        } else if packet.op == .createSubChannels || packet.op == .queryProtocolVersion {
            packet.body.putLE(r.u16(), at: 0)
        } else if op & 0x40 != 0 {
            packet.body = r.padded(52)
        }
        let size = op & 0x80 != 0 ? VStorPacket.legacySize : VStorPacket.size
        let type: PacketType = ext.isEmpty ? .dataInBand : .dataUsingGPADirect
        return FuzzPacket(type: type, flags: PacketDescriptor.flagCompletionRequested, transactionID: UInt64(r.u16()), ext: ext,
                          payload: packet.encode(size: size))
    }
}
