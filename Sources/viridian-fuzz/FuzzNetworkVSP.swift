// Target "netvsp": the synthetic NIC's host end over a channel whose guest is the input: NVSP
// negotiation, receive and send buffers (GPADLs in guest memory), RNDIS over send-buffer sections
// and GPA-direct pages, frames from the host TAP, link changes, close.

import GuestMemory
import Hypervisor
import SyntheticNetwork
import VMBusChannel
import VMBusWire

let networkVSPTarget = FuzzTarget(
    name: "netvsp",
    summary: "NetworkVSP.channelSignalled on NVSP/RNDIS (raw and structured, send buffer and GPA-direct), receive-buffer completions, host frames, setLink, close"
) { data in
    var r = FuzzReader(data)
    NetworkVSPFuzz.run(&r)
}

/// Maps the GPADL handles the harness hands the guest: handle = first page << 8 | page count.
final class FuzzGpadlMapper: GpadlMapper {
    let memory: GuestPhysicalMemory
    private(set) var maps = 0

    init(memory: GuestPhysicalMemory) { self.memory = memory }

    static func handle(first: Int, pages: Int) -> UInt32 { UInt32(first & 0x7F) << 8 | UInt32(pages & 0xFF) }

    func mapGPADL(_ handle: UInt32, relid: UInt32) throws -> PageMapping {
        let first = Int(handle >> 8) & 0x7F, count = Int(handle & 0xFF)
        guard relid == 1, handle >> 15 == 0, count > 0, first + count <= memory.pageCount else { throw GpadlError.unknownHandle(handle) }
        maps += 1
        return try memory.mapPages((first..<(first + count)).map { UInt64($0) })
    }
}

enum NetworkVSPFuzz {
    /// Guest pages: the receive buffer from 16, the send buffer from 64, GPA-direct messages from 80.
    static let receiveFirst = 16, sendFirst = 64, directFirst = 80
    static let mac: [UInt8] = [0x00, 0x15, 0x5D, 0x0F, 0x0F, 0x01]
    static let versions: [UInt32] = NVSPVersion.linuxPreference + [0x0001_0000, 0x0007_0000]
    static let oids: [UInt32] = [
        OID.currentPacketFilter, OID.offloadParameters, OID.receiveScaleParameters, OID.maximumFrameSize,
        OID.offloadHardwareCapabilities, OID.receiveScaleCapabilities, OID.permanentAddress, OID.friendlyName,
    ]

    static func run(_ r: inout FuzzReader) {
        fuzzMemory.reset()
        let setup = r.u8()
        let port = FuzzFramePort()
        port.acceptSends = setup & 0x10 == 0
        guard let channel = try? FuzzChannel(relid: 1, dataBytes: 32768) else { return }
        let mapper = FuzzGpadlMapper(memory: fuzzMemory.memory)
        let offers = FuzzSubChannels()
        let mtu = 576 + Int(r.u16()) % 8425
        let vsp = NetworkVSP(instanceID: GUID(low: 0x4E49_43, high: 1), port: port, mac: mac, mtu: mtu, logger: fuzzLogger)
        vsp.maximumQueues = 1 + Int(setup & 3)
        if setup & 4 == 0 { vsp.attach(memory: fuzzMemory.memory) }
        vsp.attach(gpadls: mapper)
        vsp.attach(subChannels: offers)
        if setup & 8 != 0 { vsp.setLink(up: false) }
        var isOpen = vsp.open(channel.endpoint, userData: []) == 0
        func signalDevice() { if isOpen { vsp.channelSignalled(channel.endpoint) } }
        // Receive sub-allocations the host offered (transfer-page packets) that the guest holds.
        var held: [UInt64] = []
        func collect(_ packets: [FuzzPacket]) {
            for p in packets where p.type == .dataUsingTransferPages && held.count < 256 { held.append(p.transactionID) }
        }
        var steps = 0
        while steps < 128 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 10 {
            case 0, 1:
                channel.send(FuzzPacketScript.read(&r, pages: fuzzMemory.pageCount, payloadLimit: 64))
                signalDevice()
            case 2, 3, 4:
                channel.send(structured(&r, op: op))
                signalDevice()
            case 5:
                // The guest returns receive sub-allocations it is done with (the input picks which;
                // now and then one twice, or one it never had).
                collect(channel.drain())
                let keep = r.u8()
                var kept: [UInt64] = []
                for (i, id) in held.enumerated() {
                    if (keep >> (i & 7)) & 1 != 0 {
                        kept.append(id)
                        continue
                    }
                    channel.send(FuzzPacket(type: .completion, flags: 0, transactionID: id, ext: [],
                                            payload: NVSPMessage.rndisPacketComplete(NVSPStatus.success).bytes))
                }
                if keep == 0xFF { channel.send(FuzzPacket(type: .completion, flags: 0, transactionID: r.u64(), ext: [], payload: [])) }
                held = kept
                signalDevice()
            case 6:
                // Frames from the host's TAP: a virtio header and the frame.
                let frames = 1 + Int(r.u8() % 4)
                for _ in 0..<frames {
                    var frame = r.padded(VirtioNetHeader.size)
                    frame += r.blob(limit: 1600)
                    if op & 0x80 != 0 { frame += [UInt8](repeating: 0x5A, count: Int(r.u16())) }
                    port.inbound.append(frame)
                }
                if isOpen { vsp.receiveFrames() }
                port.inbound.removeAll()
            case 7:
                vsp.setLink(up: op & 0x80 == 0)
            case 8:
                channel.tamper(&r)
                signalDevice()
            case 9:
                if op & 0x80 != 0 {
                    // Guest memory changes under the host (send buffer sections, GPA-direct pages).
                    let gpa = UInt64(sendFirst * 4096) + UInt64(r.u16()) * 8
                    fuzzMemory.poke(gpa: gpa, r.blob(limit: 256))
                } else {
                    if isOpen { vsp.close(channel.endpoint) }
                    isOpen = vsp.open(channel.endpoint, userData: []) == 0
                }
            default:
                break
            }
            collect(channel.drain(limit: 16))
        }
        if isOpen { vsp.close(channel.endpoint) }
        channel.drain()
        let c = vsp.counters
        fuzzConsume(c.rxFrames ^ c.txFrames ^ c.drops ^ c.protocolErrors ^ c.refusedPages ^ c.badOffloads ^ UInt64(vsp.version))
    }

    /// An NVSP message as netvsc sends it, values from the input.
    static func structured(_ r: inout FuzzReader, op: UInt8) -> FuzzPacket {
        var message: NVSPMessage
        var type = PacketType.dataInBand
        var ext: [UInt8] = []
        switch (op >> 4) % 8 {
        case 0:
            message = NVSPMessage(.initialize)
            let sel = r.u8()
            let version = versions[Int(sel) % versions.count]
            message.set(NVSPField.minVersion, sel & 0x80 != 0 ? r.u32() : version)
            message.set(NVSPField.maxVersion, version)
        case 1:
            message = NVSPMessage(.sendReceiveBuffer)
            let pages = 17 + r.below(40)
            message.set(NVSPField.gpadlHandle, r.u8() == 0xFF ? r.u32() : FuzzGpadlMapper.handle(first: receiveFirst, pages: pages))
            message.set16(NVSPField.bufferID, r.u8() == 0xFF ? r.u16() : NVSPMessage.receiveBufferID)
        case 2:
            message = NVSPMessage(.sendSendBuffer)
            message.set(NVSPField.gpadlHandle, FuzzGpadlMapper.handle(first: sendFirst, pages: 1 + r.below(16)))
            message.set16(NVSPField.bufferID, NVSPMessage.sendBufferID)
        case 3:
            let types: [NVSPMessageType] = [.revokeReceiveBuffer, .revokeSendBuffer, .sendNDISVersion, .sendNDISConfig, .switchDataPath,
                                            .sendVFAssociation, .sendIndirectionTable, .initializeComplete]
            message = NVSPMessage(types[Int(r.u8()) % types.count])
            message.set(4, r.u32())
            message.set(8, r.u32())
        case 4:
            message = NVSPMessage(.subChannel)
            message.set(NVSPField.subChannelOperation, r.u8() == 0xFF ? r.u32() : 1)
            message.set(NVSPField.subChannelCount, UInt32(r.u8() % 10))
        default:
            // SEND_RNDIS_PKT with RNDIS messages in a send-buffer section or in GPA-direct pages.
            let rndis = rndisMessages(&r)
            let control = r.bool()
            if op & 0x80 == 0 {
                let section = UInt32(r.u8() % 12)
                let gpa = UInt64(sendFirst * 4096) + UInt64(section) * UInt64(NVSPMessage.sendSectionSize)
                fuzzMemory.poke(gpa: gpa, Array(rndis.prefix(Int(NVSPMessage.sendSectionSize))))
                let size = r.u8() == 0xFF ? r.u32() : UInt32(min(rndis.count, Int(NVSPMessage.sendSectionSize)))
                message = NVSPMessage.rndisPacket(control: control, section: section, size: size)
            } else {
                let offset = UInt32(r.u16() % 4096)
                let gpa = UInt64(directFirst * 4096) + UInt64(offset)
                fuzzMemory.poke(gpa: gpa, rndis)
                let length = UInt32(max(rndis.count, 1))
                let pages = GpaRange.pageCount(byteCount: length, byteOffset: offset)
                var ranges = [GpaRange(byteCount: length, byteOffset: offset, pfns: (0..<pages).map { UInt64(directFirst + $0) })]
                if r.u8() & 3 == 0 { ranges += FuzzPacketScript.ranges(&r, pages: fuzzMemory.pageCount) }
                ext = GpaDirectHeader.extensionBytes(for: ranges)
                type = .dataUsingGPADirect
                message = NVSPMessage.rndisPacket(control: control)
            }
        }
        let payload = r.u8() & 7 == 0 ? Array(message.bytes.prefix(Int(r.u8() % 41))) : message.bytes
        return FuzzPacket(type: type, flags: PacketDescriptor.flagCompletionRequested, transactionID: UInt64(r.u16()), ext: ext,
                          payload: payload)
    }

    /// One to three RNDIS messages back to back: control requests netvsc sends, or data PACKETs.
    static func rndisMessages(_ r: inout FuzzReader) -> [UInt8] {
        var out: [UInt8] = []
        let count = 1 + Int(r.u8() % 3)
        for _ in 0..<count {
            let sel = r.u8()
            switch sel % 6 {
            case 0:
                out += RNDIS.initialize(requestID: r.u32(), maximumTransfer: r.u32())
            case 1, 2:
                let type = sel & 0x80 != 0 ? RNDISMessageType.set : RNDISMessageType.query
                let oid = oids[Int(r.u8()) % oids.count]
                var info = r.blob(limit: 600)
                if oid == OID.offloadParameters && info.count >= 22 && sel & 0x40 == 0 { info[0] = NDISOffloadParameters.objectType }
                out += RNDIS.request(type: type, requestID: r.u32(), oid: oid, info: info)
            case 3:
                out += packet(&r)
            case 4:
                let types = [RNDISMessageType.keepalive, RNDISMessageType.halt, RNDISMessageType.reset, RNDISMessageType.indicateStatus]
                out += RNDIS.message(type: types[Int(r.u8()) % types.count], body: RNDIS.words([r.u32()]))
            default:
                out += r.blob(limit: 256)
            }
        }
        return out
    }

    /// An RNDIS PACKET: header, per-packet info (checksum, LSO, VLAN, hash) and a frame.
    static func packet(_ r: inout FuzzReader) -> [UInt8] {
        let sel = r.u8()
        let info = PacketInfo(checksum: sel & 1 != 0 ? r.u32() : nil, lso: sel & 2 != 0 ? r.u32() : nil,
                              vlan: sel & 4 != 0 ? r.u32() : nil, hash: sel & 8 != 0 ? r.u32() : nil)
        let frame = r.blob(limit: 1600)
        let ppi = info.storedSize
        var out = [UInt8](repeating: 0, count: RNDIS.headerSize + RNDIS.packetBody + ppi + frame.count)
        out.withUnsafeMutableBytes { b in
            RNDISPacketHeader.store(to: b.baseAddress!, ppiLength: ppi, dataLength: frame.count)
            if ppi > 0 { info.store(to: b.baseAddress! + RNDIS.headerSize + RNDIS.packetBody) }
        }
        out.replaceSubrange((RNDIS.headerSize + RNDIS.packetBody + ppi)..<out.count, with: frame)
        if sel & 0x10 != 0 && out.count >= 36 {
            // A lying header: data or PPI offsets and lengths from the input.
            let fields = [4, 8, 12, 28, 32]
            out.putLE(r.u32(), at: fields[Int(sel >> 5) % fields.count])
        }
        return out
    }
}
