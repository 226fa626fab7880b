// Whole VMBus sessions in memory: negotiation at every version, offers, a 2 MiB ring GPADL, echo traffic,
// close, teardown, rescind, unload and reconnect.

import EchoDevice
import GuestMemory
import Hypervisor
import Logging
import Loopback
import Testing
import VMBusClient
import VMBusRing
import VMBusWire

/// Guest-triggered warnings are expected in these tests; keep them out of the output.
let quietLogger: Logger = {
    var logger = Logger(label: "viridian.test")
    logger.logLevel = .critical
    return logger
}()

/// Builds a loopback machine with one echo device and connects the guest.
func echoMachine(vpCount: Int = 1, versions: [VMBusVersion] = VMBusVersion.linuxPreference,
                 server: VMBusServerConfiguration = .init()) throws -> (LoopbackMachine, EchoDevice) {
    let machine = try LoopbackMachine(memoryBytes: 32 << 20, vpCount: vpCount, serverConfiguration: server, clientVersions: versions,
                                      logger: quietLogger)
    let echo = EchoDevice(instanceID: try GUID("11111111-2222-3333-4444-555555555555"), logger: quietLogger)
    machine.server.offer(echo)
    try machine.connect()
    return (machine, echo)
}

/// Opens the echo channel and returns its client.
func openEcho(_ machine: LoopbackMachine, sendPages: Int = 16, receivePages: Int = 16, targetVP: UInt32 = 0) throws -> EchoClient {
    let channel = try #require(machine.client.channels.values.first { $0.deviceClass == .viridianEcho })
    try machine.client.open(channel, sendPages: sendPages, receivePages: receivePages, targetVP: targetVP)
    try machine.run(until: { channel.state != .creatingRingGPADL && channel.state != .opening }, "open")
    #expect(channel.state == .open)
    return EchoClient(channel: channel)
}

/// Sends `count` packets of varied size and checks every echo; returns completions seen.
@discardableResult
func exchange(_ machine: LoopbackMachine, _ client: EchoClient, count: Int, maxSize: Int = 600) throws -> Int {
    var next = 0, received = 0, bad = 0
    client.onCompletion = { id, payload in
        let expected = Int(id)
        let size = (expected * 37) % (maxSize - 1) + 2
        if expected != received || payload.count < size || payload[0] != UInt8(truncatingIfNeeded: expected)
            || payload[size - 1] != UInt8(truncatingIfNeeded: expected &* 7) {
            bad += 1
        }
        received += 1
    }
    var buffer = [UInt8](repeating: 0, count: maxSize)
    while received < count {
        while next < count {
            let size = (next * 37) % (maxSize - 1) + 2
            for i in 0..<size { buffer[i] = UInt8(truncatingIfNeeded: next &+ i) }
            buffer[0] = UInt8(truncatingIfNeeded: next)
            buffer[size - 1] = UInt8(truncatingIfNeeded: next &* 7)
            let sent = try buffer.withUnsafeBytes { try client.send(UnsafeRawBufferPointer(rebasing: $0[0..<size]), transactionID: UInt64(next)) }
            guard sent else { break }
            next += 1
        }
        client.flush()
        if machine.pump() == 0 && received < count {
            // Nothing moved: the guest may be blocked on a full ring with completions unread.
            client.drain()
            if machine.pump() == 0 && next == received { throw LoopbackError.stalled("echo at \(received)") }
        }
    }
    #expect(bad == 0)
    return received
}

@Suite("VMBus sessions in memory")
struct SessionTests {
    @Test("Every supported version is negotiated and carries echo traffic", arguments: VMBusVersion.all)
    func eachVersion(version: VMBusVersion) throws {
        let (machine, echo) = try echoMachine(versions: [version])
        #expect(machine.client.version == version)
        #expect(machine.server.connection?.version == version)
        let client = try openEcho(machine)
        try exchange(machine, client, count: 200)
        #expect(echo.packetsEchoed == 200 && echo.protocolErrors == 0)
    }

    @Test("The client falls back from 5.3 to the newest version the server accepts")
    func fallback() throws {
        let (machine, _) = try echoMachine(server: .init(supportedVersions: [.win10, .win8]))
        #expect(machine.client.version == .win10)
        let none = try LoopbackMachine(memoryBytes: 4 << 20, serverConfiguration: .init(supportedVersions: [.ws2008]), logger: quietLogger)
        #expect(throws: (any Error).self) { try none.connect() }
        #expect(none.client.state == .failed)
    }

    @Test("Full session: offers, 2 MiB ring GPADL, 1000 packets each way, close, teardown, rescind")
    func fullSession() throws {
        let machine = try LoopbackMachine(memoryBytes: 32 << 20, logger: quietLogger)
        let echo = EchoDevice(instanceID: try GUID("11111111-2222-3333-4444-555555555555"), logger: quietLogger)
        let relid = machine.server.offer(echo)
        let other = EchoDevice(instanceID: try GUID("11111111-2222-3333-4444-666666666666"))
        machine.server.offer(other)
        var offered: [UInt32] = []
        machine.client.onOffer = { offered.append($0.relid) }
        try machine.connect()
        #expect(offered == [1, 2] && machine.client.allOffersDelivered)
        let channel = try #require(machine.client.channels[relid])
        #expect(channel.offer.interfaceType == DeviceClass.viridianEcho.guid && channel.offer.interfaceInstance == echo.instanceID)
        #expect(channel.offer.connectionID == relid | 0x2000 && channel.offer.isDedicatedInterrupt)

        // 2 MiB of ring: 256 + 256 pages → one GPADL_HEADER and 18 GPADL_BODY messages.
        let received = machine.server.messagesReceived
        try machine.client.open(channel, sendPages: 256, receivePages: 256)
        try machine.run(until: { channel.state == .open }, "open")
        #expect(machine.server.messagesReceived - received == 1 + 18 + 1, "header, 18 bodies, OPENCHANNEL")
        #expect(machine.server.channels[relid]?.state == .open)
        let client = EchoClient(channel: channel)
        #expect(try exchange(machine, client, count: 1000) == 1000)
        #expect(echo.packetsEchoed == 1000 && client.completions == 1000)

        machine.client.close(channel)
        #expect(channel.state == .closing)
        try machine.run(until: { channel.state == .offered }, "teardown")
        #expect(machine.server.channels[relid]?.state == .offered && machine.server.gpadls.entries.isEmpty)

        // Reopen works after close; then the host rescinds it while open.
        try machine.client.open(channel, sendPages: 4, receivePages: 4)
        try machine.run(until: { channel.state == .open }, "reopen")
        var rescinded: [UInt32] = []
        machine.client.onRescind = { rescinded.append($0.relid) }
        machine.server.rescind(relid: relid)
        try machine.run(until: { machine.server.channels[relid] == nil }, "RELID_RELEASED")
        #expect(rescinded == [relid] && channel.state == .rescinded && machine.client.channels[relid] == nil)
        #expect(machine.server.gpadls.entries.isEmpty)
        // The freed relid is reused by the next offer, which arrives as a hot add.
        let again = machine.server.offer(EchoDevice(instanceID: try GUID("11111111-2222-3333-4444-777777777777")))
        machine.pump()
        #expect(again == relid && machine.client.channels[relid] != nil)
    }

    @Test("UNLOAD closes everything and the guest can negotiate again")
    func unloadAndReconnect() throws {
        let (machine, echo) = try echoMachine()
        let client = try openEcho(machine)
        try exchange(machine, client, count: 50)
        try machine.client.unload()
        try machine.run(until: { machine.client.state == .disconnected }, "UNLOAD_RESPONSE")
        #expect(machine.server.connection == nil && machine.server.gpadls.entries.isEmpty)
        #expect(machine.server.channels.values.allSatisfy { $0.state == .registered })
        try machine.connect()
        let client2 = try openEcho(machine)
        try exchange(machine, client2, count: 50)
        #expect(echo.packetsEchoed == 100 && echo.openCount == 2)
    }

    @Test("Small rings force back-pressure through pending_send_sz both ways")
    func backPressure() throws {
        let (machine, echo) = try echoMachine()
        // The host→guest ring is half the size of the guest→host ring, so both fill up.
        let client = try openEcho(machine, sendPages: 4, receivePages: 2)
        try exchange(machine, client, count: 5000, maxSize: 1500)
        #expect(echo.packetsEchoed == 5000)
        let host = try #require(machine.server.channels[1]?.endpoint)
        #expect(host.writer.ringFullEvents > 0, "the host ring filled up at least once")
        #expect(client.channel.endpoint!.writer.ringFullEvents > 0)
    }

    @Test("Channels target the VP named in OPENCHANNEL", arguments: [0, 1, 2, 3] as [UInt32])
    func targetVP(vp: UInt32) throws {
        let (machine, echo) = try echoMachine(vpCount: 4)
        let before = machine.partition.synics.map(\.eventsSignalled)
        let client = try openEcho(machine, targetVP: vp)
        try exchange(machine, client, count: 100)
        let after = machine.partition.synics.map(\.eventsSignalled)
        for i in 0..<4 {
            #expect((after[i] > before[i]) == (UInt32(i) == vp), "VP \(i) signalled: \(after[i] - before[i])")
        }
        #expect(echo.packetsEchoed == 100)
    }
}

@Suite("viridian-host demo")
struct DemoTests {
    @Test("The demo negotiates, echoes every packet intact, closes and rescinds")
    func demo() throws {
        var options = LoopbackDemoOptions()
        options.vpCount = 4
        options.packets = 3000
        options.payloadBytes = 100
        options.versions = [.win10]
        let report = try LoopbackDemo.run(options, logger: quietLogger)
        #expect(report.version == "4.0" && report.versionName == "VERSION_WIN10")
        #expect(report.offers.count == 1 && report.offers[0].deviceClass == "Viridian Echo")
        #expect(report.completions == 3000 && report.mismatches == 0)
        #expect(report.closedAndTornDown && report.rescinded)
        #expect(report.guestToHostSignals > 0 && report.guestToHostSignals < 3000, "signals are batched")
    }
}
