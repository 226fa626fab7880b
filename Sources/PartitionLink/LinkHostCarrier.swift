// PartitionLink's host half: a Unix socket per partition, hello/welcome with memfd and eventfds, per-VP exits.

import CSystem
import Glibc
import GuestMemory
import Hypervisor
import Logging

/// The host end of PartitionLink as a `HostCarrier`. Every agent that says hello gets fresh,
/// zeroed guest memory, a page of VP register blocks and per VP a doorbell, a completion and an
/// interrupt eventfd (the welcome frame). One agent at a time; a second is refused as busy; a peer
/// that does not say hello within 2 s, or says something else, is refused and dropped. The agent's
/// socket closing is the agent leaving.
public final class LinkHostCarrier: HostCarrier {
    public let kind = "link"
    public var address: String { socketPath }
    let socketPath: String
    let welcome: LinkFrame.Welcome
    let logger: Logger
    let listener: LinkListener
    private weak var loop: (any DescriptorWatcher)?
    private weak var delegate: (any CarrierDelegate)?
    /// Peers that connected but have not said hello yet, by descriptor, with their deadline.
    private var pending: [Int32: (socket: LinkSocket, deadline: UInt64)] = [:]
    private var guest: AttachedAgent?
    /// How long a peer has to say hello, and how many may wait at once.
    static let helloTimeoutNs: UInt64 = 2_000_000_000
    static let pendingLimit = 16

    /// What one attached agent holds.
    final class AttachedAgent {
        let socket: LinkSocket
        let pid: Int32
        let vpBlockFD: Int32
        let vpBlocks: UnsafeMutableRawPointer
        let doorbells: [EventFD]
        let completions: [EventFD]
        let interrupts: [EventFD]
        var channelDoorbells: [UInt32: EventFD] = [:]
        var lines: [EventFD] = []
        /// Rung when the agent stopped reading its socket; the loop then drops it.
        let dropRequest: EventFD
        var dropping = false

        init(socket: LinkSocket, pid: Int32, vps: Int) throws(LinkError) {
            self.socket = socket
            self.pid = pid
            let fd = viridian_memfd_create_sealed("viridian-vp-blocks", Int64(VPBlock.memorySize))
            guard fd >= 0, let blocks = viridian_mmap_shared(VPBlock.memorySize, fd, 0) else {
                let e = errno
                if fd >= 0 { close(fd) }
                throw .system(call: "vp block memory", errno: e)
            }
            vpBlockFD = fd
            vpBlocks = blocks
            doorbells = try (0..<vps).map { _ throws(LinkError) in try EventFD() }
            completions = try (0..<vps).map { _ throws(LinkError) in try EventFD() }
            interrupts = try (0..<vps).map { _ throws(LinkError) in try EventFD() }
            dropRequest = try EventFD()
        }

        deinit {
            munmap(vpBlocks, VPBlock.memorySize)
            close(vpBlockFD)
        }
    }

    /// Listens on `socketPath` for the agent of the partition `welcome` describes.
    /// `listener`: a socket already bound to `socketPath` (a partition worker's), else one is bound here.
    public init(socketPath: String, welcome: LinkFrame.Welcome, listener: LinkListener? = nil, logger: Logger) throws(LinkError) {
        guard welcome.vpCount >= 1, Int(welcome.vpCount) <= VPBlock.maximumVPs else {
            throw .malformed("a partition link serves 1 to \(VPBlock.maximumVPs) VPs, not \(welcome.vpCount)")
        }
        self.socketPath = socketPath
        self.welcome = welcome
        self.logger = logger
        if let listener { self.listener = listener } else { self.listener = try LinkListener(path: socketPath) }
    }

    /// The attached agent's pid, if any.
    public var agentPID: Int32? { guest?.pid }

    public func start(loop: any DescriptorWatcher, delegate: any CarrierDelegate) throws {
        self.loop = loop
        self.delegate = delegate
        loop.watch(listener.fd, wanted: true) { [unowned self] in acceptPeer() }
    }

    public var nextDeadline: UInt64? { pending.values.map(\.deadline).min() }

    /// Drops peers that did not say hello in time.
    public func expire(now: UInt64) {
        for (fd, peer) in pending where peer.deadline <= now {
            loop?.watch(fd, wanted: false) {}
            pending[fd] = nil
            logger.warning("\(welcome.name): dropped peer pid \(LinkListener.peerPID(peer.socket)): no hello within 2 s")
            try? peer.socket.send(.refuse(code: LinkRefusal.badHello, reason: "no hello within 2 s"), wait: false)
        }
    }

    public func vpBlock(_ vp: Int) -> UnsafeMutableRawPointer? {
        guard let guest, vp >= 0, vp < guest.doorbells.count else { return nil }
        // VP n's block is the n-th 64 bytes of the 4 KiB block page (n < vpCount ≤ 64).
        return guest.vpBlocks + vp * VPBlock.size
    }

    public func complete(vp: Int) { guest?.completions[vp].ring() }

    public func raiseInterrupt(vp: Int) { guest?.interrupts[vp].ring() }

    public func addInterruptLine(irq: UInt32) throws -> (() -> Void)? {
        guard let guest else { return nil }
        let doorbell = try EventFD()
        guest.lines.append(doorbell)
        guard tell(guest, .interruptLine(irq: irq), fds: [doorbell.fd]) else { throw LinkError.system(call: "sendmsg", errno: EAGAIN) }
        return { doorbell.ring() }
    }

    /// Gives the agent a doorbell for a new event connection, or takes it back.
    public func eventPortChanged(_ connection: UInt32, added: Bool) {
        guard let guest, let loop else { return }
        if added {
            guard let doorbell = try? EventFD() else { return }
            guest.channelDoorbells[connection] = doorbell
            loop.watch(doorbell.fd, wanted: true) { [unowned self] in
                var count: UInt64 = 0
                _ = read(doorbell.fd, &count, 8)
                delegate?.guestSignalled(connectionID: connection)
            }
            tell(guest, .eventFD(connectionID: connection), fds: [doorbell.fd])
        } else if let doorbell = guest.channelDoorbells.removeValue(forKey: connection) {
            loop.watch(doorbell.fd, wanted: false) {}
            tell(guest, .revokeEventFD(connectionID: connection))
        }
    }

    public func guestDetached() {
        guard let guest else { return }
        loop?.watch(guest.socket.fd, wanted: false) {}
        loop?.watch(guest.dropRequest.fd, wanted: false) {}
        for doorbell in guest.doorbells { loop?.watch(doorbell.fd, wanted: false) {} }
        for doorbell in guest.channelDoorbells.values { loop?.watch(doorbell.fd, wanted: false) {} }
        guest.socket.close()
        self.guest = nil
    }

    /// Sends to the attached agent without ever blocking the partition thread. An agent whose
    /// socket is full (it does not read) is dropped on the loop's next pass, not waited for.
    @discardableResult
    private func tell(_ guest: AttachedAgent, _ frame: LinkFrame, fds: [Int32] = []) -> Bool {
        do {
            try guest.socket.send(frame, fds: fds, wait: false)
            return true
        } catch {
            if !guest.dropping {
                guest.dropping = true
                logger.warning("\(welcome.name): cannot send to agent pid \(guest.pid) (\(error)); dropping it")
                guest.dropRequest.ring()
            }
            return false
        }
    }

    public func stop() {
        if let guest { tell(guest, .shutdown(reason: 0)) }
        loop?.watch(listener.fd, wanted: false) {}
    }

    // MARK: Handshake

    /// Accepts a connection and waits (without blocking the loop) for its hello.
    private func acceptPeer() {
        let socket: LinkSocket
        do { socket = try listener.accept() } catch {
            logger.warning("\(welcome.name): accept failed: \(error)")
            return
        }
        // The socket is 0600; a peer of another user (a socket passed on, a changed mode) is refused too.
        guard viridian_peer_trusted(socket.fd) != 0 else {
            logger.warning("\(welcome.name): refused pid \(LinkListener.peerPID(socket)): not root and not this host's user")
            return
        }
        guard pending.count < Self.pendingLimit else {
            try? socket.send(.refuse(code: LinkRefusal.busy, reason: "too many connections waiting"), wait: false)
            return
        }
        pending[socket.fd] = (socket, viridian_now_ns() + Self.helloTimeoutNs)
        let fd = socket.fd
        loop?.watch(fd, wanted: true) { [unowned self] in greet(fd) }
    }

    /// Reads a waiting peer's hello; attaches it, or refuses it (bad hello, partition busy).
    private func greet(_ fd: Int32) {
        guard let peer = pending.removeValue(forKey: fd) else { return }
        loop?.watch(fd, wanted: false) {}
        let socket = peer.socket
        let pid = LinkListener.peerPID(socket)
        do {
            let (frame, fds) = try socket.receive()
            fds.forEach { close($0) }
            guard case .hello = frame else { throw LinkError.malformed("first frame is not hello") }
        } catch {
            logger.warning("\(welcome.name): dropped peer pid \(pid): \(error)")
            try? socket.send(.refuse(code: LinkRefusal.badHello, reason: "bad handshake: \(error)"), wait: false)
            return
        }
        if guest != nil {
            try? socket.send(.refuse(code: LinkRefusal.busy, reason: "partition \(welcome.name) already has an agent"), wait: false)
            return
        }
        do {
            let memory = try GuestPhysicalMemory(size: Int(welcome.memoryBytes), name: "viridian-\(welcome.name)")
            let agent = try AttachedAgent(socket: socket, pid: pid, vps: Int(welcome.vpCount))
            let descriptors = [memory.fd, agent.vpBlockFD]
                + (0..<agent.doorbells.count).flatMap { [agent.doorbells[$0].fd, agent.completions[$0].fd, agent.interrupts[$0].fd] }
            try socket.send(.welcome(welcome), fds: descriptors, wait: false)
            guest = agent
            loop?.watch(socket.fd, wanted: true) { [unowned self] in agentSocketReadable() }
            loop?.watch(agent.dropRequest.fd, wanted: true) { [unowned self] in
                agent.dropRequest.wait()
                delegate?.guestLeft(reason: "agent pid \(pid) does not read its link socket; dropped")
            }
            for (vp, doorbell) in agent.doorbells.enumerated() {
                loop?.watch(doorbell.fd, wanted: true) { [unowned self] in
                    var count: UInt64 = 0
                    _ = read(doorbell.fd, &count, 8)
                    delegate?.guestExited(vp: vp)
                }
            }
            try delegate?.guestArrived(memory: memory, description: "agent pid \(pid)")
        } catch {
            logger.error("\(welcome.name): cannot attach agent pid \(pid): \(error)")
            try? socket.send(.refuse(code: LinkRefusal.internalError, reason: "\(error)"), wait: false)
            guestDetached()
        }
    }

    private func agentSocketReadable() {
        guard let guest else { return }
        do {
            let (frame, fds) = try guest.socket.receive()
            fds.forEach { close($0) }
            logger.debug("\(welcome.name): ignored \(frame) from the agent")
        } catch {
            delegate?.guestLeft(reason: "agent pid \(guest.pid) left (\(error))")
        }
    }
}
