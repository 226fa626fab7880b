// One agent session in a partition: the link, a thread per VP running the VMBus interrupt handler, the client.

import Atomics
import CSystem
import Glibc
import Logging
import IntegrationServices
import PartitionLink
import Synchronization
import VMBusClient
import VMBusWire

/// A joined partition. Each VP is a thread that waits for its SINT interrupt and runs the VMBus
/// client's handler for that VP; all bus state is guarded by one lock (`withBus`).
public final class AgentSession: @unchecked Sendable {
    /// The carrier to the partition (PartitionLink or KernelGlue).
    public let link: any GuestPlatform
    public let client: VMBusClient
    let bus = Lock()
    let progress: EventFD
    let logger: Logger
    private var vpThreads: [OSThread] = []
    private let stopping = ManagedAtomic<Bool>(false)
    /// Threads inside `wait`: only then is `progress` worth a system call per interrupt.
    private let waiters = ManagedAtomic<Int>(0)
    private let interruptCounts: [ManagedAtomic<UInt64>]
    /// When the agent's main loop last proved it is alive (heartbeats depend on it).
    private let petTime = ManagedAtomic<UInt64>(viridian_now_ns())
    var lastPet: UInt64 { petTime.load(ordering: .relaxed) }

    /// The main loop calls this to say it is responsive; also pets systemd's watchdog.
    public func pet() {
        petTime.store(viridian_now_ns(), ordering: .relaxed)
    }

    /// Records this agent adds to the KVP auto pool (a parent-mode agent's report on its children).
    public let publishedKVP = Mutex<[KVPRecord]>([])

    /// Set when the host went away (the reason).
    private let lostLock = Lock()
    private var lostReason: LinkError?

    /// Joins the partition at `address` (unix:PATH, kernelglue or a KernelGlue device path).
    public convenience init(address: String, poolMiB: Int = AgentConfiguration.defaultPoolMiB, versions: [VMBusVersion],
                            logger: Logger) throws {
        try self.init(platform: try GuestCarrier.join(address, poolMiB: poolMiB, logger: logger), versions: versions, logger: logger)
    }

    /// Runs a session over a joined carrier.
    public init(platform: any GuestPlatform, versions: [VMBusVersion], logger: Logger) throws {
        link = platform
        self.logger = logger
        progress = try EventFD()
        client = VMBusClient(hypervisor: link, pool: link.pool, vpCount: link.vpCount, versions: versions, logger: logger)
        interruptCounts = (0..<link.vpCount).map { _ in ManagedAtomic<UInt64>(0) }
    }

    /// Starts the VP threads, negotiates and waits for every offer.
    public func start(timeoutMs: Int) throws {
        let progress = self.progress
        link.startMonitor { [weak self] reason in
            self?.lostLock.withLock { self?.lostReason = reason }
            progress.ring()
        }
        let mask = link.cpuMask
        for vp in 0..<link.vpCount {
            vpThreads.append(OSThread { [self] in
                if mask != 0 { _ = viridian_pin_thread(mask) }
                while link.waitForInterrupt(vp: vp) && !stopping.load(ordering: .relaxed) {
                    bus.withLock { client.handleInterrupt(vp: UInt32(vp)) }
                    interruptCounts[vp].wrappingIncrement(ordering: .relaxed)
                    if waiters.load(ordering: .acquiring) > 0 { progress.ring() }
                }
            })
        }
        do { try withBus { try $0.connect() } } catch {
            if link.isClosed { throw AgentError.hostGone("the host closed the partition link during negotiation") }
            throw AgentError.protocolFailure("VMBus connect failed: \(error)")
        }
        guard try wait(timeoutMs: timeoutMs, until: { $0.allOffersDelivered || $0.state == .failed }) else {
            throw AgentError.timeout("no ALLOFFERS_DELIVERED within \(timeoutMs) ms")
        }
        if client.state == .failed { throw AgentError.protocolFailure("the host accepted none of the VMBus versions offered") }
        logger.info("joined partition \(link.partitionName) (id \(link.partitionID), \(link.vpCount) VPs): VMBus \(client.version?.description ?? "?"), \(client.channels.count) channel(s)")
    }

    /// Runs `body` with the bus locked (no interrupt handler runs meanwhile).
    public func withBus<T>(_ body: (VMBusClient) throws -> T) rethrows -> T {
        try bus.withLock { try body(client) }
    }

    /// Why the host link closed, if it did.
    public var hostLost: LinkError? { lostLock.withLock { lostReason } }

    /// Waits until `condition` (checked with the bus locked) holds. False on timeout; throws if the host went away.
    public func wait(timeoutMs: Int, until condition: (VMBusClient) -> Bool) throws -> Bool {
        waiters.wrappingIncrement(ordering: .acquiringAndReleasing)
        defer { waiters.wrappingDecrement(ordering: .acquiringAndReleasing) }
        let deadline = viridian_now_ns() + UInt64(timeoutMs) * 1_000_000
        while true {
            if withBus(condition) { return true }
            if let lost = hostLost { throw AgentError.hostGone("\(lost)") }
            let now = viridian_now_ns()
            guard now < deadline else { return false }
            var fd = pollfd(fd: progress.fd, events: Int16(POLLIN), revents: 0)
            if poll(&fd, 1, Int32(min((deadline - now) / 1_000_000 + 1, 1000))) > 0 {
                var count: UInt64 = 0
                _ = read(progress.fd, &count, 8)
            }
        }
    }

    /// Waits for the `count` sub-channels the host offers beside `primary` (same instance,
    /// index ≥ 1), opens each with rings of `pages` pages each way on VP (index mod VPs), and
    /// returns those that opened, in index order.
    public func openSubChannels(of primary: ClientChannel, count: Int, pages: Int, timeoutMs: Int) throws -> [ClientChannel] {
        guard count > 0 else { return [] }
        let instance = primary.offer.interfaceInstance
        func offered(_ bus: VMBusClient) -> [ClientChannel] {
            bus.channels.values.filter { $0.offer.interfaceInstance == instance && $0.offer.subChannelIndex > 0 && $0.state == .offered }
        }
        // `wait` evaluates its condition with the bus already locked.
        _ = try wait(timeoutMs: timeoutMs) { offered($0).count >= count }
        let subs = withBus { offered($0) }.sorted { $0.offer.subChannelIndex < $1.offer.subChannelIndex }
        for sub in subs {
            let vp = UInt32(Int(sub.offer.subChannelIndex) % link.vpCount)
            try withBus { try $0.open(sub, sendPages: pages, receivePages: pages, targetVP: vp) }
        }
        _ = try wait(timeoutMs: timeoutMs) { _ in subs.allSatisfy { $0.state != .creatingRingGPADL && $0.state != .opening } }
        return withBus { _ in subs.filter { $0.state == .open } }
    }

    /// Interrupts handled per VP.
    public var interruptsPerVP: [UInt64] { interruptCounts.map { $0.load(ordering: .relaxed) } }

    /// The devices on the bus, as `viridian-agent list` shows them.
    public func devices() -> [DeviceInfo] {
        withBus { client in
            client.channels.values.sorted { $0.relid < $1.relid }.map { c in
                DeviceInfo(relid: c.relid, deviceClass: c.deviceClass.name, classID: c.offer.interfaceType.description,
                           instanceID: c.offer.interfaceInstance.description, subChannelIndex: c.offer.subChannelIndex,
                           state: "\(c.state)", targetVP: c.state == .open ? c.targetVP : nil,
                           connectionID: c.offer.connectionID, dedicatedInterrupt: c.offer.isDedicatedInterrupt)
            }
        }
    }

    /// Leaves cleanly: UNLOAD (from 3.0) and its answer, then the VP threads stop and the link closes.
    public func leave(timeoutMs: Int = 1000) {
        if hostLost == nil, (try? withBus({ try $0.unload() })) != nil {
            _ = try? wait(timeoutMs: timeoutMs) { $0.state == .disconnected }
        }
        stop()
    }

    /// Stops the VP threads and closes the link without UNLOAD (as a crash would).
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        for vp in 0..<link.vpCount { link.kick(vp: vp) }
        for t in vpThreads { t.join() }
        vpThreads.removeAll()
        link.detach()
    }
}

/// One VMBus device as the guest sees it.
public struct DeviceInfo: Codable, Sendable, Equatable {
    public var relid: UInt32
    public var deviceClass: String
    public var classID: String
    public var instanceID: String
    public var subChannelIndex: UInt16
    public var state: String
    public var targetVP: UInt32?
    public var connectionID: UInt32
    public var dedicatedInterrupt: Bool

    /// lsvmbus's one-line form.
    public var lsvmbusLine: String {
        "VMBUS ID \(relid < 10 ? " " : "")\(relid): Class_ID = {\(classID)} - \(deviceClass)"
    }
}
