// NVSP, RNDIS, NDIS offload and PPI layouts pinned to the spec (H.2–H.8), and their decoders under hostile input.

import SyntheticNetwork
import Testing
import VMBusWire

@Suite("Network wire formats")
struct NetworkWireTests {
    @Test("NVSP versions, message types, statuses and sizes are Linux's")
    func nvspConstants() throws {
        #expect(NVSPVersion.linuxPreference == [0x0006_0001, 0x0006_0000, 0x0005_0000, 0x0004_0000, 0x0003_0002, 0x0000_0002])
        #expect(NVSPMessage.size == 40)
        let types: [(NVSPMessageType, UInt32, Int)] = [
            (.initialize, 1, 12), (.initializeComplete, 2, 16), (.sendNDISVersion, 100, 12), (.sendReceiveBuffer, 101, 10),
            (.sendReceiveBufferComplete, 102, 28), (.revokeReceiveBuffer, 103, 6), (.sendSendBuffer, 104, 10),
            (.sendSendBufferComplete, 105, 12), (.revokeSendBuffer, 106, 6), (.sendRNDISPacket, 107, 16),
            (.sendRNDISPacketComplete, 108, 8), (.sendNDISConfig, 125, 20), (.sendVFAssociation, 128, 12),
            (.switchDataPath, 129, 8), (.subChannel, 133, 12), (.sendIndirectionTable, 134, 12),
        ]
        for (type, code, size) in types {
            #expect(type.rawValue == code)
            #expect(NVSPMessage.minimumSize(of: type) == size)
            var raw = [UInt8](repeating: 0, count: size)
            raw.putLE(code, at: 0)
            #expect(try NVSPMessage(decoding: raw).type == type)
            #expect(throws: WireError.self) { try NVSPMessage(decoding: Array(raw.prefix(size - 1))) }
        }
        #expect(throws: WireError.unknownMessageType(3)) { try NVSPMessage(decoding: [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) }
        // SEND_RNDIS_PKT: channel type @4, section index @8, section size @12.
        let m = NVSPMessage.rndisPacket(control: true, section: 7, size: 1514)
        #expect(Array(m.bytes[0..<16]) == [107, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0xEA, 5, 0, 0])
        #expect(NVSPMessage.rndisPacket(control: false).u32(8) == 0xFFFF_FFFF)
        #expect(NVSPStatus.success == 1 && NVSPStatus.failure == 2 && NVSPStatus.invalidRNDISPacket == 5)
    }

    @Test("RNDIS messages: header, INIT_C 44-byte body, QUERY at offset 20, PACKET header 36 bytes")
    func rndisLayouts() throws {
        let initialize = RNDIS.initialize(requestID: 0x11)
        #expect(initialize == [2, 0, 0, 0, 24, 0, 0, 0, 0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0])
        var responder = RNDISResponder(mac: [2, 0, 0, 0, 0, 1], mtu: 1500)
        let (reply, effect) = responder.handle(try RNDISControlMessage(decoding: initialize))
        let initC = try RNDISControlMessage(decoding: try #require(reply))
        #expect(effect == .initialized && initC.type == 0x8000_0002 && initC.body.count == 44)
        #expect(initC.requestID == 0x11 && initC.u32(4) == 0 && initC.u32(8) == 1 && initC.u32(16) == 1 && initC.u32(32) == 3)
        let query = RNDIS.request(type: RNDISMessageType.query, requestID: 5, oid: OID.permanentAddress)
        #expect(query.count == 28 && query.le(UInt32.self, at: 20) == 20)
        let q = try RNDISControlMessage(decoding: try #require(responder.handle(try RNDISControlMessage(decoding: query)).reply))
        #expect(q.type == RNDISMessageType.queryComplete && q.u32(4) == 0 && q.u32(8) == 6 && q.u32(12) == 16)
        #expect(q.buffer(lengthAt: 8, offsetAt: 12) == [2, 0, 0, 0, 0, 1])
        var packet = [UInt8](repeating: 0xEE, count: 44 + 16)
        packet.withUnsafeMutableBytes { RNDISPacketHeader.store(to: $0.baseAddress!, ppiLength: 16, dataLength: 100) }
        #expect(Array(packet[0..<16]) == [1, 0, 0, 0, 160, 0, 0, 0, 52, 0, 0, 0, 100, 0, 0, 0])
        #expect(packet.le(UInt32.self, at: 28) == 36 && packet.le(UInt32.self, at: 32) == 16 && packet[44] == 0xEE)
        #expect(OID.offloadHardwareCapabilities == 0xFC01_020D && OID.permanentAddress == 0x0101_0101)
    }

    @Test("Every request gets an answer; unknown OIDs NOT_SUPPORTED; the packet filter and offloads are kept")
    func responderAnswers() throws {
        var r = RNDISResponder(mac: [2, 0, 0, 0, 0, 1], mtu: 9000)
        for oid in [OID.maximumFrameSize, OID.linkSpeed, OID.mediaConnectStatus, OID.friendlyName, OID.offloadHardwareCapabilities, 0x1234_5678] {
            let msg = try RNDISControlMessage(decoding: RNDIS.request(type: RNDISMessageType.query, requestID: oid, oid: oid))
            let reply = try RNDISControlMessage(decoding: try #require(r.handle(msg).reply))
            #expect(reply.requestID == oid)
            #expect(reply.u32(4) == (oid == 0x1234_5678 ? RNDISStatus.notSupported : RNDISStatus.success))
        }
        let set = try RNDISControlMessage(decoding: RNDIS.request(type: RNDISMessageType.set, requestID: 9, oid: OID.currentPacketFilter, info: [0x0D, 0, 0, 0]))
        let (reply, effect) = r.handle(set)
        #expect(effect == .packetFilterChanged && r.packetFilter == 0x0D)
        #expect(try RNDISControlMessage(decoding: try #require(reply)).u32(4) == 0)
        // A SET whose buffer lies outside the message is answered, with INVALID_DATA.
        var bad = RNDIS.request(type: RNDISMessageType.set, requestID: 10, oid: OID.currentPacketFilter, info: [1, 0, 0, 0])
        bad.putLE(UInt32(4000), at: 20)
        let badReply = try RNDISControlMessage(decoding: try #require(r.handle(try RNDISControlMessage(decoding: bad)).reply))
        #expect(badReply.requestID == 10 && badReply.u32(4) == RNDISStatus.invalidData)
        let keepalive = try RNDISControlMessage(decoding: RNDIS.message(type: RNDISMessageType.keepalive, body: RNDIS.words([77])))
        #expect(try RNDISControlMessage(decoding: try #require(r.handle(keepalive).reply)).type == RNDISMessageType.keepaliveComplete)
        #expect(r.handle(try RNDISControlMessage(decoding: RNDIS.message(type: RNDISMessageType.halt, body: RNDIS.words([1])))).reply == nil)
        #expect(!r.initialized && r.packetFilter == 0)
    }

    @Test("NDIS_OFFLOAD is 112/144/156 bytes by NVSP version; offload parameters 22/28; LSO and checksum bits")
    func offloadStructures() throws {
        #expect(NDISOffload.capabilities(nvsp: NVSPVersion.v61).count == 156)
        #expect(NDISOffload.capabilities(nvsp: NVSPVersion.v4).count == 144)
        #expect(NDISOffload.capabilities(nvsp: NVSPVersion.v2).count == 112)
        let caps = NDISOffload.capabilities(nvsp: NVSPVersion.v5)
        #expect(caps[0] == 0xA7 && caps[1] == 3 && caps.le(UInt16.self, at: 2) == 156 && NDISOffload.isValid(caps))
        // Linux's tests: ip4_txcsum has TCP4 | TCP4OPT; LSOv2 ip4 encap 802.3; ip6 options IP6EXT | TCP6OPT; RSC both.
        #expect(caps.le(UInt32.self, at: 8) & 0x14 == 0x14 && caps.le(UInt32.self, at: 80) & 2 == 2)
        #expect(caps.le(UInt32.self, at: 104) & 5 == 5 && caps[144] == 1 && caps[145] == 1)
        var p = NDISOffloadParameters()
        p.tcp4Checksum = 4
        p.lsoV2IPv4 = 2
        p.rscIPv6 = 2
        let wire = p.encode(nvsp: NVSPVersion.v61)
        #expect(wire.count == 28 && wire[0] == 0x80 && wire[1] == 3 && wire[5] == 4 && wire[11] == 2 && wire[23] == 2)
        #expect(try NDISOffloadParameters(decoding: wire) == p)
        #expect(p.encode(nvsp: NVSPVersion.v4).count == 22)
        #expect(throws: WireError.self) { try NDISOffloadParameters(decoding: Array(wire.prefix(21))) }
        #expect(LSOInfo.make(mss: 1448, tcpHeaderOffset: 34, ipv6: false) == 0x4000_0000 | 34 << 20 | 1448)
        #expect(LSOInfo.make(mss: 1428, tcpHeaderOffset: 54, ipv6: true) >> 31 == 1)
    }

    @Test("PPIs round-trip in Linux's order and bad records are refused")
    func perPacketInfo() throws {
        let info = PacketInfo(checksum: 0x22_0005, lso: nil, vlan: 0x0064, hash: 0xDEAD_BEEF)
        var raw = [UInt8](repeating: 0, count: info.storedSize)
        raw.withUnsafeMutableBytes { _ = info.store(to: $0.baseAddress!) }
        #expect(raw.count == 48 && raw.le(UInt32.self, at: 4) == 8 && raw.le(UInt32.self, at: 20) == 6 && raw.le(UInt32.self, at: 36) == 0)
        #expect(raw.le(UInt32.self, at: 0) == 16 && raw.le(UInt32.self, at: 8) == 12)
        #expect(raw.withUnsafeBytes { PerPacketInfo.parse($0.baseAddress!, length: $0.count) } == info)
        var broken = raw
        broken.putLE(UInt32(400), at: 16)  // a size beyond the list
        #expect(broken.withUnsafeBytes { PerPacketInfo.parse($0.baseAddress!, length: $0.count) } == nil)
        var rng = SplitMix64(state: 3)
        for _ in 0..<50_000 {
            let junk = rng.bytes(Int(rng.next() % 80))
            _ = junk.withUnsafeBytes { PerPacketInfo.parse($0.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, length: $0.count) }
            _ = try? NVSPMessage(decoding: junk)
            _ = try? RNDISControlMessage(decoding: junk)
            _ = try? NDISOffloadParameters(decoding: junk)
        }
    }

    @Test("LSO: a TAP's GSO frame becomes NDIS LSO form in the guest and is restored byte for byte on the host")
    func lsoRoundTrip() throws {
        for ipv6 in [false, true] {
            let original = tcpFrame(payload: 20_000, ipv6: ipv6)
            var frame = original
            var v = VirtioNetHeader()
            v.flags = VirtioNetHeader.needsChecksum
            v.gsoType = ipv6 ? VirtioNetHeader.gsoTCPv6 : VirtioNetHeader.gsoTCPv4
            v.gsoSize = 1448
            v.checksumStart = UInt16(ipv6 ? 54 : 34)
            v.checksumOffset = 16
            let info = try #require(frame.withUnsafeMutableBytes {
                OffloadTranslation.packetInfo(transmit: v, headers: UnsafeMutableRawBufferPointer(rebasing: $0[0..<192]), frameLength: original.count)
            })
            #expect(info.lso == LSOInfo.make(mss: 1448, tcpHeaderOffset: ipv6 ? 54 : 34, ipv6: ipv6))
            // NDIS form: lengths and the IPv4 header checksum zero, TCP seed without the length.
            #expect(ipv6 ? frame[18] == 0 && frame[19] == 0 : frame[16] == 0 && frame[17] == 0 && frame[24] == 0 && frame[25] == 0)
            let back = try #require(frame.withUnsafeMutableBytes {
                OffloadTranslation.virtioHeader(transmit: info, headers: UnsafeMutableRawBufferPointer(rebasing: $0[0..<192]), frameLength: original.count)
            })
            #expect(frame == original)
            #expect(back.gsoType == v.gsoType && back.gsoSize == 1448 && back.checksumStart == v.checksumStart && back.checksumOffset == 16)
            #expect(back.headerLength == v.checksumStart + 20 && back.flags == VirtioNetHeader.needsChecksum)
        }
        // An LSO request that does not match the frame is refused, not trusted.
        var frame = tcpFrame(payload: 100)
        let wrong = PacketInfo(lso: LSOInfo.make(mss: 1448, tcpHeaderOffset: 90, ipv6: false))
        #expect(frame.withUnsafeMutableBytes {
            OffloadTranslation.virtioHeader(transmit: wrong, headers: UnsafeMutableRawBufferPointer(rebasing: $0[0..<154]), frameLength: 154)
        } == nil)
    }
}
