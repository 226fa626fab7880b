// Target "vmbus-server": the host's VMBus state machine driven message by message by a hostile
// guest: negotiation, offers, GPADLs, open/close, rescind, unload, and packets on open channels.

import Hypervisor
import VMBusChannel
import VMBusRing
import VMBusWire

let vmbusServerTarget = FuzzTarget(
    name: "vmbus-server",
    summary: "VMBusServer.receiveMessage sequences (raw, typed and well-formed), channel signals and ring packets on opened channels, rescind/detach"
) { data in
    var r = FuzzReader(data)
    VMBusServerFuzz.run(&r)
}

enum VMBusServerFuzz {
    /// Message types a guest sends (and a few it must not).
    static let guestTypes: [ChannelMessageType] = [
        .requestOffers, .openChannel, .closeChannel, .gpadlHeader, .gpadlBody, .gpadlTeardown, .relidReleased,
        .initiateContact, .unload, .tlConnectRequest, .modifyChannel, .offerChannel, .versionResponse, .openReservedChannel,
        .pause, .resume,
    ]
    static let handles: [UInt32] = [0x100, 0x101, 0x102, 0]

    static func run(_ r: inout FuzzReader) {
        let setup = r.u8()
        let vpCount = 1 + Int(setup & 1)
        var configuration = VMBusServerConfiguration(messageConnectionID: setup & 2 != 0 ? 0x0F : VMBusConnectionID.message)
        if setup & 4 != 0 { configuration.supportedVersions = [.win10_v5_3, .win8, .ws2008] }
        let rig = FuzzPartitionRig(vpCount: vpCount, configuration: configuration)
        defer { rig.finish() }
        if setup & 8 != 0 { rig.devices.first?.openStatus = 0xC000_0001 }
        for vp in 0..<vpCount { rig.enableSynIC(vp: vp) }
        var steps = 0
        while steps < 256 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 12 {
            case 0:
                // Raw bytes on a connection the guest chose.
                let payload = r.blob(limit: 260)
                deliver(rig, payload, connection: connection(rig, &r), vp: UInt32(r.u8() % 3))
            case 1:
                // A guest message type with fields from the input; relid and handle usually plausible.
                var payload = r.blob(limit: 240)
                guard payload.count >= 8 else { continue }
                payload.putLE(guestTypes[Int(op >> 4)].rawValue, at: 0)
                if payload.count >= 12 && op & 0x04 == 0 { payload.putLE(UInt32(r.u8() % 6), at: 8) }
                if payload.count >= 16 && op & 0x08 == 0 { payload.putLE(handles[Int(r.u8()) % handles.count], at: 12) }
                deliver(rig, payload, connection: rig.messageConnection, vp: 0)
            case 2:
                wellFormed(rig, &r, op: op)
            case 3:
                rig.takeMessages(vp: Int(r.u8()) % vpCount)
            case 4:
                packet(rig, &r)
            case 5:
                takeCompletions(rig)
            case 6:
                let gpa = UInt64(r.u16()) * 8
                fuzzMemory.poke(gpa: gpa, r.blob(limit: 128))
            case 7:
                // A channel signal: the fast hypercall, or the doorbell path.
                let relid = UInt32(r.u8() % 8)
                let id = op & 0x80 != 0 ? VMBusConnectionID.event : relid | 0x2000
                if op & 0x40 != 0 {
                    _ = rig.partition.deliverSignal(connectionID: id)
                } else {
                    let input = SignalEventInput(connectionID: id, flagNumber: r.u16()).fastInput
                    _ = rig.partition.hypercall(vp: 0, control: HypercallControl(.signalEvent, fast: true).rawValue, input: input, output: 0)
                }
            case 8:
                switch r.u8() % 6 {
                case 0: rig.server.rescind(relid: UInt32(r.u8() % 8))
                case 1: rig.server.rescindAll()
                case 2: rig.server.detachGuest()
                case 3: rig.addDevice(openStatus: r.u8() & 1 == 0 ? 0 : 0xC000_0001)
                case 4:
                    if let device = rig.devices.last { _ = rig.server.offerSubChannels(of: device, count: Int(r.u8() % 70)) }
                default:
                    if let channel = rig.openChannels.first { _ = try? rig.server.mapGPADL(channel.ringGPADL, relid: channel.relid) }
                }
            case 9:
                let vp = UInt32(r.u8()) % UInt32(vpCount)
                let msrs = [HvMSR.scontrol, HvMSR.simp, HvMSR.siefp, HvMSR.sint(2), HvMSR.eom]
                _ = try? rig.partition.writeMSR(vp: vp, msrs[Int(r.u8()) % msrs.count], r.u64())
                if r.bool() { rig.enableSynIC(vp: Int(vp)) }
            case 10:
                // Through the hypercall, as a guest really posts.
                var payload = r.blob(limit: 240)
                if payload.count >= 4 { payload.putLE(guestTypes[Int(op >> 4)].rawValue, at: 0) }
                rig.post(payload, connectionID: rig.messageConnection, vp: UInt32(r.u8()) % UInt32(vpCount))
            default:
                fuzzConsume(rig.server.messagesReceived ^ rig.server.messagesSent ^ rig.server.malformedMessages)
                fuzzConsume(UInt64(rig.server.gpadls.entries.count) ^ UInt64(rig.server.channels.count))
            }
        }
    }

    static func connection(_ rig: FuzzPartitionRig, _ r: inout FuzzReader) -> UInt32 {
        let sel = r.u8()
        switch sel % 5 {
        case 0: return VMBusConnectionID.message
        case 1: return VMBusConnectionID.message4
        case 2: return rig.server.configuration.messageConnectionID
        case 3: return rig.messageConnection
        default: return r.u32()
        }
    }

    static func deliver(_ rig: FuzzPartitionRig, _ payload: [UInt8], connection: UInt32, vp: UInt32) {
        let status = rig.server.receiveMessage(payload, connectionID: connection, fromVP: vp)
        fuzzConsume(UInt64(status.rawValue))
    }

    /// A message as a correct guest would build it, with the input choosing the values.
    static func wellFormed(_ rig: FuzzPartitionRig, _ r: inout FuzzReader, op: UInt8) {
        let conn = rig.messageConnection
        let relids = rig.server.channels.keys.sorted()
        let relid = relids.isEmpty || op & 0x80 != 0 ? UInt32(r.u8() % 8) : relids[r.below(relids.count)]
        switch (op >> 4) & 7 {
        case 0:
            let versions = VMBusVersion.all
            let sel = r.u8()
            let version = Int(sel) < versions.count * 2 ? versions[Int(sel) % versions.count] : VMBusVersion(rawValue: r.u32())
            let interruptPage = r.bool() ? FuzzPartitionRig.interruptPage * 4096 : r.u64()
            let message = InitiateContact(version: version, targetVCPU: UInt32(r.u8() % 3), interruptPage: interruptPage,
                                          messageSINT: r.u8() % 18, monitorPage1: 0, monitorPage2: 0)
            let right = version.usesMessageConnection4 ? VMBusConnectionID.message4 : VMBusConnectionID.message
            deliver(rig, ChannelMessage.initiateContact(message).encode(), connection: r.bool() ? right : connection(rig, &r), vp: 0)
            rig.takeMessages(vp: 0)
        case 1:
            deliver(rig, RequestOffers().encode(), connection: conn, vp: 0)
            rig.takeMessages(vp: 0)
        case 2:
            // A ring GPADL (one range of whole pages), split as Linux splits it.
            let first = UInt64(FuzzPartitionRig.firstFreePage + r.below(100))
            let pages = 2 + r.below(16)
            let offset = UInt32(r.u8() & 1 == 0 ? 0 : r.u16() % 4096)
            let pfns = (0..<pages).map { first + UInt64($0) }
            let range = GpaRange(byteCount: UInt32(pages * 4096) - offset, byteOffset: offset, pfns: pfns)
            let handle = handles[Int(r.u8()) % (handles.count - 1)]
            guard let messages = try? GpadlMessages.split(childRelid: relid, gpadl: handle, ranges: [range]) else { return }
            let dropLast = r.u8() == 0xFF && messages.count > 1
            for message in (dropLast ? Array(messages.dropLast()) : messages) { deliver(rig, message.encode(), connection: conn, vp: 0) }
        case 3:
            let handle = handles[Int(r.u8()) % handles.count]
            let message = OpenChannel(childRelid: relid, openID: r.u32(), ringBufferGPADL: handle, targetVP: UInt32(r.u8() % 3),
                                      downstreamRingBufferPageOffset: UInt32(r.u8() % 18), userData: r.take(120))
            deliver(rig, message.encode(), connection: conn, vp: 0)
        case 4:
            deliver(rig, CloseChannel(childRelid: relid).encode(), connection: conn, vp: 0)
        case 5:
            let handle = handles[Int(r.u8()) % handles.count]
            deliver(rig, GpadlTeardown(childRelid: relid, gpadl: handle).encode(), connection: conn, vp: 0)
        case 6:
            switch r.u8() % 4 {
            case 0: deliver(rig, RelidReleased(childRelid: relid).encode(), connection: conn, vp: 0)
            case 1: deliver(rig, ModifyChannel(childRelid: relid, targetVP: UInt32(r.u8() % 3)).encode(), connection: conn, vp: 0)
            case 2: deliver(rig, Unload().encode(), connection: conn, vp: 0)
            default:
                let request = TLConnectRequest(guestEndpointID: GUID(low: r.u64(), high: r.u64()), hostServiceID: GUID(low: r.u64(), high: 0))
                deliver(rig, request.encode(), connection: conn, vp: 0)
            }
        default:
            rig.takeMessages(vp: 0)
        }
    }

    /// A packet on an open channel's guest→host ring, then the channel's signal.
    static func packet(_ rig: FuzzPartitionRig, _ r: inout FuzzReader) {
        let open = rig.openChannels
        guard !open.isEmpty else { return }
        let channel = open[r.below(open.count)]
        guard let endpoint = channel.endpoint else { return }
        let p = FuzzPacketScript.read(&r, pages: rig.memory.pageCount, payloadLimit: 512)
        var writer: RingWriter
        do { writer = try RingWriter(ring: endpoint.reader.ring) } catch { return }
        var payload = p.payload
        // Now and then a command to the test device: sub-channels, or mapping a GPADL.
        if payload.count >= 5 && p.flags != 0 && payload[0] & 1 == 0 {
            let command: UInt8 = payload[0] & 2 == 0 ? 0x53 : 0x47
            let handle = handles[Int(payload[1]) % handles.count]
            payload[0] = command
            payload.putLE(handle, at: 1)
        }
        _ = try? writer.tryWrite(type: p.type, flags: p.flags, transactionID: p.transactionID, extension: p.ext, payload: payload)
        _ = writer.commit()
        _ = rig.partition.deliverSignal(connectionID: channel.connectionID)
    }

    /// The guest reads the completions on every open channel's host→guest ring.
    static func takeCompletions(_ rig: FuzzPartitionRig) {
        for channel in rig.openChannels {
            guard let endpoint = channel.endpoint else { continue }
            var reader: RingReader
            do { reader = try RingReader(ring: endpoint.writer.ring) } catch { continue }
            var n = 0
            while n < 64, let p = try? reader.next() {
                n += 1
                fuzzConsume(UInt64(p.payloadLength) ^ p.transactionID)
            }
            if reader.commit() { _ = rig.partition.deliverSignal(connectionID: channel.connectionID) }
        }
    }
}
