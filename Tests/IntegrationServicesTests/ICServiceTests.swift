// Heartbeat and shutdown over a real session, and hostile IC traffic in both directions.

import Foundation
import Hypervisor
import IntegrationServices
import Loopback
import Testing
import VMBusClient
import VMBusWire

@Suite("Integration services")
struct ICServiceTests {
    @Test("IC header and negotiation layouts; Linux's version choice")
    func wire() throws {
        let header = ICHeader(framework: ICVersion(3, 0), type: .heartbeat, version: ICVersion(3, 0), bodySize: 40)
        let packet = ICHeader.packet(header, body: [UInt8](repeating: 0, count: 40))
        #expect(packet.count == 68 && packet.le(UInt32.self, at: 0) == 1 && packet.le(UInt32.self, at: 4) == 60)
        #expect(packet.le(UInt16.self, at: 8) == 3 && packet.le(UInt16.self, at: 12) == 1 && packet.le(UInt16.self, at: 18) == 40)
        #expect(packet[25] == ICFlags.transaction | ICFlags.request)
        let n = ICNegotiation(frameworks: [ICVersion(1, 0), ICVersion(3, 0)], services: [ICVersion(3, 0), ICVersion(4, 0)])
        #expect(n.encoded.count == 8 + 16)
        #expect(try ICNegotiation(decoding: n.encoded[...]) == n)
        #expect(ICNegotiation.choose([ICVersion(4, 0), ICVersion(3, 0)], from: n.services) == ICVersion(4, 0))
        #expect(ICNegotiation.choose([ICVersion(5, 0)], from: n.services) == nil)
        var tooMany = n.encoded
        tooMany.putLE(UInt16(101), at: 0)
        #expect(throws: WireError.self) { try ICNegotiation(decoding: tooMany[...]) }
        #expect(ShutdownProvider.body(kind: .reboot, force: true, reason: "x").count == 2060)
        #expect(KVPLayout.getSetSize == 2576 && KVPLayout.deleteSize == 520 && KVPLayout.enumerateSize == 2580)
    }

    @Test("Heartbeat: answered while healthy, late then lost when not, ok again when healthy")
    func heartbeat() throws {
        let time = VirtualTime()
        let provider = HeartbeatProvider(instanceID: GUID(low: 1, high: 1), intervalNs: 1_000_000_000, logger: quiet, now: { time.now() })
        var transitions: [HeartbeatState] = []
        provider.onStateChange = { transitions.append($1) }
        var healthy = true
        let (machine, client) = try icMachine(provider, service: HeartbeatService { healthy })
        defer { withExtendedLifetime(client) {} }
        func advance(seconds: Double) {
            let end = time.ns + UInt64(seconds * 1e9)
            while time.ns < end {
                time.ns += 100_000_000
                provider.tick(now: time.ns)
                machine.pump()
            }
        }
        advance(seconds: 5)
        #expect(provider.state == .ok && provider.answers >= 4)
        healthy = false
        advance(seconds: 3.2)
        #expect(provider.state == .lost)
        healthy = true
        advance(seconds: 2)
        #expect(provider.state == .ok)
        #expect(transitions == [.ok, .late, .lost, .ok])
    }

    @Test("Shutdown: the action runs and its failure is reported back")
    func shutdown() throws {
        let provider = ShutdownProvider(instanceID: GUID(low: 2, high: 2), logger: quiet, now: { 0 })
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var actions: [(ShutdownKind, Bool, String)] = []
        let service = ShutdownService(logger: quiet, run: { kind, force, reason in
            actions.append((kind, force, reason))
            return kind != .hibernate
        }, withBus: { body in
            body()
            done.signal()
        })
        let (machine, client) = try icMachine(provider, service: service)
        defer { withExtendedLifetime(client) {} }
        var statuses: [UInt32?] = []
        for (kind, force) in [(ShutdownKind.reboot, true), (.hibernate, false)] {
            provider.shutdown(kind: kind, force: force, reason: "maintenance ✓") { statuses.append($0) }
            machine.pump()
            done.wait()
            // The answer was written from the action thread; deliver its signal to the host.
            _ = machine.partition.deliverSignal(connectionID: machine.server.channels[1]!.connectionID)
            machine.pump()
        }
        #expect(actions.map(\.0) == [.reboot, .hibernate] && actions[0].1 && !actions[1].1 && actions[0].2 == "maintenance ✓")
        #expect(statuses == [ICStatus.ok, ICStatus.fail])
    }

    @Test("Malformed IC traffic is answered with an error or dropped, never a crash")
    func hostile() throws {
        let provider = KVPProvider(instanceID: GUID(low: 3, high: 3), logger: quiet, now: { 0 })
        let directory = NSTemporaryDirectory() + "viridian-kvp-h-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let service = KVPService(store: try KVPStore(directory: directory), intrinsic: { [] }, logger: quiet)
        let (machine, client) = try icMachine(provider, service: service)
        let host = try #require(machine.server.channels[1]?.endpoint)
        var rng: UInt64 = 11
        // Random packets from the "host": truncated headers, bad sizes, odd UTF-16, unknown ops.
        for i in 0..<3000 {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            var bytes = (0..<Int(rng % 2700)).map { j in UInt8(truncatingIfNeeded: rng >> UInt64(j % 50)) }
            if bytes.count >= 28 && i % 2 == 0 {
                bytes.putLE(UInt16(2), at: 12)
                bytes.putLE(UInt16(min(bytes.count - 28, 0xFFFF)), at: 18)
                if bytes.count > 30 { bytes[28] = UInt8(rng % 6); bytes[29] = UInt8(rng % 3) }
            }
            _ = try host.writer.tryWrite(type: .dataInBand, transactionID: UInt64(i), payload: bytes)
            host.commitWrites()
            machine.pump()
            // Throw away the guest's answers.
            while try host.reader.next() != nil {}
            host.commitReads()
        }
        #expect(client.protocolErrors > 0 || service.refused > 0)
        // Oversized and odd-length UTF-16 key in a SET: refused with INVALIDARG.
        var set = [UInt8](repeating: 0, count: KVPLayout.getSetSize)
        set[0] = KVPOperation.set.rawValue
        set.putLE(UInt32(1), at: 4)
        set.putLE(UInt32(513), at: 8)
        let refusedBefore = service.refused
        _ = try host.writer.tryWrite(type: .dataInBand, transactionID: 1,
                                     payload: ICHeader.packet(ICHeader(framework: ICVersion(3, 0), type: .kvpExchange, version: ICVersion(4, 0), bodySize: set.count), body: set))
        host.commitWrites()
        machine.pump()
        #expect(service.refused == refusedBefore + 1)
        #expect(store(directory).isEmpty)
        // The guest still serves real requests.
        while try host.reader.next() != nil {}
        host.commitReads()
        var status: UInt32?? = .none
        try provider.set("ok", "yes") { status = .some($0) }
        machine.pump()
        #expect(status == .some(ICStatus.ok))
        #expect(store(directory) == [KVPRecord(key: "ok", value: "yes")])
    }

    func store(_ directory: String) -> [KVPRecord] { (try? KVPStore.read(directory: directory, pool: .external)) ?? [] }
}

@Suite("Hostile guests of integration services")
struct HostileICGuestTests {
    /// A guest service that answers negotiation with versions the host never offered.
    final class WrongVersions: ICGuestService {
        let serviceType = ICMessageType.heartbeat
        let frameworkVersions = [ICVersion(9, 9)]
        let serviceVersions = [ICVersion(9, 9)]
        func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? { 0 }
    }

    @Test("No common version: the host logs and stays unconnected")
    func badVersions() throws {
        let provider = HeartbeatProvider(instanceID: GUID(low: 7, high: 7), intervalNs: 1_000_000_000, logger: quiet, now: { 0 })
        let machine = try LoopbackMachine(memoryBytes: 8 << 20, logger: quiet)
        machine.server.offer(provider)
        try machine.connect()
        let channel = try #require(machine.client.channels.values.first)
        try machine.client.open(channel, sendPages: 4, receivePages: 4)
        try machine.run(until: { channel.state == .open }, "open")
        let client = ICClient(channel: channel, service: WrongVersions(), logger: quiet)
        machine.pump()
        #expect(!provider.isConnected && provider.protocolErrors == 1 && client.negotiated == nil)
    }

    @Test("Random packets from the guest are dropped by the host provider, which keeps working")
    func garbageFromGuest() throws {
        let provider = KVPProvider(instanceID: GUID(low: 8, high: 8), logger: quiet, now: { 0 })
        let directory = NSTemporaryDirectory() + "viridian-kvp-g-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let service = KVPService(store: try KVPStore(directory: directory), intrinsic: { [] }, logger: quiet)
        let (machine, client) = try icMachine(provider, service: service)
        let guest = try #require(client.channel.endpoint)
        var rng: UInt64 = 5
        for i in 0..<3000 {
            rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            var bytes = (0..<Int(rng % 3000)).map { j in UInt8(truncatingIfNeeded: rng >> UInt64(j % 40)) }
            if bytes.count >= 28 && i % 3 == 0 { bytes[25] = ICFlags.transaction | ICFlags.response }
            _ = try guest.writer.tryWrite(type: .dataInBand, transactionID: 0, payload: bytes)
            guest.commitWrites()
            machine.pump()
        }
        #expect(provider.protocolErrors > 0)
        var status: UInt32?? = .none
        try provider.set("still", "works") { status = .some($0) }
        machine.pump()
        #expect(status == .some(ICStatus.ok))
    }
}
