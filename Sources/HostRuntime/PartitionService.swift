// A partition's service thread: listens for its agent, runs the hypervisor loop, survives agents dying.

import CSystem
import EmulatedDevices
import Foundation
import EchoDevice
import IntegrationServices
import SyntheticNetwork
import SyntheticStorage
import Glibc
import GuestMemory
import Hypervisor
import Logging
import PartitionLink
import VMBusWire

/// Serves one partition on its own thread. The thread owns every hypervisor object of the
/// partition (no locks on the data path): it waits with epoll on the listening socket, the
/// agent's socket, every VP doorbell and every channel doorbell. An agent that dies is noticed
/// by the socket closing; its runtime is torn down and the socket accepts a new agent.
public final class PartitionService: @unchecked Sendable {
    public let configuration: PartitionConfiguration
    public let id: UInt32
    public let socketPath: String
    let listener: LinkListener
    let devices: [any VMBusDevice]
    /// The integration services, if configured (each also in `devices`).
    public let heartbeat: HeartbeatProvider?
    public let timeSync: TimeSyncProvider?
    public let shutdownService: ShutdownProvider?
    public let kvp: KVPProvider?
    var providers: [ICProvider] { [heartbeat, timeSync, shutdownService, kvp].compactMap { $0 } }
    let serverConfiguration: VMBusServerConfiguration
    let logger: Logger
    let trace: TraceWriter?
    let epoll: Int32
    let wake: EventFD
    private let requestLock = Lock()
    private var requests: [() -> Void] = []
    private var thread: OSThread?
    private var running = true
    var runtime: PartitionRuntime?
    public private(set) var attachCount = 0
    /// Peers that connected but have not said hello yet, by descriptor, with their deadline.
    private var pending: [Int32: (socket: LinkSocket, deadline: UInt64)] = [:]
    /// How long a peer has to say hello, and how many may wait at once.
    static let helloTimeoutNs: UInt64 = 2_000_000_000
    static let pendingLimit = 16

    enum Tag {
        static let listener: UInt64 = 1 << 56
        static let socket: UInt64 = 2 << 56
        static let doorbell: UInt64 = 3 << 56
        static let channel: UInt64 = 4 << 56
        static let wake: UInt64 = 5 << 56
        static let pending: UInt64 = 6 << 56
        static let completions: UInt64 = 7 << 56
        static let device: UInt64 = 8 << 56
        static let kindMask: UInt64 = 0xFF << 56
    }

    /// Synthetic SCSI controllers, by controller number (disks name theirs; default 0).
    public let controllers: [Int: StorageVSP]
    /// Controller 0, or the lowest-numbered one (hot plug targets it by default).
    public var storage: StorageVSP? { controllers.keys.min().flatMap { controllers[$0] } }
    /// I/O threads of the partition's devices.
    let workers: WorkerPool
    /// Synthetic network adapters, in configuration order.
    public let nics: [NetworkVSP]
    /// Handlers of descriptors devices asked the loop to watch.
    var watched: [Int32: () -> Void] = [:]
    /// Legacy I/O ports: the emulated devices (IDE channel, NE2000), reached by port I/O traps.
    public let portIO = PortIOBus()
    public let ide: ATAController?
    public let ne2000: NE2000?
    /// Interrupt lines of the emulated devices.
    var lines: [InterruptLine] { [ide?.line, ne2000?.line].compactMap { $0 } }

    public init(configuration: PartitionConfiguration, id: UInt32, socketPath: String, imageDirectory: String, logger: Logger,
                trace: TraceWriter?) throws {
        self.configuration = configuration
        self.id = id
        self.socketPath = socketPath
        self.logger = logger
        self.trace = trace
        var server = VMBusServerConfiguration()
        let versions = try configuration.parsedVersions()
        if !versions.isEmpty { server.supportedVersions = Set(versions) }
        serverConfiguration = server
        let echo: [any VMBusDevice] = (0..<configuration.echoDevices).map { i in
            EchoDevice(instanceID: GUID(low: 0x484F_4345_4D52_4956, high: UInt64(id) << 32 | UInt64(i + 1)), logger: logger)
        }
        let services = Set(configuration.integrationServices)
        func instance(_ n: UInt64) -> GUID { GUID(low: 0x4349_4E44_4952_4956, high: UInt64(id) << 32 | n) }
        let clock = viridian_now_ns
        let name = configuration.name
        let hb = services.contains("heartbeat")
            ? HeartbeatProvider(instanceID: instance(1), intervalNs: UInt64(configuration.heartbeatIntervalMs) * 1_000_000, logger: logger, now: clock) : nil
        hb?.onStateChange = { old, new in
            if old != .unknown || new != .ok { logger.notice("\(name): heartbeat \(old.rawValue) → \(new.rawValue)") }
        }
        heartbeat = hb
        timeSync = services.contains("timesync")
            ? TimeSyncProvider(instanceID: instance(2), intervalNs: UInt64(configuration.timesyncIntervalMs) * 1_000_000,
                               source: SystemTimeSource(offsetNs: Int64(configuration.timeOffsetMs) * 1_000_000), logger: logger, now: clock) : nil
        shutdownService = services.contains("shutdown") ? ShutdownProvider(instanceID: instance(3), logger: logger, now: clock) : nil
        kvp = services.contains("kvp") ? KVPProvider(instanceID: instance(4), logger: logger, now: clock) : nil
        // LUNs are numbered in configuration order within each controller.
        var luns: [Int: [UInt8: SCSIDisk]] = [:]
        for disk in configuration.disks(imageDirectory: imageDirectory) {
            let lun = UInt8(luns[disk.controller, default: [:]].count)
            guard lun < 255 else { continue }
            let directory = (disk.path as NSString).deletingLastPathComponent
            if !disk.readOnly { try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
            let backend = try FileBackend(path: disk.path, readOnly: disk.readOnly,
                                          createSize: disk.readOnly ? nil : UInt64(disk.sizeMiB) << 20)
            luns[disk.controller, default: [:]][lun] = SCSIDisk(backend: backend, serial: "\(configuration.name.prefix(10))-\(disk.controller)-\(lun)")
            logger.info("\(configuration.name): controller \(disk.controller) LUN \(lun) = \(disk.path) (\(backend.sizeBytes >> 20) MiB\(disk.readOnly ? ", read-only" : ""))")
        }
        workers = try WorkerPool(threads: 4)
        var controllers: [Int: StorageVSP] = [:]
        for (number, set) in luns {
            let vsp = StorageVSP(instanceID: instance(0x100 + UInt64(number)), luns: set, logger: logger)
            vsp.pollNanoseconds = UInt64(configuration.storagePollMicroseconds) * 1000
            vsp.executor = workers
            controllers[number] = vsp
        }
        self.controllers = controllers
        var nics: [NetworkVSP] = []
        for (index, nic) in configuration.nic.enumerated() {
            let tap: TapDevice
            let queues = nic.queues ?? min(configuration.vps, 8)
            do {
                tap = try TapDevice(name: nic.tap, namespace: nic.netns, multiQueue: queues > 1)
                try tap.configure(mtu: nic.mtu, up: true)
            } catch {
                throw ConfigurationError.invalid("\(configuration.name): nic \(index) (TAP \(nic.tap)\(nic.netns.map { " in netns \($0)" } ?? "")): \(error)"
                    + (getuid() != 0 ? " (TAP devices need root or CAP_NET_ADMIN)" : ""))
            }
            let mac = nic.macAddress(partitionID: id, index: index)
            let vsp = NetworkVSP(instanceID: instance(0x200 + UInt64(index)), port: tap, mac: mac, mtu: nic.mtu, logger: logger)
            vsp.maximumQueues = queues
            let (name, netns) = (tap.name, nic.netns)
            vsp.openQueuePort = { [logger] _ in
                do { return try TapDevice(name: name, namespace: netns, multiQueue: true) } catch {
                    logger.warning("TAP \(name): no further queue: \(error)")
                    return nil
                }
            }
            nics.append(vsp)
            logger.info("\(configuration.name): NIC \(index) = TAP \(tap.name)\(nic.netns.map { " (netns \($0))" } ?? ""), MAC \(MACAddress.format(mac)), MTU \(nic.mtu)")
        }
        self.nics = nics
        if configuration.ide.isEmpty {
            ide = nil
        } else {
            let backends: [(any BlockBackend)?] = try configuration.ide.map { disk in
                if !disk.readOnly {
                    try? FileManager.default.createDirectory(atPath: (disk.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                }
                return try FileBackend(path: disk.path, readOnly: disk.readOnly, createSize: disk.readOnly ? nil : UInt64(disk.sizeMiB) << 20)
            }
            ide = ATAController(disks: backends)
            logger.info("\(configuration.name): emulated IDE channel 0x1F0/IRQ 14: \(configuration.ide.map(\.path).joined(separator: ", "))")
        }
        if let nic = configuration.ne2000 {
            let tap: TapDevice
            do {
                tap = try TapDevice(name: nic.tap, namespace: nic.netns)
                try tap.configure(mtu: 1500, up: true)
            } catch {
                throw ConfigurationError.invalid("\(configuration.name): ne2000 (TAP \(nic.tap)): \(error)" + (getuid() != 0 ? " (TAP devices need root)" : ""))
            }
            let mac = nic.macAddress(partitionID: id, index: 0x80)
            ne2000 = NE2000(base: 0x300, mac: mac, port: tap, line: InterruptLine(irq: 9))
            logger.info("\(configuration.name): emulated NE2000 0x300/IRQ 9 = TAP \(tap.name), MAC \(MACAddress.format(mac))")
        } else {
            ne2000 = nil
        }
        if let ide { portIO.attach(ide) }
        if let ne2000 { portIO.attach(ne2000) }
        devices = echo + ([hb, timeSync, shutdownService, kvp] as [ICProvider?]).compactMap { $0 }
            + controllers.keys.sorted().map { controllers[$0]! } + nics
        listener = try LinkListener(path: socketPath)
        epoll = viridian_epoll_create()
        wake = try EventFD()
        guard epoll >= 0 else { throw LinkError.system(call: "epoll_create", errno: errno) }
        _ = viridian_epoll_add(epoll, listener.fd, Tag.listener)
        _ = viridian_epoll_add(epoll, wake.fd, Tag.wake)
        _ = viridian_epoll_add(epoll, workers.completions.fd, Tag.completions)
        for nic in nics { nic.attach(watcher: self) }
    }

    deinit { close(epoll) }

    /// Starts the service thread.
    public func start() {
        thread = OSThread { [self] in
            if configuration.cpuMask != 0 { _ = viridian_pin_thread(configuration.cpuMask) }
            loop()
        }
    }

    /// Rescinds every channel, tells the agent the host is going, and ends the thread.
    public func stop() {
        perform { [self] in
            if let runtime {
                runtime.server.rescindAll()
                try? runtime.socket.send(.shutdown(reason: 0))
                detach(reason: "host shutting down")
            }
            running = false
        }
        thread?.join()
        thread = nil
        workers.stop()
    }

    /// Runs `body` on the service thread and returns its result.
    public func perform<T>(_ body: @escaping () -> T) -> T {
        if thread == nil { return body() }
        let done = try! EventFD()
        nonisolated(unsafe) var result: T?
        let job = { result = body(); done.ring() }
        requestLock.withLock { requests.append(job) }
        wake.ring()
        done.wait()
        return result!
    }

    // MARK: The loop

    private func loop() {
        var tags = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while running {
            var now = viridian_now_ns()
            for provider in providers { provider.tick(now: now) }
            now = viridian_now_ns()
            let nearest = (pending.values.map(\.deadline) + providers.compactMap(\.nextDeadline)).min()
            let timeout = nearest.map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            let n = viridian_epoll_wait(epoll, &tags, &events, 64, timeout)
            expirePending()
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("\(configuration.name): epoll_wait failed: errno \(errno)")
                return
            }
            for i in 0..<Int(n) {
                let tag = tags[i]
                switch tag & Tag.kindMask {
                case Tag.doorbell:
                    runtime?.serviceVP(Int(tag & 0xFFFF))
                case Tag.channel:
                    guard let runtime, let doorbell = runtime.channelDoorbells[UInt32(truncatingIfNeeded: tag)] else { continue }
                    var count: UInt64 = 0
                    _ = read(doorbell.fd, &count, 8)
                    runtime.partition.deliverSignal(connectionID: UInt32(truncatingIfNeeded: tag))
                case Tag.socket:
                    agentSocketReadable()
                case Tag.listener:
                    acceptPeer()
                case Tag.pending:
                    greet(Int32(truncatingIfNeeded: tag & 0xFFFF_FFFF))
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

    /// Accepts a connection and waits (without blocking the loop) for its hello.
    private func acceptPeer() {
        let socket: LinkSocket
        do { socket = try listener.accept() } catch {
            logger.warning("\(configuration.name): accept failed: \(error)")
            return
        }
        guard pending.count < Self.pendingLimit else {
            try? socket.send(.refuse(code: LinkRefusal.busy, reason: "too many connections waiting"))
            return
        }
        pending[socket.fd] = (socket, viridian_now_ns() + Self.helloTimeoutNs)
        _ = viridian_epoll_add(epoll, socket.fd, Tag.pending | UInt64(UInt32(bitPattern: socket.fd)))
    }

    /// Drops peers that did not say hello in time.
    private func expirePending() {
        let now = viridian_now_ns()
        for (fd, peer) in pending where peer.deadline <= now {
            _ = viridian_epoll_remove(epoll, fd)
            pending[fd] = nil
            logger.warning("\(configuration.name): dropped peer pid \(LinkListener.peerPID(peer.socket)): no hello within 2 s")
            try? peer.socket.send(.refuse(code: LinkRefusal.badHello, reason: "no hello within 2 s"))
        }
    }

    /// Reads a waiting peer's hello; attaches it, or refuses it (bad hello, partition busy).
    private func greet(_ fd: Int32) {
        guard let peer = pending.removeValue(forKey: fd) else { return }
        _ = viridian_epoll_remove(epoll, fd)
        let socket = peer.socket
        let pid = LinkListener.peerPID(socket)
        do {
            let (frame, fds) = try socket.receive()
            fds.forEach { close($0) }
            guard case .hello = frame else { throw LinkError.malformed("first frame is not hello") }
        } catch {
            logger.warning("\(configuration.name): dropped peer pid \(pid): \(error)")
            try? socket.send(.refuse(code: LinkRefusal.badHello, reason: "bad handshake: \(error)"))
            return
        }
        if runtime != nil {
            try? socket.send(.refuse(code: LinkRefusal.busy, reason: "partition \(configuration.name) already has an agent"))
            return
        }
        do {
            let runtime = try PartitionRuntime(socket: socket, agentPID: pid, id: id, configuration: configuration,
                                               serverConfiguration: serverConfiguration, logger: logger)
            if let trace {
                let name = configuration.name
                runtime.server.messageObserver = { trace.message(partition: name, guestToHost: $0, bytes: $1) }
                runtime.server.packetObserver = PacketTrace(writer: trace, partition: name)
            }
            for device in devices { runtime.server.offer(device) }
            try socket.send(.welcome(.init(partitionID: id, vpCount: UInt32(configuration.vps),
                                           memoryBytes: UInt64(configuration.memoryMiB) << 20,
                                           cpuMask: configuration.cpuMask, name: configuration.name)),
                            fds: runtime.welcomeDescriptors)
            runtime.portIO = portIO
            if ne2000 != nil { runtime.afterPortWrite = { [unowned self] in self.ne2000Serviced() } }
            portIO.reset()
            for line in lines {
                let doorbell = try EventFD()
                line.onRaise = { doorbell.ring() }
                runtime.lineDoorbells.append(doorbell)
                try socket.send(.interruptLine(irq: line.irq), fds: [doorbell.fd])
            }
            if let ne2000, ne2000.descriptor >= 0 {
                watch(ne2000.descriptor, wanted: true) { [unowned self] in self.ne2000Readable() }
            }
            self.runtime = runtime
            attachCount += 1
            _ = viridian_epoll_add(epoll, socket.fd, Tag.socket)
            for (vp, doorbell) in runtime.doorbells.enumerated() { _ = viridian_epoll_add(epoll, doorbell.fd, Tag.doorbell | UInt64(vp)) }
            for connection in runtime.partition.eventConnectionIDs.sorted() { eventPortChanged(connection, added: true) }
            runtime.partition.eventPortObserver = { [unowned self] in self.eventPortChanged($0, added: $1) }
            logger.info("\(configuration.name): agent pid \(pid) attached")
        } catch {
            logger.error("\(configuration.name): cannot attach agent pid \(pid): \(error)")
            try? socket.send(.refuse(code: LinkRefusal.internalError, reason: "\(error)"))
        }
    }

    /// Gives the agent a doorbell for a new event connection, or takes it back.
    private func eventPortChanged(_ connection: UInt32, added: Bool) {
        guard let runtime else { return }
        if added {
            guard let doorbell = try? EventFD() else { return }
            runtime.channelDoorbells[connection] = doorbell
            _ = viridian_epoll_add(epoll, doorbell.fd, Tag.channel | UInt64(connection))
            try? runtime.socket.send(.eventFD(connectionID: connection), fds: [doorbell.fd])
        } else if let doorbell = runtime.channelDoorbells.removeValue(forKey: connection) {
            _ = viridian_epoll_remove(epoll, doorbell.fd)
            try? runtime.socket.send(.revokeEventFD(connectionID: connection))
        }
    }

    private func agentSocketReadable() {
        guard let runtime else { return }
        do {
            let (frame, fds) = try runtime.socket.receive()
            fds.forEach { close($0) }
            logger.debug("\(configuration.name): ignored \(frame) from the agent")
        } catch {
            detach(reason: "agent pid \(runtime.agentPID) left (\(error))")
        }
    }

    /// Tears down the runtime: devices closed, GPADLs dropped, descriptors closed.
    private func detach(reason: String) {
        guard let runtime else { return }
        runtime.partition.eventPortObserver = nil
        _ = viridian_epoll_remove(epoll, runtime.socket.fd)
        for doorbell in runtime.doorbells { _ = viridian_epoll_remove(epoll, doorbell.fd) }
        for doorbell in runtime.channelDoorbells.values { _ = viridian_epoll_remove(epoll, doorbell.fd) }
        runtime.server.detachGuest()
        for line in lines { line.onRaise = nil }
        if let ne2000 { watch(ne2000.descriptor, wanted: false) {} }
        runtime.socket.close()
        self.runtime = nil
        logger.notice("\(configuration.name): \(reason); partition reset, waiting for an agent")
    }
}

extension PartitionService {
    /// Frames wait on the NE2000's TAP: take what the card's ring has room for. While the ring is
    /// full the TAP is not watched; the guest's register accesses that free the ring bring it back.
    func ne2000Readable() {
        guard let ne2000 else { return }
        if !ne2000.pollReceive() { watch(ne2000.descriptor, wanted: false) {} }
    }

    /// After a port write: a guest that moved BNRY may have made room for waiting frames.
    func ne2000Serviced() {
        guard let ne2000, runtime != nil, watched[ne2000.descriptor] == nil else { return }
        watch(ne2000.descriptor, wanted: true) { [unowned self] in self.ne2000Readable() }
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
