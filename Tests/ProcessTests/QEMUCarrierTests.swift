// The QEMU carrier without QEMU: this test plays QEMU's ivshmem client and the KernelGlue guest against viridian-host.

import AgentRuntime
import Atomics
import CSystem
import Foundation
import Glibc
import GuestMemory
import HostRuntime
import Logging
import PartitionLink
import Testing
import VMBusClient
import VMBusWire

/// What QEMU receives from the ivshmem server: the shared region and the two vector sets.
final class FakeQEMU: @unchecked Sendable {
    let fd: Int32
    var version: Int64 = -2
    var ownID: Int64 = -2
    var sharedFD: Int32 = -1
    var peers: [Int64: [Int32]] = [:]
    /// The host's doorbell vectors (peer 0) and the guest's interrupt vectors (peer 1).
    var hostVectors: [EventFD] = []
    var guestVectors: [EventFD] = []

    /// Connects to `path` and reads the server's messages until `vectors` per peer for two peers arrived.
    init(path: String, vectors: Int) throws {
        fd = try UnixSocket.connect(path: path, type: Int32(SOCK_STREAM.rawValue))
        var messages = 0
        while peers.values.map(\.count).reduce(0, +) < 2 * vectors {
            var value: Int64 = 0
            var fds = [Int32](repeating: -1, count: 1)
            var nfds: Int32 = 0
            // One message per read: 8 bytes, with at most one descriptor.
            let n = withUnsafeMutableBytes(of: &value) { viridian_recv_with_fds(fd, $0.baseAddress, 8, &fds, 1, &nfds) }
            guard n == 8 else { throw HarnessError.timeout("ivshmem server sent \(n) bytes after \(messages) messages") }
            messages += 1
            let v = Int64(littleEndian: value)
            switch messages {
            case 1: version = v
            case 2: ownID = v
            default:
                if v == -1 { sharedFD = fds[0] } else if nfds == 1 { peers[v, default: []].append(fds[0]) }
            }
        }
        hostVectors = (peers[0] ?? []).map { EventFD(adopting: $0) }
        guestVectors = (peers[1] ?? []).map { EventFD(adopting: $0) }
    }

    deinit { close(fd) }
}

/// A guest inside that fake QEMU, as the KernelGlue module and `GlueLink` would be: VP exits
/// through the shared VP blocks and the host's vectors, interrupts on the guest's vectors, and a
/// buffer pool of guest RAM pages in descending order (contiguous here, not in guest-physical
/// space), so every GPA the VMBus client puts on the wire goes through the pool's page table.
final class FakeGluePlatform: GuestPlatform, @unchecked Sendable {
    let qemu: FakeQEMU
    let shared: UnsafeMutableRawPointer
    let header: GlueSharedHeader
    let hostVectors: [EventFD]
    let guestVectors: [EventFD]
    let exits: VPExitPort
    let pool: GuestBufferPool
    let vpCount: Int
    let closed = ManagedAtomic<Bool>(false)
    var partitionName: String { header.name }
    var partitionID: UInt32 { UInt32(header.partitionID) }
    var cpuMask: UInt64 { 0 }
    var isClosed: Bool { closed.load(ordering: .acquiring) }

    final class PoolMapping {
        let base: UnsafeMutableRawPointer
        let bytes: Int
        init(base: UnsafeMutableRawPointer, bytes: Int) { self.base = base; self.bytes = bytes }
        deinit { munmap(base, bytes) }
    }

    init(qemu: FakeQEMU, ramFile: String, poolPages: Int) throws {
        self.qemu = qemu
        shared = try #require(viridian_mmap_shared(16384, qemu.sharedFD, 0))
        header = GlueSharedHeader(shared)
        vpCount = Int(header.vpCount)
        hostVectors = qemu.hostVectors
        guestVectors = qemu.guestVectors
        let vps = vpCount
        let guestSide = qemu.guestVectors
        let completions = (0..<vps).map { guestSide[GlueSharedHeader.Vector.completion(vp: $0, vps: vps)] }
        let host = hostVectors
        exits = VPExitPort(blocks: shared + GlueSharedHeader.vpBlocksOffset, vpCount: vps, completions: completions, closed: closed) {
            host[GlueSharedHeader.Vector.exit(vp: $0)].ring()
        }
        // Pool page i is guest page (top - i): the highest pages of RAM, backwards.
        let ram = open(ramFile, O_RDWR)
        defer { close(ram) }
        let base = try #require(viridian_reserve(poolPages * 4096))
        let top = UInt64(header.memoryBytes >> 12) - 1
        let pfns = (0..<UInt64(poolPages)).map { top - $0 }
        for (i, pfn) in pfns.enumerated() {
            _ = try #require(viridian_mmap_fixed_shared(base + i * 4096, 4096, ram, Int64(pfn * 4096)))
        }
        pool = GuestBufferPool(base: base, pfns: pfns, owner: PoolMapping(base: base, bytes: poolPages * 4096))
    }

    /// The module's JOIN: a new generation, READY, the host's control vector; then the host's answer.
    func join(generation: UInt32) -> Bool {
        header.guestGeneration = generation
        header.guestState = UInt32(VGLUE_GUEST_READY)
        hostVectors[GlueSharedHeader.Vector.control].ring()
        return eventually(seconds: 10) { header.hostJoined == generation }
    }

    /// The module's release: LEAVING, the control vector; then the host's release.
    func leave(generation: UInt32) -> Bool {
        header.guestState = UInt32(VGLUE_GUEST_LEAVING)
        hostVectors[GlueSharedHeader.Vector.control].ring()
        return eventually(seconds: 10) { header.hostReleased == generation }
    }

    deinit { munmap(shared, 16384) }

    func startMonitor(onClose: @escaping @Sendable (LinkError) -> Void) {}
    func waitForInterrupt(vp: Int) -> Bool {
        guestVectors[GlueSharedHeader.Vector.interrupt(vp: vp)].wait()
        return !isClosed
    }
    func kick(vp: Int) { guestVectors[GlueSharedHeader.Vector.interrupt(vp: vp)].ring() }
    /// Wakes waiting exits; the count this leaves in the completion eventfds (shared by the next
    /// platform on this fake QEMU) is a stale completion the sequence numbers in the VP blocks skip.
    func detach() {
        closed.store(true, ordering: .releasing)
        exits.wakeAll()
    }
    func portIn(vp: UInt32, port: UInt16, size: Int) -> UInt32? { exits.portIn(vp: vp, port: port, size: size) }
    func portOut(vp: UInt32, port: UInt16, size: Int, value: UInt32) -> Bool { exits.portOut(vp: vp, port: port, size: size, value: value) }
    func interruptLine(_ irq: UInt32) -> EventFD? { nil }
    func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        exits.hypercall(vp: vp, control: control, input: input, output: output)
    }
    func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { exits.writeMSR(vp: vp, msr, value) }
    func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { exits.readMSR(vp: vp, msr) }
}

@Suite("QEMU carrier (ivshmem server) against a fake QEMU", .serialized)
struct QEMUCarrierTests {
    func start() throws -> (HostFixture, String) {
        let ram = "/tmp/viridian-carrier-\(getpid())-\(UUID().uuidString.prefix(6)).ram"
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            carrier = "qemu"
            memory_mib = 32
            vps = 2
            echo_devices = 2
            ram_file = "\(ram)"
            integration_services = ["heartbeat"]
            heartbeat_interval_ms = 200
            [[partition.disk]]
            path = "\(fixture_image(ram))"
            """)
        return (fixture, ram)
    }

    func fixture_image(_ ram: String) -> String { ram + ".disk" }

    @Test("Handshake as ivshmem-spec says; early doorbells refused; join, echo over a scattered pool, leave, rejoin")
    func carrier() throws {
        let (fixture, ram) = try start()
        defer { unlink(ram); unlink(fixture_image(ram)) }
        let socket = fixture.directory.appendingPathComponent("guest1.ivshmem").path
        try waitFor(path: socket)
        let qemu = try FakeQEMU(path: socket, vectors: 32)
        #expect(qemu.version == 0 && qemu.ownID == 1 && qemu.sharedFD >= 0)
        #expect(qemu.peers[0]?.count == 32 && qemu.peers[1]?.count == 32)
        // A second QEMU is refused; the first is unharmed.
        let second = try UnixSocket.connect(path: socket, type: Int32(SOCK_STREAM.rawValue))
        var byte: UInt8 = 0
        #expect(read(second, &byte, 1) == 0, "the second connection is closed without a handshake")
        close(second)
        #expect(fixture.host.text.contains("refused a second QEMU"))

        let guest = try FakeGluePlatform(qemu: qemu, ramFile: ram, poolPages: 1024)
        #expect(guest.header.magic == GlueSharedHeader.magic && guest.vpCount == 2 && guest.header.name == "guest1")
        #expect(guest.header.memoryBytes == 32 << 20 && guest.header.hostState == 1)
        // Before any join, a VP exit is refused and logged; the VP does not hang.
        #expect(!guest.writeMSR(vp: 0, 0x4000_0080, 1))
        #expect(fixture.host.text.contains("before the KernelGlue ready handshake"))
        #expect(try fixture.status().partitions[0].state == "waiting")

        #expect(guest.join(generation: 1))
        let logger = Logger(label: "test")
        let session = try AgentSession(platform: guest, versions: VMBusVersion.linuxPreference, logger: logger)
        try session.start(timeoutMs: 10_000)
        let report = try session.echo(packets: 2000, payloadBytes: 1500, channels: 2)
        #expect(report.mismatches == 0 && report.completions == 2000, "\(report)")
        let status = try fixture.status().partitions[0]
        #expect(status.carrier == "qemu" && status.state == "attached" && status.channels.count >= 3)
        session.stop()
        #expect(guest.leave(generation: 1))
        #expect(try eventually(seconds: 5) { try fixture.status().partitions[0].state == "waiting" })

        // A new agent generation joins the same guest memory.
        let again = try FakeGluePlatform(qemu: qemu, ramFile: ram, poolPages: 512)
        #expect(again.join(generation: 2))
        let session2 = try AgentSession(platform: again, versions: VMBusVersion.linuxPreference, logger: logger)
        do { try session2.start(timeoutMs: 10_000) } catch {
            Issue.record("rejoin: \(error)\nhost: \(fixture.host.text)")
            throw error
        }
        #expect(try session2.echo(packets: 200, payloadBytes: 64, channels: 1).mismatches == 0)
        #expect(try fixture.status().partitions[0].attachCount == 2)
        session2.stop()
    }

    @Test("A hostile guest: random header states, VP blocks and doorbells; the host survives and serves the next QEMU")
    func hostileGuest() throws {
        let (fixture, ram) = try start()
        defer { unlink(ram); unlink(fixture_image(ram)) }
        let socket = fixture.directory.appendingPathComponent("guest1.ivshmem").path
        try waitFor(path: socket)
        do {
            let qemu = try FakeQEMU(path: socket, vectors: 32)
            let guest = try FakeGluePlatform(qemu: qemu, ramFile: ram, poolPages: 64)
            var rng = SystemRandomNumberGenerator()
            for round in 0..<5000 {
                // Whatever the guest may write: its header fields, both VP blocks, any vector.
                guest.header.guestState = round % 7 == 0 ? UInt32.random(in: 0...2, using: &rng) : rng.next()
                guest.header.guestGeneration = UInt32.random(in: 0...4, using: &rng)
                let block = guest.shared + GlueSharedHeader.vpBlocksOffset + Int.random(in: 0..<2, using: &rng) * 64
                for i in 0..<8 { block.storeBytes(of: rng.next() as UInt64, toByteOffset: i * 8, as: UInt64.self) }
                if round % 3 == 0 { block.storeBytes(of: UInt32.random(in: 0...6, using: &rng), toByteOffset: 0, as: UInt32.self) }
                qemu.hostVectors[Int.random(in: 0..<32, using: &rng)].ring()
                usleep(50)  // let the host serve most doorbells one by one rather than coalesced
            }
            let status = try fixture.status().partitions[0]
            #expect(status.attachCount >= 1, "the storm's READY states were served (\(status.attachCount) attaches)")
        }
        // That QEMU went away; a new one gets a working partition.
        #expect(eventually(seconds: 10) { fixture.host.text.contains("QEMU left") })
        let qemu = try FakeQEMU(path: socket, vectors: 32)
        let guest = try FakeGluePlatform(qemu: qemu, ramFile: ram, poolPages: 512)
        #expect(guest.header.guestState == 0 && guest.header.guestGeneration == 0, "guest fields reset for a new QEMU")
        #expect(guest.join(generation: 1))
        let session = try AgentSession(platform: guest, versions: VMBusVersion.linuxPreference, logger: Logger(label: "test"))
        try session.start(timeoutMs: 10_000)
        #expect(try session.echo(packets: 500, payloadBytes: 512, channels: 2).mismatches == 0)
        session.stop()
    }
}
