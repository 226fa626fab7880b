// The in-memory demo behind `viridian-host demo`: one partition, an echo device, a whole channel life.

import EchoDevice
import GuestMemory
import Hypervisor
import Logging
import VMBusClient
import VMBusWire

/// What the demo did, for printing or JSON.
public struct LoopbackDemoReport: Codable, Sendable {
    /// One offered device as the guest saw it.
    public struct Offer: Codable, Sendable {
        public var relid: UInt32
        public var deviceClass: String
        public var classID: String
        public var instanceID: String
        public var state: String
    }
    public var vpCount: Int
    public var memoryMiB: Int
    public var version: String
    public var versionName: String
    public var offers: [Offer]
    public var packets: Int
    public var payloadBytes: Int
    public var completions: UInt64
    public var mismatches: Int
    public var hostToGuestSignals: UInt64
    public var guestToHostSignals: UInt64
    public var interrupts: UInt64
    public var hypercalls: UInt64
    public var channelMessages: UInt64
    public var closedAndTornDown: Bool
    public var rescinded: Bool
}

/// Settings of the demo.
public struct LoopbackDemoOptions: Sendable {
    public var vpCount = 2
    public var memoryMiB = 64
    public var versions = VMBusVersion.linuxPreference
    public var packets = 10_000
    public var payloadBytes = 256
    public var ringPages = 64
    public init() {}
}

/// Runs a complete VMBus session in one process: negotiate, offer, GPADL, open, echo traffic with
/// content checks, close, teardown, rescind.
public enum LoopbackDemo {
    public static func run(_ options: LoopbackDemoOptions, logger: Logger) throws -> LoopbackDemoReport {
        let machine = try LoopbackMachine(memoryBytes: options.memoryMiB << 20, vpCount: options.vpCount,
                                          clientVersions: options.versions, logger: logger)
        let echo = EchoDevice(instanceID: try GUID("5649524d-4543-484f-8000-000000000001"), logger: logger)
        let relid = machine.server.offer(echo)
        try machine.connect()
        guard let version = machine.client.version, let channel = machine.client.channels[relid] else {
            throw LoopbackError.stalled("no connection")
        }
        let offers = machine.client.channels.values.sorted { $0.relid < $1.relid }.map {
            LoopbackDemoReport.Offer(relid: $0.relid, deviceClass: $0.deviceClass.name, classID: $0.offer.interfaceType.description,
                                     instanceID: $0.offer.interfaceInstance.description, state: "offered")
        }
        let target = UInt32(options.vpCount - 1)
        try machine.client.open(channel, sendPages: options.ringPages, receivePages: options.ringPages, targetVP: target)
        try machine.run(until: { channel.state != .creatingRingGPADL && channel.state != .opening }, "open")
        guard channel.state == .open else { throw LoopbackError.stalled("open failed: \(channel.state)") }

        let client = EchoClient(channel: channel)
        var mismatches = 0, received = 0, sent = 0
        client.onCompletion = { id, payload in
            if id != UInt64(received) || payload.count < options.payloadBytes
                || payload.load(as: UInt64.self) != id { mismatches += 1 }
            received += 1
        }
        var buffer = [UInt8](repeating: 0xA5, count: max(options.payloadBytes, 8))
        while received < options.packets {
            while sent < options.packets {
                buffer.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(sent), as: UInt64.self) }
                let ok = try buffer.withUnsafeBytes { try client.send(UnsafeRawBufferPointer(rebasing: $0[0..<max(options.payloadBytes, 8)]), transactionID: UInt64(sent)) }
                guard ok else { break }
                sent += 1
            }
            client.flush()
            if machine.pump() == 0 {
                client.drain()
                if machine.pump() == 0 && sent == received && received < options.packets { throw LoopbackError.stalled("echo") }
            }
        }
        let endpoint = channel.endpoint!
        let hostSignals = machine.server.channels[relid]?.endpoint?.signalsSent ?? 0
        let guestSignals = endpoint.signalsSent

        machine.client.close(channel)
        try machine.run(until: { channel.state == .offered }, "teardown")
        let closed = machine.server.gpadls.entries.isEmpty
        machine.server.rescind(relid: relid)
        try machine.run(until: { machine.server.channels[relid] == nil }, "rescind")

        return LoopbackDemoReport(
            vpCount: options.vpCount, memoryMiB: options.memoryMiB, version: version.description, versionName: version.linuxName,
            offers: offers, packets: options.packets, payloadBytes: options.payloadBytes, completions: client.completions,
            mismatches: mismatches, hostToGuestSignals: hostSignals, guestToHostSignals: guestSignals,
            interrupts: machine.interruptsDelivered, hypercalls: machine.partition.hypercalls,
            channelMessages: machine.server.messagesReceived + machine.server.messagesSent,
            closedAndTornDown: closed, rescinded: machine.client.channels[relid] == nil)
    }
}
