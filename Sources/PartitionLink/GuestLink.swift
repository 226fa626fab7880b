// The agent's end of PartitionLink: guest memory from the host, trapped calls over eventfds, interrupts per VP.

import Atomics
import CSystem
import Glibc
import GuestMemory
import VMBusClient
import VMBusWire

/// A partition joined from the agent process. Implements `GuestHypervisor`: a hypercall or MSR
/// access fills the VP's register block, rings its doorbell and waits for the completion (the
/// VM exit); a fast HvSignalEvent on a connection with a known eventfd is one eventfd write.
/// Interrupts arrive on one eventfd per VP.
public final class GuestLink: GuestHypervisor, @unchecked Sendable {
    public let welcome: LinkFrame.Welcome
    public let memory: GuestPhysicalMemory
    let socket: LinkSocket
    let vpBlocks: UnsafeMutableRawPointer
    let doorbells: [EventFD]
    let completions: [EventFD]
    let interrupts: [EventFD]
    let vpLocks: [Lock]
    private let eventLock = Lock()
    private var eventFDs: [UInt32: EventFD] = [:]
    private var lines: [UInt32: EventFD] = [:]
    private let closed = ManagedAtomic<Bool>(false)
    private var monitor: OSThread?

    public private(set) var roundTrips = ManagedAtomic<UInt64>(0)
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
        do { memory = try GuestPhysicalMemory(adopting: fds[0], size: Int(welcome.memoryBytes)) } catch {
            fds[1...].forEach { close($0) }
            throw .malformed("guest memory: \(error)")
        }
        guard let blocks = viridian_mmap_shared(VPBlock.memorySize, fds[1], 0) else {
            let e = errno
            fds[1...].forEach { close($0) }
            throw .system(call: "mmap(vp blocks)", errno: e)
        }
        close(fds[1])
        vpBlocks = blocks
        let n = Int(welcome.vpCount)
        doorbells = (0..<n).map { EventFD(adopting: fds[2 + 3 * $0]) }
        completions = (0..<n).map { EventFD(adopting: fds[3 + 3 * $0]) }
        interrupts = (0..<n).map { EventFD(adopting: fds[4 + 3 * $0]) }
        vpLocks = (0..<n).map { _ in Lock() }
    }

    deinit {
        munmap(vpBlocks, VPBlock.memorySize)
    }

    public var vpCount: Int { Int(welcome.vpCount) }
    public var isClosed: Bool { closed.load(ordering: .acquiring) }

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
            for c in completions { c.ring() }
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
    public func portIn(vp: UInt32 = 0, port: UInt16, size: Int) -> UInt32? {
        roundTrip(vp: vp, kind: .portIn) { block in
            block.storeBytes(of: UInt32(port), toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: UInt64(size), toByteOffset: VPBlock.control, as: UInt64.self)
        }.map { UInt32(truncatingIfNeeded: $0) }
    }

    /// OUT of `size` bytes to `port`: one trap. False if the link is gone.
    @discardableResult
    public func portOut(vp: UInt32 = 0, port: UInt16, size: Int, value: UInt32) -> Bool {
        roundTrip(vp: vp, kind: .portOut) { block in
            block.storeBytes(of: UInt32(port), toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: UInt64(size), toByteOffset: VPBlock.control, as: UInt64.self)
            block.storeBytes(of: UInt64(value), toByteOffset: VPBlock.value, as: UInt64.self)
        } != nil
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
        return roundTrip(vp: vp, kind: .hypercall) { block in
            block.storeBytes(of: control, toByteOffset: VPBlock.control, as: UInt64.self)
            block.storeBytes(of: input, toByteOffset: VPBlock.input, as: UInt64.self)
            block.storeBytes(of: output, toByteOffset: VPBlock.output, as: UInt64.self)
        } ?? HypercallResult(status: .operationFailed).rawValue
    }

    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool {
        roundTrip(vp: vp, kind: .writeMSR) { block in
            block.storeBytes(of: msr, toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: value, toByteOffset: VPBlock.value, as: UInt64.self)
        } == VPBlock.msrOK
    }

    public func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? {
        guard Int(vp) < vpCount else { return nil }
        return vpLocks[Int(vp)].withLock {
            let block = vpBlocks + Int(vp) * VPBlock.size
            block.storeBytes(of: VPBlock.Kind.readMSR.rawValue, toByteOffset: VPBlock.kind, as: UInt32.self)
            block.storeBytes(of: msr, toByteOffset: VPBlock.msr, as: UInt32.self)
            doorbells[Int(vp)].ring()
            completions[Int(vp)].wait()
            guard !isClosed, block.load(fromByteOffset: VPBlock.result, as: UInt64.self) == VPBlock.msrOK else { return nil }
            return block.load(fromByteOffset: VPBlock.value, as: UInt64.self)
        }
    }

    /// One trapped call on `vp`: fill the block, ring, wait, read the result. nil if the link is gone.
    @inline(__always)
    private func roundTrip(vp: UInt32, kind: VPBlock.Kind, fill: (UnsafeMutableRawPointer) -> Void) -> UInt64? {
        guard Int(vp) < vpCount, !isClosed else { return nil }
        return vpLocks[Int(vp)].withLock {
            // VP n's block is the n-th 64 bytes of the 4 KiB block page (n < vpCount ≤ 16).
            let block = vpBlocks + Int(vp) * VPBlock.size
            block.storeBytes(of: kind.rawValue, toByteOffset: VPBlock.kind, as: UInt32.self)
            fill(block)
            roundTrips.wrappingIncrement(ordering: .relaxed)
            doorbells[Int(vp)].ring()
            completions[Int(vp)].wait()
            guard !isClosed else { return nil }
            return block.load(fromByteOffset: VPBlock.result, as: UInt64.self)
        }
    }
}
