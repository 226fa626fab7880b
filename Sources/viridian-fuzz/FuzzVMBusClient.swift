// Target "vmbus-client": the guest's VMBus client against a hostile host: whatever it posts into
// the guest's message slot and event flags, in any order, while the guest connects and opens channels.

import Hypervisor
import VMBusClient
import VMBusWire

let vmbusClientTarget = FuzzTarget(
    name: "vmbus-client",
    summary: "VMBusClient.handleInterrupt on host messages (raw, typed, well-formed) and raw SynIC slots; connect/open/close/createGPADL/unload"
) { data in
    var r = FuzzReader(data)
    VMBusClientFuzz.run(&r)
}

enum VMBusClientFuzz {
    static let hostTypes: [ChannelMessageType] = [
        .versionResponse, .offerChannel, .rescindChannelOffer, .allOffersDelivered, .gpadlCreated, .openChannelResult,
        .gpadlTorndown, .unloadResponse, .modifyChannelResponse, .tlConnectResult, .requestOffers, .openChannel,
        .gpadlHeader, .initiateContact, .closeReservedResponse, .pauseResponse,
    ]

    static func run(_ r: inout FuzzReader) {
        let setup = r.u8()
        let versions: [VMBusVersion]
        switch setup % 4 {
        case 0: versions = VMBusVersion.linuxPreference
        case 1: versions = VMBusVersion.all
        case 2: versions = [.ws2008, .win7]
        default: versions = [VMBusVersion(rawValue: r.u32()), .win10_v5_3]
        }
        let rig = FuzzGuestRig(versions: versions)
        defer { rig.finish() }
        if setup & 0x10 != 0 { rig.recorder.status = .invalidConnectionID }
        _ = try? rig.client.connect()
        rig.recorder.status = .success
        var steps = 0
        while steps < 256 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 9 {
            case 0:
                rig.hostPost(r.blob(limit: 240))
            case 1:
                var payload = r.blob(limit: 240)
                guard payload.count >= 8 else { continue }
                payload.putLE(hostTypes[Int(op >> 4)].rawValue, at: 0)
                if payload.count >= 12 && op & 0x04 == 0 { payload.putLE(UInt32(1 + r.u8() % 4), at: 8) }
                if payload.count >= 16 && op & 0x08 == 0 { payload.putLE(handle(rig, &r), at: 12) }
                rig.hostPost(payload)
            case 2:
                wellFormed(rig, &r, op: op)
            case 3:
                guestAction(rig, &r, op: op)
            case 4:
                // Anything in the slot itself: a type, a payload size over 240, stray flags.
                let synic = rig.partition.synics[0]
                guard synic.simp.enabled else { continue }
                let gpa = synic.simp.gpa + UInt64(SynICLayout.messageSlotOffset(sint: SynICLayout.vmbusSINT))
                var slot = r.padded(HvMessage.size)
                if op & 0x80 == 0 { slot.putLE(HvMessageType.vmbus.rawValue, at: 0) }
                fuzzMemory.poke(gpa: gpa, slot)
                rig.client.handleInterrupt(vp: 0)
            case 5:
                _ = rig.partition.synics[0].signalEvent(sint: SynICLayout.vmbusSINT, flag: Int(r.u16() % 2048))
                rig.run()
            case 6:
                let gpa = UInt64(r.u16()) * 8
                fuzzMemory.poke(gpa: gpa, r.blob(limit: 64))
                if op & 0x80 != 0 {
                    _ = rig.partition.synics[0].signalEvent(sint: SynICLayout.vmbusSINT, flag: 0)
                    rig.run()
                }
            case 7:
                let statuses: [HvStatus] = [.success, .invalidConnectionID, .insufficientBuffers, .invalidParameter]
                rig.recorder.status = statuses[Int(r.u8()) % statuses.count]
            default:
                fuzzConsume(rig.client.malformedMessages ^ rig.client.messagesReceived ^ UInt64(rig.client.freePages))
                fuzzConsume(UInt64(rig.client.channels.count) ^ UInt64(rig.client.allOffersDelivered ? 1 : 0))
            }
        }
    }

    /// A GPADL handle the guest used, or any.
    static func handle(_ rig: FuzzGuestRig, _ r: inout FuzzReader) -> UInt32 {
        let handles = rig.recorder.gpadlHandles
        let sel = r.u8()
        if sel & 0x80 != 0 || handles.isEmpty { return r.u32() }
        return handles[Int(sel) % handles.count]
    }

    static func relid(_ rig: FuzzGuestRig, _ r: inout FuzzReader) -> UInt32 {
        let sel = r.u8()
        let known = rig.client.channels.keys.sorted()
        if sel & 0x80 != 0 || known.isEmpty { return UInt32(sel & 0x7F) }
        return known[Int(sel) % known.count]
    }

    /// Host messages as a host builds them, values from the input.
    static func wellFormed(_ rig: FuzzGuestRig, _ r: inout FuzzReader, op: UInt8) {
        switch (op >> 4) & 7 {
        case 0:
            let response = VersionResponse(versionSupported: r.u8() != 0, messageConnectionID: r.bool() ? VMBusConnectionID.message4 : r.u32(),
                                           supportedFeatures: r.bool() ? r.u32() : nil)
            rig.hostPost(response.encode())
        case 1:
            let classes = DeviceClass.known
            let deviceClass = classes[Int(r.u8()) % classes.count]
            let offer = OfferChannel(interfaceType: deviceClass.guid, interfaceInstance: GUID(low: UInt64(r.u8() % 4), high: 7),
                                     flags: OfferChannel.Flags(rawValue: r.u16()), userDefined: r.take(8),
                                     subChannelIndex: UInt16(r.u8() % 3), childRelid: 1 + UInt32(r.u8()) % OfferChannel.maximumRelid,
                                     connectionID: r.u32())
            rig.hostPost(offer.encode())
        case 2:
            rig.hostPost(RescindChannelOffer(childRelid: relid(rig, &r)).encode())
        case 3:
            let status: UInt32 = r.u8() & 1 == 0 ? 0 : GpadlCreated.statusUnsuccessful
            rig.hostPost(GpadlCreated(childRelid: relid(rig, &r), gpadl: handle(rig, &r), creationStatus: status).encode())
        case 4:
            let id = relid(rig, &r)
            let openID = r.bool() ? id : r.u32()
            let status: UInt32 = r.u8() & 1 == 0 ? 0 : 0xC000_0001
            rig.hostPost(OpenChannelResult(childRelid: id, openID: openID, status: status).encode())
        case 5:
            rig.hostPost(GpadlTorndown(gpadl: handle(rig, &r)).encode())
        case 6:
            rig.hostPost(r.bool() ? UnloadResponse().encode() : AllOffersDelivered().encode())
        default:
            let result = TLConnectResult(endpointID: GUID(low: r.u64(), high: 0), serviceID: .zero, status: Int32(bitPattern: r.u32()))
            rig.hostPost(r.bool() ? result.encode() : ModifyChannelResponse(childRelid: relid(rig, &r), status: r.u32()).encode())
        }
    }

    /// What the guest's drivers ask of the bus.
    static func guestAction(_ rig: FuzzGuestRig, _ r: inout FuzzReader, op: UInt8) {
        let client = rig.client!
        let known = client.channels.keys.sorted()
        let channel = known.isEmpty ? nil : client.channels[known[r.below(known.count)]]
        switch (op >> 4) & 7 {
        case 0, 1:
            guard let channel else { return }
            let send = 2 + r.below(4), receive = 2 + r.below(4)
            _ = try? client.open(channel, sendPages: send, receivePages: receive, targetVP: UInt32(r.u8() % 2), userData: r.take(16))
        case 2:
            guard let channel else { return }
            client.close(channel)
        case 3:
            guard let channel else { return }
            let pages = 1 + r.below(8)
            guard let first = try? client.allocatePages(pages) else { return }
            _ = try? client.createGPADL(for: channel, firstPage: first, pages: pages) { handle in fuzzConsume(UInt64(handle ?? 0)) }
        case 4:
            _ = try? client.unload()
        case 5:
            _ = try? client.connect()
        default:
            fuzzConsume(UInt64(client.version?.rawValue ?? 0))
        }
    }
}
