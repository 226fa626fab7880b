// Integration services over a real VMBus session in memory: negotiation, heartbeat, time sync, shutdown, KVP.

import Foundation
import GuestMemory
import Hypervisor
import IntegrationServices
import Logging
import Loopback
import Testing
import VMBusClient
import VMBusWire

let quiet: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}()

/// Virtual monotonic time for the host providers and the guest.
final class VirtualTime: @unchecked Sendable {
    var ns: UInt64 = 1_000_000_000
    func now() -> UInt64 { ns }
}

/// A loopback machine with one provider offered and its guest driver bound.
func icMachine(_ provider: ICProvider, service: any ICGuestService) throws -> (LoopbackMachine, ICClient) {
    let machine = try LoopbackMachine(memoryBytes: 8 << 20, logger: quiet)
    machine.server.offer(provider)
    try machine.connect()
    let channel = try #require(machine.client.channels.values.first)
    try machine.client.open(channel, sendPages: 4, receivePages: 4)
    try machine.run(until: { channel.state == .open }, "open")
    let client = ICClient(channel: channel, service: service, logger: quiet)
    try machine.run(until: { provider.isConnected }, "negotiation")
    return (machine, client)
}

@Suite("Integration services in memory")
struct ICLoopbackTests {
    @Test("KVP: set, list, get intrinsic, delete, with the pools persisted")
    func kvp() throws {
        let directory = NSTemporaryDirectory() + "viridian-kvp-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let provider = KVPProvider(instanceID: GUID(low: 1, high: 2), logger: quiet, now: { 0 })
        let store = try KVPStore(directory: directory)
        let intrinsic = [KVPRecord(key: "OSName", value: "Debian GNU/Linux"), KVPRecord(key: "ProcessorArchitecture", value: "x86_64")]
        let service = KVPService(store: store, intrinsic: { intrinsic }, logger: quiet)
        let (machine, client) = try icMachine(provider, service: service)
        #expect(client.negotiated == ICVersion(4, 0))

        var status: UInt32?? = .none
        try provider.set("Color", "blue — ✓", completion: { status = .some($0) })
        machine.pump()
        #expect(status == .some(ICStatus.ok))
        #expect(try KVPStore.read(directory: directory, pool: .external) == [KVPRecord(key: "Color", value: "blue — ✓")])

        var listed: Result<[KVPRecord], KVPEnumerationError>?
        provider.enumerate(pool: .external) { listed = $0 }
        machine.pump()
        #expect(try listed?.get() == [KVPRecord(key: "Color", value: "blue — ✓")])

        var auto: Result<[KVPRecord], KVPEnumerationError>?
        provider.enumerate(pool: .auto) { auto = $0 }
        machine.pump()
        #expect(try auto?.get() == intrinsic)

        status = .none
        try provider.delete("Color", completion: { status = .some($0) })
        machine.pump()
        #expect(status == .some(ICStatus.ok))
        #expect(store.items(.external).isEmpty)
        #expect(throws: KVPError.keyTooLong(2 * 300 + 2)) { try provider.set(String(repeating: "k", count: 300), "v") { _ in } }
        #expect(throws: KVPError.valueTooLong(2 * 1100 + 2)) { try provider.set("k", String(repeating: "v", count: 1100)) { _ in } }
    }
}
