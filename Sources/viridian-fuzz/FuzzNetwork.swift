// Targets "nvsp-rndis" and "offload": NVSP and RNDIS decoding with the host's RNDIS responder as a
// state machine, per-packet info, NDIS offload structures, and the offload translation between
// RNDIS per-packet info and virtio_net_hdr.

import SyntheticNetwork
import VMBusWire

let nvspRNDISTarget = FuzzTarget(
    name: "nvsp-rndis",
    summary: "NVSPMessage decoding; RNDISControlMessage and its buffers; RNDISResponder.handle sequences (every reply well formed); PPIs; NDIS offload structures"
) { data in
    var r = FuzzReader(data)
    NetworkWireFuzz.run(&r)
}

let offloadTarget = FuzzTarget(
    name: "offload",
    summary: "OffloadTranslation.virtioHeader/packetInfo/receiveInfo on frame headers, PPIs and virtio headers from the input"
) { data in
    var r = FuzzReader(data)
    OffloadFuzz.run(&r)
}

enum NetworkWireFuzz {
    static let oids: [UInt32] = [
        OID.maximumFrameSize, OID.linkSpeed, OID.currentPacketFilter, OID.mediaConnectStatus, OID.receiveScaleCapabilities,
        OID.receiveScaleParameters, OID.friendlyName, OID.rndisConfigParameter, OID.permanentAddress, OID.currentAddress,
        OID.offloadParameters, OID.offloadHardwareCapabilities,
    ]
    static let types: [UInt32] = [
        RNDISMessageType.initialize, RNDISMessageType.halt, RNDISMessageType.query, RNDISMessageType.set,
        RNDISMessageType.reset, RNDISMessageType.keepalive, RNDISMessageType.indicateStatus, RNDISMessageType.setEx,
        RNDISMessageType.packet, RNDISMessageType.queryComplete,
    ]

    static func run(_ r: inout FuzzReader) {
        let setup = r.u8()
        let mtu = 576 + Int(r.u16()) % 8425
        var responder = RNDISResponder(mac: [0x00, 0x15, 0x5D, 0x01, 0x02, 0x03], mtu: mtu)
        responder.nvspVersion = NVSPVersion.linuxPreference[Int(setup % 6)]
        responder.receiveQueues = 1 + Int(setup >> 4) % 8
        responder.linkUp = setup & 8 == 0
        var steps = 0
        while steps < 64 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 7 {
            case 0:
                nvsp(r.blob(limit: 64))
            case 1:
                control(r.blob(limit: 4096), &responder)
            case 2:
                // A QUERY or SET as netvsc builds it, the OID and information buffer from the input.
                let type = op & 0x80 != 0 ? RNDISMessageType.set : RNDISMessageType.query
                let sel = r.u8()
                let oid = sel & 0x80 != 0 ? r.u32() : oids[Int(sel) % oids.count]
                var message = RNDIS.request(type: type, requestID: r.u32(), oid: oid, info: r.blob(limit: 700))
                if op & 0x40 != 0 && message.count >= 24 {
                    let field = 16 + 4 * Int(r.u8() % 2)  // information buffer length or offset
                    message.putLE(r.u32(), at: field)
                }
                control(message, &responder)
            case 3:
                // A header with a chosen type and length in front of bytes from the input.
                var message = RNDIS.message(type: types[Int(op >> 4) % types.count], body: r.blob(limit: 256))
                if op & 0x08 != 0 { message.putLE(r.u32(), at: 4) }
                control(message, &responder)
            case 4:
                perPacketInfo(r.blob(limit: 300))
            case 5:
                offloadStructures(r.blob(limit: 200), nvsp: r.u32())
            default:
                let body = r.padded(RNDIS.packetBody)
                let h = body.withUnsafeBytes { RNDISPacketHeader(body: $0.baseAddress!) }
                fuzzConsume(UInt64(h.dataOffset) ^ UInt64(h.dataLength) ^ UInt64(h.perPacketInfoOffset) ^ UInt64(h.perPacketInfoLength))
                fuzzConsume(responder.linkIndication)
            }
        }
        fuzzConsume(UInt64(responder.packetFilter) ^ UInt64(responder.initialized ? 1 : 0) ^ UInt64(responder.offload.receiveChecksum ? 2 : 0))
    }

    static func nvsp(_ bytes: [UInt8]) {
        guard let m = try? NVSPMessage(decoding: bytes) else {
            bytes.withUnsafeBytes { _ = try? NVSPMessage(decoding: $0) }
            return
        }
        fuzzCheck(m.bytes.count == NVSPMessage.size, "NVSP message of \(m.bytes.count) bytes")
        fuzzCheck(bytes.count >= NVSPMessage.minimumSize(of: m.type), "short \(m.type) accepted")
        for offset in stride(from: 4, through: 36, by: 4) { fuzzConsume(UInt64(m.u32(offset))) }
        fuzzConsume(m.u64(32) ^ UInt64(m.u16(NVSPField.bufferID)))
        let again = bytes.withUnsafeBytes { try? NVSPMessage(decoding: $0) }
        fuzzCheck(again == m, "NVSP decoders disagree")
    }

    /// Every RNDIS message in `buffer`, back to back, through the responder.
    static func control(_ buffer: [UInt8], _ responder: inout RNDISResponder) {
        var offset = 0
        var count = 0
        while offset < buffer.count && count < 32 {
            count += 1
            let rest = Array(buffer[offset...])
            guard let m = try? RNDISControlMessage(decoding: rest) else { return }
            fuzzCheck(RNDIS.headerSize + m.body.count == Int(rest.le(UInt32.self, at: 4)), "RNDIS body does not match msg_len")
            for (length, at) in [(8, 12), (4, 8), (16, 20), (12, 16)] {
                if let b = m.buffer(lengthAt: length, offsetAt: at) {
                    fuzzCheck(b.count <= m.body.count, "an RNDIS buffer larger than its message")
                }
            }
            let (reply, effect) = responder.handle(m)
            fuzzConsume(UInt64(effect == .none ? 0 : 1))
            if let reply {
                let decoded = try? RNDISControlMessage(decoding: reply)
                fuzzCheck(decoded != nil && decoded?.body.count == reply.count - RNDIS.headerSize, "the responder's reply is malformed")
                if [RNDISMessageType.initialize, RNDISMessageType.query, RNDISMessageType.set, RNDISMessageType.keepalive].contains(m.type) {
                    fuzzCheck(decoded?.requestID == m.requestID, "a reply for another request")
                    fuzzCheck(decoded?.type == m.type | RNDISMessageType.completion, "a reply of the wrong type")
                }
                fuzzCheck(reply.count <= RNDIS.maximumControlMessage, "a reply of \(reply.count) bytes")
            }
            offset += RNDIS.headerSize + m.body.count
        }
    }

    static func perPacketInfo(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let parsed = bytes.withUnsafeBytes { PerPacketInfo.parse($0.baseAddress!, length: $0.count) }
        guard let info = parsed else { return }
        // What parses stores back as records that parse to the same values.
        var stored = [UInt8](repeating: 0, count: info.storedSize)
        let n = stored.withUnsafeMutableBytes { info.storedSize == 0 ? 0 : info.store(to: $0.baseAddress!) }
        fuzzCheck(n == info.storedSize, "stored \(n) PPI bytes for \(info.storedSize)")
        if !stored.isEmpty {
            let again = stored.withUnsafeBytes { PerPacketInfo.parse($0.baseAddress!, length: $0.count) }
            fuzzCheck(again == info, "PPIs do not survive store and parse")
        }
        fuzzConsume(UInt64(LSOInfo.mss(info.lso ?? 0)) ^ UInt64(LSOInfo.tcpHeaderOffset(info.lso ?? 0)))
        fuzzConsume(UInt64(ChecksumInfo.tcpHeaderOffset(info.checksum ?? 0)))
    }

    static func offloadStructures(_ bytes: [UInt8], nvsp: UInt32) {
        fuzzConsume(UInt64(NDISOffload.isValid(bytes) ? 1 : 0))
        fuzzCheck(NDISOffload.isValid(NDISOffload.capabilities(nvsp: nvsp)), "the host's own capabilities are not valid")
        if let p = try? NDISOffloadParameters(decoding: bytes) {
            let encoded = p.encode(nvsp: nvsp)
            fuzzCheck(encoded.count == (nvsp >= NVSPVersion.v5 ? 28 : 22), "offload parameters of \(encoded.count) bytes")
            fuzzConsume(UInt64(p.receiveChecksum ? 1 : 0))
            if nvsp >= NVSPVersion.v5 { fuzzCheck((try? NDISOffloadParameters(decoding: encoded)) == p, "offload parameters do not survive") }
        }
        fuzzConsume(NDISReceiveScale.capabilities(queues: Int(nvsp % 64)))
    }
}

enum OffloadFuzz {
    /// The private copy of a frame's first bytes that the translation rewrites.
    static let headers = FuzzPages(bytes: 4096)

    static func run(_ r: inout FuzzReader) {
        let sel = r.u8()
        let info = PacketInfo(checksum: sel & 1 != 0 ? r.u32() : nil, lso: sel & 2 != 0 ? r.u32() : nil,
                              vlan: sel & 4 != 0 ? r.u32() : nil, hash: sel & 8 != 0 ? r.u32() : nil)
        let vnetBytes = r.padded(VirtioNetHeader.size)
        let vnet = vnetBytes.withUnsafeBytes { VirtioNetHeader(loading: $0.baseAddress!) }
        // A frame of `length` bytes whose first bytes (up to 192) are the input's.
        let length = sel & 0x80 != 0 ? Int(r.u16()) : 14 + Int(r.u8())
        let head = min(length, OffloadTranslation.headerBytes)
        let bytes = r.padded(head)
        let mtu = NetworkClient.mtuRange.lowerBound + Int(r.u16()) % (NetworkClient.mtuRange.count)
        func load() { bytes.withUnsafeBytes { if head > 0 { headers.base.copyMemory(from: $0.baseAddress!, byteCount: head) } } }
        let h = UnsafeMutableRawBufferPointer(start: headers.base, count: head)

        // Host transmit (the guest's RNDIS packet to a TAP).
        load()
        if let v = OffloadTranslation.virtioHeader(transmit: info, headers: h, frameLength: length) { check(v, length: length) }
        // Guest transmit (a TAP read to an RNDIS packet).
        load()
        if let out = OffloadTranslation.packetInfo(transmit: vnet, headers: h, frameLength: length) {
            fuzzConsume(UInt64(out.storedSize))
            if let lso = out.lso { fuzzCheck(LSOInfo.tcpHeaderOffset(lso) + 20 <= head, "LSO header offset past the headers") }
        }
        // Receive, both ends.
        load()
        let receive = OffloadTranslation.receiveInfo(vnet, headers: UnsafeRawBufferPointer(rebasing: h[0..<min(head, 128)]))
        fuzzConsume(UInt64(receive.checksum ?? 0))
        let v = OffloadTranslation.virtioHeader(receive: info, headers: UnsafeRawBufferPointer(h), frameLength: length, mtu: mtu)
        check(v, length: length)
        var stored = [UInt8](repeating: 0, count: VirtioNetHeader.size)
        stored.withUnsafeMutableBytes { v.store(to: $0.baseAddress!) }
        fuzzCheck(stored.withUnsafeBytes { VirtioNetHeader(loading: $0.baseAddress!) } == v, "virtio header does not survive store and load")
    }

    /// A checksum request must lie inside the frame.
    static func check(_ v: VirtioNetHeader, length: Int) {
        if v.flags & VirtioNetHeader.needsChecksum != 0 {
            fuzzCheck(Int(v.checksumStart) + Int(v.checksumOffset) + 2 <= length, "checksum at \(v.checksumStart)+\(v.checksumOffset) in a \(length)-byte frame")
        }
        fuzzCheck(Int(v.headerLength) <= max(length, 0), "header length \(v.headerLength) in a \(length)-byte frame")
    }
}
