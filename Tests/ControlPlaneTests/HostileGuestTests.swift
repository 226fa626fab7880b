// A guest that posts garbage, breaks the GPADL and ring rules, or corrupts its rings: the host keeps serving.

import EchoDevice
import GuestMemory
import Hypervisor
import Loopback
import Testing
import VMBusClient
import VMBusRing
import VMBusWire

@Suite("Hostile guests")
struct HostileGuestTests {
    /// Posts raw bytes as a channel message from VP 0.
    func post(_ machine: LoopbackMachine, _ payload: [UInt8], connection: UInt32 = 1) throws -> HvStatus {
        let bytes = try PostMessageInput(connectionID: connection, payload: payload).encode()
        try machine.memory.buffer(gpa: 0x1F0_0000, count: 256).copyBytes(from: bytes)
        return machine.partition.hypercall(vp: 0, control: HypercallControl(.postMessage).rawValue, input: 0x1F0_0000, output: 0).status
    }

    @Test("100k random channel messages do not break a connected server")
    func randomMessages() throws {
        let (machine, echo) = try echoMachine()
        var state: UInt64 = 99
        func rnd() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 11
        }
        for _ in 0..<100_000 {
            var bytes = (0..<Int(rnd() % 241)).map { _ in UInt8(truncatingIfNeeded: rnd()) }
            if bytes.count >= 8 {
                // Valid types (not INITIATE_CONTACT or UNLOAD, which legitimately reset) with random fields.
                let types: [UInt32] = [3, 5, 7, 8, 9, 11, 13, 21, 22, UInt32(truncatingIfNeeded: rnd())]
                bytes.putLE(types[Int(rnd() % UInt64(types.count))], at: 0)
                if bytes.count >= 12 && rnd() % 2 == 0 { bytes.putLE(UInt32(rnd() % 4), at: 8) }
            }
            _ = try post(machine, bytes)
            machine.pump()
        }
        #expect(machine.server.malformedMessages > 0)
        // Still connected, still serving: open the echo channel and move packets.
        #expect(machine.server.connection != nil)
        if let channel = machine.client.channels[1], channel.state == .offered {
            let client = try openEcho(machine)
            try exchange(machine, client, count: 100)
            #expect(echo.packetsEchoed == 100)
        }
    }

    @Test("GPADL and open misuse gets failure statuses, not crashes")
    func protocolMisuse() throws {
        let (machine, _) = try echoMachine()
        let channel = try #require(machine.client.channels[1])
        // Ring GPADL pointing outside guest memory.
        let pages = UInt64(machine.memory.pageCount)
        let header = GpadlHeader(childRelid: 1, gpadl: 0x500, rangeBufferLength: 24, rangeCount: 1, words: [8192, pages, pages + 1])
        _ = try post(machine, header.encode())
        #expect(machine.server.gpadls.entries[0x500] == nil)
        // OPENCHANNEL on a GPADL that does not exist, then on a relid that does not exist.
        _ = try post(machine, OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 0x999, targetVP: 0, downstreamRingBufferPageOffset: 2).encode())
        _ = try post(machine, OpenChannel(childRelid: 77, openID: 1, ringBufferGPADL: 0x999, targetVP: 0, downstreamRingBufferPageOffset: 2).encode())
        #expect(machine.server.channels[1]?.state == .offered)
        // A ring GPADL whose split leaves one side without data pages.
        let ok = GpadlHeader(childRelid: 1, gpadl: 0x600, rangeBufferLength: 32, rangeCount: 1, words: [3 * 4096, 100, 101, 102])
        _ = try post(machine, ok.encode())
        #expect(machine.server.gpadls.entries[0x600]?.isComplete == true)
        _ = try post(machine, OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 0x600, targetVP: 0, downstreamRingBufferPageOffset: 1).encode())
        _ = try post(machine, OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 0x600, targetVP: 9, downstreamRingBufferPageOffset: 2).encode())
        #expect(machine.server.channels[1]?.state == .offered)
        // Messages on the wrong connection after a 5.x negotiation.
        #expect(try post(machine, RequestOffers().encode(), connection: 4) == .invalidConnectionID)
        machine.pump()
        // The real client can still open the channel.
        _ = channel
        let client = try openEcho(machine)
        try exchange(machine, client, count: 10)
    }

    @Test("A guest that corrupts its outbound ring only loses that channel")
    func corruptRing() throws {
        let (machine, echo) = try echoMachine()
        let client = try openEcho(machine)
        try exchange(machine, client, count: 10)
        // Scribble an unaligned write index into the guest→host ring and signal.
        let ring = client.channel.endpoint!.writer.ring
        ring.control.storeBytes(of: UInt32(13), toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
        let signal = HypercallControl(.signalEvent, fast: true).rawValue
        _ = machine.partition.hypercall(vp: 0, control: signal, input: UInt64(client.channel.offer.connectionID), output: 0)
        #expect(echo.protocolErrors == 1)
        #expect(machine.server.connection != nil)
    }

    @Test("Malformed host messages are dropped by the guest")
    func hostileHost() throws {
        let (machine, _) = try echoMachine()
        let before = machine.client.malformedMessages
        machine.partition.synics[0].postMessage(sint: 2, payload: [1, 0, 0, 0, 0, 0, 0, 0, 1, 2])
        machine.partition.synics[0].postMessage(sint: 2, payload: [0xFF, 0, 0, 0, 0, 0, 0, 0])
        machine.partition.synics[0].postMessage(sint: 2, payload: OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 1, targetVP: 0, downstreamRingBufferPageOffset: 2).encode())
        machine.pump()
        #expect(machine.client.malformedMessages == before + 3)
        #expect(machine.client.channels.count == 1)
    }
}
