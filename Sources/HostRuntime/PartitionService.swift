// A partition's service thread: the event loop that serves its guest through a carrier, surviving guests that die.

import CSystem
import EmulatedDevices
import Foundation
import IntegrationServices
import SyntheticNetwork
import SyntheticStorage
import Glibc
import GuestMemory
import Hypervisor
import Logging
import PartitionLink
import Synchronization
import VMBusWire

/// Serves one partition on its own thread. The thread owns every hypervisor object of the
/// partition (no locks on the data path): it waits with epoll on the carrier's descriptors
/// (sockets, VP doorbells, channel doorbells) and the devices'. A guest that leaves or dies is
/// reported by the carrier; its runtime is torn down and the carrier accepts a new guest.
public final class PartitionService: @unchecked Sendable {
    public let configuration: PartitionConfiguration
    public let id: UInt32
    /// How guests reach this partition.
    public let carrier: any HostCarrier
    let deviceSet: PartitionDevices
    let serverConfiguration: VMBusServerConfiguration
    let logger: Logger
    let trace: TraceWriter?
    let epoll: Int32
    let wake: EventFD
    private let requestLock = Lock()
    private var requests: [() -> Void] = []
    private var thread: OSThread?
    private var running = true
    /// Set when the service stops: threads of its own (TAP recovery) end then.
    private let stopping = Atomic<Bool>(false)
    var runtime: PartitionRuntime?
    public private(set) var attachCount = 0

    enum Tag {
        static let wake: UInt64 = 5 << 56
        static let completions: UInt64 = 7 << 56
        static let device: UInt64 = 8 << 56
        static let kindMask: UInt64 = 0xFF << 56
    }

    /// The integration services, if configured (each also offered on VMBus).
    public var heartbeat: HeartbeatProvider? { deviceSet.heartbeat }
    public var timeSync: TimeSyncProvider? { deviceSet.timeSync }
    public var shutdownService: ShutdownProvider? { deviceSet.shutdownService }
    public var kvp: KVPProvider? { deviceSet.kvp }
    public var vss: VSSProvider? { deviceSet.vss }
    public var fcopy: FCopyProvider? { deviceSet.fcopy }
    var providers: [ICProvider] { [heartbeat, timeSync, shutdownService, kvp, vss, fcopy].compactMap { $0 } }
    /// Synthetic SCSI controllers, by controller number.
    public var controllers: [Int: StorageVSP] { deviceSet.controllers }
    /// Controller 0, or the lowest-numbered one (hot plug targets it by default).
    public var storage: StorageVSP? { controllers.keys.min().flatMap { controllers[$0] } }
    var workers: WorkerPool { deviceSet.workers }
    /// Synthetic network adapters, in configuration order.
    public var nics: [NetworkVSP] { deviceSet.nics }
    /// Handlers of descriptors the carrier and devices asked the loop to watch.
    var watched: [Int32: () -> Void] = [:]
    /// Legacy I/O ports: the emulated devices (IDE channel, NE2000, the PCI functions' BARs), reached by port I/O traps.
    public let portIO = PortIOBus()
    /// PCI bus 0 (configuration mechanism #1) when the partition has an emulated PCI device.
    public private(set) var pci: PCIBus?
    public var ide: ATAController? { deviceSet.ide }
    public var piix4: PIIX4IDE? { deviceSet.piix4 }
    public var dec21140: DEC21140? { deviceSet.dec21140 }
    public var ne2000: NE2000? { deviceSet.ne2000 }
    /// Interrupt lines of the emulated devices.
    var lines: [InterruptLine] { [ide?.line, dec21140?.line, ne2000?.line].compactMap { $0 } }
    /// The emulated NICs, whose TAPs the loop watches (kept: it is walked after every port write).
    let legacyNICs: [any LegacyNICDevice]

    public init(configuration: PartitionConfiguration, id: UInt32, carrier: any HostCarrier, imageDirectory: String, logger: Logger,
                trace: TraceWriter?, relays: DeviceRelays = DeviceRelays()) throws {
        self.configuration = configuration
        self.id = id
        self.carrier = carrier
        self.logger = logger
        self.trace = trace
        var server = VMBusServerConfiguration()
        let versions = try configuration.parsedVersions()
        if !versions.isEmpty { server.supportedVersions = Set(versions) }
        serverConfiguration = server
        deviceSet = try PartitionDevices(configuration: configuration, id: id, imageDirectory: imageDirectory, relays: relays, logger: logger)
        legacyNICs = ([deviceSet.dec21140, deviceSet.ne2000] as [(any LegacyNICDevice)?]).compactMap { $0 }
        if let ide = deviceSet.ide { portIO.attach(ide) }
        if let ne2000 = deviceSet.ne2000 { portIO.attach(ne2000) }
        if deviceSet.piix4 != nil || deviceSet.dec21140 != nil {
            // What a generation 1 VM's firmware leaves: 440BX, the PIIX4 (ISA bridge, IDE), the legacy NIC.
            let bus = PCIBus(ports: portIO)
            portIO.attach(bus)
            bus.attach(i440BXHostBridge(), device: 0, function: 0)
            bus.attach(piix4ISABridge(), device: 7, function: 0)
            if let piix4 = deviceSet.piix4 { bus.attach(piix4, device: 7, function: 1) }
            if let dec = deviceSet.dec21140 { bus.attach(DEC21140Function(chip: dec), device: 10, function: 0) }
            pci = bus
        }
        epoll = viridian_epoll_create()
        wake = try EventFD()
        guard epoll >= 0 else { throw LinkError.system(call: "epoll_create", errno: errno) }
        _ = viridian_epoll_add(epoll, wake.fd, Tag.wake)
        _ = viridian_epoll_add(epoll, workers.completions.fd, Tag.completions)
        for nic in nics { nic.attach(watcher: self) }
        for (index, nic) in nics.enumerated() where index < configuration.nic.count { nic.onPortLost = { [unowned self] in self.tapLost(index) } }
        try carrier.start(loop: self, delegate: self)
    }

    deinit { close(epoll) }

    /// Starts the service thread.
    public func start() {
        thread = OSThread { [self] in
            if configuration.cpuMask != 0 { _ = viridian_pin_thread(configuration.cpuMask) }
            loop()
        }
    }

    /// Rescinds every channel, tells the guest the host is going, and ends the thread.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        let stopped: Void? = perform { [self] in
            if let runtime { runtime.server.rescindAll() }
            carrier.stop()
            detach(reason: "host shutting down")
            running = false
        }
        guard stopped != nil else {
            logger.error("\(configuration.name): the partition thread did not stop within \(Self.performTimeoutMs) ms; leaving it")
            return
        }
        thread?.join()
        thread = nil
        workers.stop()
    }

    /// Runs `body` on the service thread and returns its result.
    ///
    /// Waits at most `timeoutMs`: nil means the thread did not get to it in time (a partition
    /// stuck on its guest must not hang `status` or the control socket for every partition). The
    /// job still runs when the thread gets to it; its result is then dropped.
    public func perform<T>(timeoutMs: Int32 = PartitionService.performTimeoutMs, _ body: @escaping () -> T) -> T? {
        if thread == nil { return body() }
        guard let done = try? EventFD() else { return nil }
        let box = PerformResult<T>()
        let job = { box.set(body()); done.ring() }
        requestLock.withLock { requests.append(job) }
        wake.ring()
        _ = done.poll(timeoutMs: Int(timeoutMs))
        return box.get()
    }

    /// How a lost TAP is brought back: a confined worker asks its supervisor (which calls
    /// `restoreTAP` through the worker); nil: this process reopens it itself.
    public var tapLostHandler: ((Int) -> Void)?

    /// NIC `index`'s TAP is gone: it is reopened once an interface of its name exists again.
    func tapLost(_ index: Int) {
        logger.warning("\(configuration.name): NIC \(index)'s TAP \(configuration.nic[index].tap) is gone; the guest sees the link down until it returns")
        if let tapLostHandler { return tapLostHandler(index) }
        let nic = configuration.nic[index], queues = configuration.queueCount(nic)
        Thread.detachNewThread { [weak self] in
            while let self, !self.stopping.load(ordering: .relaxed) {
                if let fds = TapRecovery.reopen(nic, queues: queues) {
                    _ = self.perform { self.restoreTAP(index, fds) }
                    return
                }
                usleep(500_000)
            }
        }
    }

    /// Puts a reopened TAP (one descriptor per queue, taken over) behind NIC `index`; on the partition thread.
    public func restoreTAP(_ index: Int, _ fds: [Int32]) {
        guard deviceSet.taps.indices.contains(index), let first = fds.first else { return fds.forEach { close($0) } }
        let (primary, pool) = deviceSet.taps[index]
        _ = primary.reattach(first)
        pool.reattach(Array(fds.dropFirst()))
        nics[index].portRestored()
        logger.notice("\(configuration.name): NIC \(index)'s TAP \(configuration.nic[index].tap) is back")
    }

    /// Queues a job that keeps the partition thread busy (the test-only fault of the control socket).
    func stallForTest(milliseconds: Int) {
        requestLock.withLock { requests.append { usleep(UInt32(milliseconds) * 1000) } }
        wake.ring()
    }

    /// How long a control request waits for the partition thread.
    public static let performTimeoutMs: Int32 = 5000

    // MARK: The loop

    private func loop() {
        var tags = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while running {
            var now = viridian_now_ns()
            for provider in providers { provider.tick(now: now) }
            now = viridian_now_ns()
            let nearest = ([carrier.nextDeadline].compactMap { $0 } + providers.compactMap(\.nextDeadline)).min()
            let timeout = nearest.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            let n = viridian_epoll_wait(epoll, &tags, &events, 64, timeout)
            carrier.expire(now: viridian_now_ns())
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("\(configuration.name): epoll_wait failed: errno \(errno)")
                return
            }
            for i in 0..<Int(n) {
                let tag = tags[i]
                switch tag & Tag.kindMask {
                case Tag.completions:
                    workers.drainCompletions()
                case Tag.device:
                    watched[Int32(truncatingIfNeeded: tag & 0xFFFF_FFFF)]?()
                case Tag.wake:
                    var count: UInt64 = 0
                    _ = read(wake.fd, &count, 8)
                    let jobs = requestLock.withLock { () -> [() -> Void] in
                        defer { requests.removeAll() }
                        return requests
                    }
                    jobs.forEach { $0() }
                default:
                    break
                }
            }
        }
    }

    // MARK: Attach and detach

    /// Tears down the runtime: devices closed, GPADLs dropped, the carrier's per-guest state released.
    private func detach(reason: String) {
        guard let runtime else { return }
        runtime.removeChildren()
        runtime.partition.eventPortObserver = nil
        runtime.server.detachGuest()
        for line in lines { line.onRaise = nil }
        for nic in legacyNICs { watch(nic.descriptor, wanted: false) {} }
        piix4?.busMaster.memory = nil
        dec21140?.memory = nil
        carrier.guestDetached()
        self.runtime = nil
        logger.notice("\(configuration.name): \(reason); partition reset, waiting for a guest")
    }
}

extension PartitionService: CarrierDelegate {
    public func guestArrived(memory: GuestPhysicalMemory, description: String) throws {
        // Carriers report a guest's leaving before the next one arrives; a second guest is refused,
        // never allowed to tear down the carrier state of the one being attached.
        guard runtime == nil else { throw LinkError.refused(LinkRefusal.busy, "partition \(configuration.name) already has a guest") }
        let runtime = PartitionRuntime(memory: memory, carrier: carrier, guest: description, id: id, configuration: configuration,
                                       serverConfiguration: serverConfiguration, logger: logger)
        if let trace {
            let name = configuration.name
            runtime.server.messageObserver = { trace.message(partition: name, guestToHost: $0, bytes: $1) }
            runtime.server.packetObserver = PacketTrace(writer: trace, partition: name)
        }
        for device in deviceSet.all { runtime.server.offer(device) }
        runtime.portIO = portIO
        if !legacyNICs.isEmpty { runtime.afterPortWrite = { [unowned self] in self.legacyNICsServiced() } }
        portIO.reset()
        piix4?.busMaster.memory = memory
        dec21140?.memory = memory
        for line in lines { line.onRaise = try carrier.addInterruptLine(irq: line.irq) }
        for nic in legacyNICs { watchFrames(nic) }
        self.runtime = runtime
        attachCount += 1
        for connection in runtime.partition.eventConnectionIDs.sorted() { carrier.eventPortChanged(connection, added: true) }
        runtime.partition.eventPortObserver = { [unowned self] in self.carrier.eventPortChanged($0, added: $1) }
        logger.info("\(configuration.name): \(description) attached")
    }

    public func guestExited(vp: Int) { runtime?.serviceVP(vp) }

    public func guestSignalled(connectionID: UInt32) { _ = runtime?.partition.deliverSignal(connectionID: connectionID) }

    public func guestLeft(reason: String) { detach(reason: reason) }
}

extension PartitionService {
    /// Watches an emulated NIC's TAP: frames are taken while the card has room. While it has none
    /// the TAP is not watched; the guest's register accesses that free the ring bring it back.
    func watchFrames(_ nic: any LegacyNICDevice) {
        guard nic.descriptor >= 0 else { return }
        watch(nic.descriptor, wanted: true) { [unowned self] in
            if !nic.pollReceive() { self.watch(nic.descriptor, wanted: false) {} }
        }
    }

    /// After a port write: a guest that freed ring space (NE2000 BNRY, 21140 CSR2 or any CSR)
    /// may have let waiting frames in; watch the TAPs again where the card takes frames.
    func legacyNICsServiced() {
        guard runtime != nil else { return }
        for nic in legacyNICs where nic.acceptsFrames && watched[nic.descriptor] == nil { watchFrames(nic) }
    }
}

extension PartitionService: DescriptorWatcher {
    /// Devices call this on the service thread to start or stop input from a descriptor.
    public func watch(_ fd: Int32, wanted: Bool, handler: @escaping () -> Void) {
        if wanted {
            watched[fd] = handler
            _ = viridian_epoll_add(epoll, fd, Tag.device | UInt64(UInt32(bitPattern: fd)))
        } else if watched.removeValue(forKey: fd) != nil {
            _ = viridian_epoll_remove(epoll, fd)
        }
    }
}

/// A result handed from the partition thread to a caller that may have stopped waiting.
final class PerformResult<T>: @unchecked Sendable {
    private let lock = Lock()
    private var value: T?
    func set(_ v: T) { lock.withLock { value = v } }
    func get() -> T? { lock.withLock { value } }
}
