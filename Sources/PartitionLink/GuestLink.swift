// The agent's end of PartitionLink: guest memory from the host, trapped calls over eventfds, interrupts per VP.

import Atomics
import CSystem
import Glibc
import GuestMemory
import VMBusClient
import VMBusWire

/// A partition joined from the agent process over PartitionLink. A hypercall or MSR access fills
/// the VP's register block, rings its doorbell eventfd and waits for the completion (the VM exit);
/// a fast HvSignalEvent on a connection with a known eventfd is one eventfd write. Interrupts
/// arrive on one eventfd per VP.
public final class GuestLink: GuestPlatform, @unchecked Sendable {
    public let welcome: LinkFrame.Welcome
    public let memory: GuestPhysicalMemory
    public let pool: GuestBufferPool
    let socket: LinkSocket
    let vpBlocks: UnsafeMutableRawPointer
    let doorbells: [EventFD]
    let interrupts: [EventFD]
    let exits: VPExitPort
    private let eventLock = Lock()
    private var eventFDs: [UInt32: EventFD] = [:]
    private var lines: [UInt32: EventFD] = [:]
    private let closed: ManagedAtomic<Bool>
    private var monitor: OSThread?

    public var roundTrips: ManagedAtomic<UInt64> { exits.roundTrips }
    public private(set) var fastSignals = ManagedAtomic<UInt64>(0)

    /// Connects to `address` (unix:PATH), says hello and maps what the host sends.
    public static func attach(to address: String, flags: UInt32 = 0) throws(LinkError) -> GuestLink {
        let socket = try LinkSocket.connect(to: address)
        try socket.send(.hello(.init(pid: UInt32(getpid()), flags: flags)))
        let (frame, fds) = try socket.receive()
        switch frame {
        case .welcome(let w):
            guard fds.count == w.descriptorCount else {
                fds.forEach { close($0) }
                throw .malformed("welcome with \(fds.count) descriptors, expected \(w.descriptorCount)")
            }
            return try GuestLink(socket: socket, welcome: w, fds: fds)
        case .refuse(let code, let reason):
            fds.forEach { close($0) }
            throw .refused(code, reason)
        default:
            fds.forEach { close($0) }
            throw .malformed("expected welcome")
        }
    }

    private init(socket: LinkSocket, welcome: LinkFrame.Welcome, fds: [Int32]) throws(LinkError) {
        self.socket = socket
        self.welcome = welcome
        // What the host sent must be as large as it says (a short memfd would SIGBUS the agent).
        guard let memoryBytes = Int(exactly: welcome.memoryBytes), viridian_fd_size(fds[0]) >= Int64(memoryBytes),
            viridian_fd_size(fds[1]) >= Int64(VPBlock.memorySize)
        else {
            fds.forEach { close($0) }
            throw .malformed("guest memory of \(welcome.memoryBytes) bytes or VP blocks larger than the descriptors sent")
        }
        do { memory = try GuestPhysicalMemory(adopting: fds[0], size: memoryBytes) } catch {
            fds[1...].forEach { close($0) }
            throw .malformed("guest memory: \(error)")
        }
        guard let blocks = viridian_mmap_shared(VPBlock.memorySize, fds[1], 0) else {
            let e = errno
            fds[1...].forEach { close($0) }
            throw .system(call: "mmap(vp blocks)", errno: e)
        }
        close(fds[1])
        let n = Int(welcome.vpCount)
        guard (1...VPBlock.maximumVPs).contains(n) else {
            munmap(blocks, VPBlock.memorySize)
            fds[2...].forEach { close($0) }
            throw .malformed("welcome for \(n) VPs (1…\(VPBlock.maximumVPs) fit the block page)")
        }
        vpBlocks = blocks
        let doorbells = (0..<n).map { EventFD(adopting: fds[2 + 3 * $0]) }
        self.doorbells = doorbells
        let closed = ManagedAtomic<Bool>(false)
        self.closed = closed
        pool = GuestBufferPool(identity: memory)
        interrupts = (0..<n).map { EventFD(adopting: fds[4 + 3 * $0]) }
        exits = VPExitPort(blocks: blocks, vpCount: n, completions: (0..<n).map { EventFD(adopting: fds[3 + 3 * $0]) }, closed: closed) {
            doorbells[$0].ring()
        }
    }

    deinit {
        munmap(vpBlocks, VPBlock.memorySize)
    }

    public var vpCount: Int { Int(welcome.vpCount) }
    public var isClosed: Bool { closed.load(ordering: .acquiring) }
    public var partitionName: String { welcome.name }
    public var partitionID: UInt32 { welcome.partitionID }
    public var cpuMask: UInt64 { welcome.cpuMask }

    /// Starts the thread that reads host frames (eventfds, shutdown). When the host goes away it
    /// wakes every waiter and calls `onClose`.
    public func startMonitor(onClose: @escaping @Sendable (LinkError) -> Void) {
        monitor = OSThread { [self] in
            var reason = LinkError.closed
            while true {
                do throws(LinkError) {
                    let (frame, fds) = try socket.receive()
                    switch frame {
                    case .eventFD(let id) where fds.count == 1:
                        eventLock.withLock { eventFDs[id] = EventFD(adopting: fds[0]) }
                    case .interruptLine(let irq) where fds.count == 1:
                        eventLock.withLock { lines[irq] = EventFD(adopting: fds[0]) }
                    case .revokeEventFD(let id):
                        _ = eventLock.withLock { eventFDs.removeValue(forKey: id) }
                        fds.forEach { close($0) }
                    case .shutdown:
                        fds.forEach { close($0) }
                        reason = .refused(LinkRefusal.shuttingDown, "host is shutting down")
                    default:
                        fds.forEach { close($0) }
                    }
                } catch {
                    if case .refused = reason {} else { reason = error }
                    break
                }
            }
            closed.store(true, ordering: .releasing)
            exits.wakeAll()
            for i in interrupts { i.ring() }
            for l in eventLock.withLock({ Array(lines.values) }) { l.ring() }
            onClose(reason)
        }
    }

    /// Closes the link (the host sees the agent leave).
    public func detach() {
        closed.store(true, ordering: .releasing)
        Glibc.shutdown(socket.fd, Int32(SHUT_RDWR))
        monitor?.join()
        monitor = nil
    }

    /// Blocks until VP `vp` is interrupted. Returns false once the link is closed.
    public func waitForInterrupt(vp: Int) -> Bool {
        interrupts[vp].wait()
        return !isClosed
    }

    /// Wakes VP `vp`'s interrupt wait (used to stop VP threads).
    public func kick(vp: Int) { interrupts[vp].ring() }

    /// The eventfd of legacy interrupt line `irq`, once the host has sent it.
    public func interruptLine(_ irq: UInt32) -> EventFD? { eventLock.withLock { lines[irq] } }

    // MARK: Port I/O (emulated devices)

    /// IN of `size` bytes (1, 2, 4) from `port`: one trap to the host, as a VM exit would be. nil if the link is gone.
    public func portIn(vp: UInt32 = 0, port: UInt16, size: Int) -> UInt32? { exits.portIn(vp: vp, port: port, size: size) }

    /// OUT of `size` bytes to `port`: one trap. False if the link is gone.
    @discardableResult
    public func portOut(vp: UInt32 = 0, port: UInt16, size: Int, value: UInt32) -> Bool {
        exits.portOut(vp: vp, port: port, size: size, value: value)
    }

    // MARK: GuestHypervisor

    public func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        let c = HypercallControl(rawValue: control)
        if c.code == HypercallCode.signalEvent.rawValue, c.isFast, input >> 32 == 0,
            let fd = eventLock.withLock({ eventFDs[UInt32(truncatingIfNeeded: input)] })
        {
            fastSignals.wrappingIncrement(ordering: .relaxed)
            fd.ring()
            return HypercallResult(status: .success).rawValue
        }
        return exits.hypercall(vp: vp, control: control, input: input, output: output)
    }

    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { exits.writeMSR(vp: vp, msr, value) }

    public func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { exits.readMSR(vp: vp, msr) }
}
