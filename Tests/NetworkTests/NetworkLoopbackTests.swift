// netvsc against netvsp in memory: initialization, both data paths, link state, and hostile traffic both ways.

import GuestMemory
import Hypervisor
import Loopback
import SyntheticNetwork
import Testing
import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

@Suite("Synthetic network in memory")
struct NetworkLoopbackTests {
    @Test("Initialization: NVSP 6.1, buffers, RNDIS, MAC and MTU from the host, offloads and packet filter set")
    func initialization() throws {
        let m = try NICMachine(mtu: 9000)
        #expect(m.client.state == .ready && m.client.version == NVSPVersion.v61 && m.vsp.version == NVSPVersion.v61)
        #expect(m.client.mac == [0x00, 0x15, 0x5D, 0x0A, 0x0B, 0x0C] && m.client.mtu == 9000 && m.client.linkUp)
        #expect(m.vsp.rndis.initialized && m.vsp.rndis.packetFilter == 0x0D)
        #expect(m.port.offload == TunOffload.checksum | TunOffload.tso4 | TunOffload.tso6 | TunOffload.tsoECN)
    }

    @Test("Every NVSP version Linux tries (1 … 6.1) initializes, with the offload structure of its revision, and moves frames")
    func everyVersion() throws {
        for version in NVSPVersion.linuxPreference {
            let m = try NICMachine(versions: [version])
            #expect(m.client.state == .ready && m.client.version == version && m.vsp.version == version)
            #expect(m.client.offloadCapabilities.count == NDISOffload.revision(nvsp: version).size)
            let f = tcpFrame(payload: 700, seed: UInt64(version))
            #expect(try m.transmit(f))
            try m.machine.run(until: { m.port.sent.last?.frame == f }, "a frame at NVSP 0x\(String(version, radix: 16))")
            m.port.inbound.append((VirtioNetHeader(), f))
            m.vsp.receiveFrames()
            try m.machine.run(until: { m.received.count == 1 }, "a frame in the guest")
        }
        // A guest offering only versions the host does not speak gets no adapter.
        let m = try? NICMachine(versions: [0x0007_0000])
        #expect(m?.client.state != .ready)
    }

    @Test("Guest → host: small frames through send sections, large LSO frames through GPA pages, bytes intact")
    func transmit() throws {
        let m = try NICMachine()
        var frames: [[UInt8]] = []
        for i in 0..<300 {
            let f = tcpFrame(payload: 40 + i * 3, seed: UInt64(i))
            frames.append(f)
            #expect(try m.transmit(f))
        }
        var v = VirtioNetHeader()
        v.flags = VirtioNetHeader.needsChecksum
        v.gsoType = VirtioNetHeader.gsoTCPv4
        v.gsoSize = 1448
        v.checksumStart = 34
        v.checksumOffset = 16
        let big = tcpFrame(payload: 60_000, seed: 99)
        #expect(try m.transmit(big, v))
        try m.machine.run(until: { m.port.sent.count == 301 }, "frames at the port")
        #expect(m.port.sent.prefix(300).map(\.frame) == frames)
        #expect(m.port.sent[300].frame == big && m.port.sent[300].header.gsoType == VirtioNetHeader.gsoTCPv4)
        #expect(m.vsp.counters.txFrames == 301 && m.vsp.counters.protocolErrors == 0)
        // Every slot and section came back with the host's completions.
        var slots: [Int] = []
        while let s = m.client.takeSlot() { slots.append(s.index) }
        #expect(slots.count == m.client.slotCount)
    }

    @Test("Host → guest: frames land in receive sub-allocations, checksum verdicts travel, sub-allocations recycle")
    func receive() throws {
        let m = try NICMachine()
        var expected: [[UInt8]] = []
        for round in 0..<4 {
            for i in 0..<200 {
                let f = tcpFrame(payload: 1000 + i, seed: UInt64(round * 1000 + i))
                var v = VirtioNetHeader()
                v.flags = VirtioNetHeader.dataValid
                m.port.inbound.append((v, f))
                expected.append(f)
            }
            m.vsp.receiveFrames()
            try m.machine.run(until: { m.received.count == expected.count }, "frames in the guest")
        }
        #expect(m.received.map(\.frame) == expected)
        #expect(m.received.allSatisfy { $0.info.checksum == ChecksumInfo.tcpSucceeded | ChecksumInfo.ipSucceeded })
        #expect(m.vsp.counters.rxFrames == 800 && m.client.counters.protocolErrors == 0)
    }

    @Test("Multi-queue: RSS capabilities, SUBCHANNEL allocation, frames both ways on every queue")
    func multiQueue() throws {
        let m = try NICMachine(queues: 2)
        #expect(m.client.grantedSubChannels == 1 && m.client.queueCount == 2 && m.queuePorts.count == 1)
        for queue in 0..<2 {
            for i in 0..<100 { #expect(try m.transmit(tcpFrame(payload: 100 + i, seed: UInt64(i)), queue: queue)) }
            let big = tcpFrame(payload: 9000, seed: 5)
            #expect(try m.transmit(big, queue: queue))
        }
        try m.machine.run(until: { m.port.sent.count + m.queuePorts[0].sent.count == 202 }, "frames at both ports")
        #expect(m.port.sent.count == 101 && m.queuePorts[0].sent.count == 101)
        for i in 0..<300 {
            (i % 2 == 0 ? m.port : m.queuePorts[0]).inbound.append((VirtioNetHeader(), tcpFrame(payload: 500, seed: UInt64(i))))
        }
        // 300 frames need more than the 252 receive sub-allocations: they recycle as the guest completes.
        for _ in 0..<10 where m.received.count < 300 {
            m.vsp.receiveFrames()
            _ = m.machine.pump()
        }
        #expect(m.received.count == 300)
        #expect(m.receivedQueues.filter { $0 == 1 }.count == 150)
        #expect(m.vsp.counters.protocolErrors == 0 && m.client.counters.protocolErrors == 0)
    }

    @Test("Link down is indicated to the guest and drops frames; link up restores both")
    func link() throws {
        let m = try NICMachine()
        m.vsp.setLink(up: false)
        _ = m.machine.pump()
        #expect(m.linkChanges == [false] && !m.client.linkUp && !m.port.carrier)
        #expect(try m.transmit(tcpFrame(payload: 10)))
        _ = m.machine.pump()
        #expect(m.port.sent.isEmpty && m.vsp.counters.drops == 1)
        m.port.inbound.append((VirtioNetHeader(), tcpFrame(payload: 10)))
        m.vsp.receiveFrames()
        _ = m.machine.pump()
        #expect(m.received.isEmpty)
        m.vsp.setLink(up: true)
        m.vsp.receiveFrames()
        _ = m.machine.pump()
        #expect(m.linkChanges == [false, true] && m.port.carrier && m.received.count == 1)
    }

    @Test("Hostile guest: random NVSP packets, sections and GPA ranges never crash the host, which keeps working")
    func hostileGuest() throws {
        let m = try NICMachine()
        let endpoint = try #require(m.client.channel.endpoint)
        var rng = SplitMix64(state: 42)
        for i in 0..<20_000 {
            var payload = rng.bytes(Int(rng.next() % 48))
            if payload.count >= 4 && i % 2 == 0 { payload.putLE(UInt32([1, 100, 101, 104, 107, 107, 125, 129, 133][Int(rng.next() % 9)]), at: 0) }
            if payload.count >= 16 && i % 4 == 0 { payload.putLE(UInt32(rng.next() % 200), at: 8) }
            let written: Bool
            switch i % 3 {
            case 0:
                written = (try? endpoint.writer.tryWrite(type: .dataInBand, flags: 1, transactionID: rng.next(), payload: payload)) ?? false
            case 1:
                let range = GpaRange(byteCount: UInt32(rng.next() % 9000), byteOffset: UInt32(rng.next() % 4096),
                                     pfns: (0..<3).map { _ in rng.next() % 40_000 })
                var ext = GpaDirectHeader.extensionBytes(for: [range])
                if i % 7 == 0 { ext.putLE(UInt32(rng.next() % 9), at: 4) }
                written = (try? endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: 1, transactionID: rng.next(), extension: ext,
                                                         payload: payload)) ?? false
            default:
                written = (try? endpoint.writer.tryWrite(type: .completion, transactionID: rng.next() % 300, payload: payload)) ?? false
            }
            if !written || i % 64 == 0 {
                endpoint.commitWrites()
                _ = m.machine.pump()
            }
        }
        endpoint.commitWrites()
        _ = m.machine.pump()
        #expect(m.vsp.counters.protocolErrors > 0)
        // Random RNDIS streams in send sections.
        let before = m.port.sent.count
        for i in 0..<2000 {
            let junk = rng.bytes(1 + Int(rng.next() % 300))
            let slot = try #require(m.client.takeSlot())
            junk.withUnsafeBytes { slot.frame.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            // A packet whose PPI list and data offsets are garbage.
            var info = PacketInfo()
            if i % 2 == 0 { info.lso = UInt32(truncatingIfNeeded: rng.next()) } else { info.checksum = UInt32(truncatingIfNeeded: rng.next()) }
            if !m.client.send(slot: slot.index, length: junk.count, info: info) { m.client.returnSlot(slot.index) }
            m.client.flush()
            _ = m.machine.pump()
        }
        // Still a working NIC.
        let f = tcpFrame(payload: 64)
        #expect(try m.transmit(f))
        try m.machine.run(until: { m.port.sent.last?.frame == f }, "a good frame after the junk")
        #expect(m.port.sent.count > before)
    }

    @Test("Hostile host: an MTU of 2^31 or under 68 fails the NIC with a message (2^31 used to trap in the agent's TAP set-up)")
    func hostileMTU() throws {
        for mtu in [1 << 31, Int(UInt32.max), 67] {
            let m = try NICMachine(mtu: mtu)
            guard case .failed(let why) = m.client.state else {
                Issue.record("MTU \(mtu): state \(m.client.state)")
                continue
            }
            #expect(why.contains("MTU \(mtu)"), "\(why)")
        }
        #expect(try NICMachine(mtu: 65521).client.mtu == 65521)
    }

    @Test("Hostile host: random transfer-page packets and receive-buffer contents never crash the guest")
    func hostileHost() throws {
        let m = try NICMachine()
        let channel = try #require(m.machine.server.channels.values.first { $0.device === m.vsp })
        let endpoint = try #require(channel.endpoint)
        var rng = SplitMix64(state: 7)
        for i in 0..<20_000 {
            let ranges = (0..<Int(rng.next() % 4)).map { _ in
                TransferPageHeader.Range(byteCount: UInt32(rng.next() % 70_000), byteOffset: UInt32(rng.next() % (17 << 20)))
            }
            var ext = TransferPageHeader.extensionBytes(pageSetID: i % 5 == 0 ? 1 : 0xCAFE, ranges: ranges)
            if i % 9 == 0 { ext.putLE(UInt32(rng.next() % 1000), at: 4) }
            let payload = rng.bytes(Int(rng.next() % 48))
            let type: PacketType = i % 3 == 0 ? .completion : .dataUsingTransferPages
            if (try? endpoint.writer.tryWrite(type: type, flags: 1, transactionID: rng.next(), extension: type == .completion ? [] : ext,
                                              payload: payload)) != true || i % 32 == 0 {
                endpoint.commitWrites()
                _ = m.machine.pump()
            }
        }
        endpoint.commitWrites()
        _ = m.machine.pump()
        #expect(m.client.counters.protocolErrors > 0)
    }
}
