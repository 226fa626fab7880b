// The QEMU carrier's host half: the guest's RAM file, the ivshmem server, and the KernelGlue join/leave handshake.

import CSystem
import Foundation
import Glibc
import GuestMemory
import Hypervisor
import Logging
import PartitionLink
import VMBusWire

/// Serves a QEMU guest. The guest's RAM is a file QEMU maps with `memory-backend-file,share=on`;
/// the host maps the same file as the partition's guest-physical memory (on QEMU's pc machine RAM
/// below 4 GiB starts at guest-physical 0, so a guest of at most 2 GiB is one range). The host is
/// the ivshmem server of the guest's `ivshmem-doorbell` device: it hands QEMU the shared region
/// (the KernelGlue header and the VP register blocks) and two sets of eventfds, the host's
/// doorbell vectors (control, one exit per VP, fast-signal slots) and the guest's MSI-X vectors
/// (control, one SINT per VP, one exit completion per VP). The agent inside the guest joins
/// through the KernelGlue module (`guest_state` READY with a new generation) and leaves the same
/// way; QEMU disconnecting is the guest going away. The guest's memory is its own and is never
/// cleared by the host.
public final class QEMUHostCarrier: HostCarrier {
    /// VPs the vector plan has room for: 1 + 2 × VPs guest vectors within 32.
    public static let maximumVPs = 15
    /// The shared region: header page plus VP blocks, a power of two as ivshmem requires.
    public static let sharedSize = 16 * 1024
    /// The guest's ivshmem peer id; the host is peer 0.
    static let guestPeer: Int64 = 1
    static let hostPeer: Int64 = 0

    public let kind = "qemu"
    public var address: String { socketPath }
    let socketPath: String
    let ramFile: String
    let vps: Int
    let logger: Logger
    let name: String
    /// The guest's RAM, mapped from `ramFile` for as long as the partition lives.
    public let memory: GuestPhysicalMemory
    let listenFD: Int32
    private let ownsSocket: Bool
    let sharedFD: Int32
    let shared: UnsafeMutableRawPointer
    let header: GlueSharedHeader
    private weak var loop: (any DescriptorWatcher)?
    private weak var delegate: (any CarrierDelegate)?
    private var qemu: QEMUConnection?
    /// The agent generation the partition serves, once joined.
    private var joined: UInt32?
    /// Connection ids in the fast-signal slots the guest may ring.
    private var slots: [UInt32]
    private var earlyDoorbells = 0

    /// One connected QEMU: its socket and the two vector sets.
    final class QEMUConnection {
        let fd: Int32
        let hostVectors: [EventFD]
        let guestVectors: [EventFD]
        init(fd: Int32) throws(LinkError) {
            self.fd = fd
            hostVectors = try (0..<GlueSharedHeader.maximumVectors).map { _ throws(LinkError) in try EventFD() }
            guestVectors = try (0..<GlueSharedHeader.maximumVectors).map { _ throws(LinkError) in try EventFD() }
        }
        deinit { Glibc.close(fd) }
    }

    /// Maps (creating if missing) `ramFile` of `memoryBytes` and listens on `socketPath` for QEMU.
    /// `listenFD`: a socket already bound to `socketPath` (a partition worker's); it is closed but
    /// its file left when the carrier goes. Without it the carrier binds `socketPath` itself.
    public init(socketPath: String, ramFile: String, partitionID: UInt32, name: String, vps: Int, memoryBytes: UInt64,
                listenFD adopted: Int32? = nil, logger: Logger) throws {
        guard (1...Self.maximumVPs).contains(vps) else { throw LinkError.malformed("a QEMU guest has 1…\(Self.maximumVPs) VPs, not \(vps)") }
        self.socketPath = socketPath
        self.ramFile = ramFile
        self.vps = vps
        self.logger = logger
        self.name = name
        slots = [UInt32](repeating: 0, count: GlueSharedHeader.Vector.signalSlots(vps: vps))
        let dir = (ramFile as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let fd = viridian_open(ramFile, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0 else { throw LinkError.system(call: "open(\(ramFile))", errno: errno) }
        guard ftruncate(fd, off_t(memoryBytes)) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw LinkError.system(call: "ftruncate(\(ramFile))", errno: e)
        }
        memory = try GuestPhysicalMemory(adopting: fd, size: Int(memoryBytes))
        let sfd = viridian_memfd_create_sealed("viridian-glue-shared", Int64(Self.sharedSize))
        guard sfd >= 0, let region = viridian_mmap_shared(Self.sharedSize, sfd, 0) else {
            let e = errno
            if sfd >= 0 { Glibc.close(sfd) }
            throw LinkError.system(call: "ivshmem shared region", errno: e)
        }
        sharedFD = sfd
        shared = region
        header = GlueSharedHeader(region)
        header.abiVersion = GlueSharedHeader.abiVersion
        header.vpCount = UInt32(vps)
        header.hostPeer = UInt32(Self.hostPeer)
        header.vectors = UInt32(GlueSharedHeader.maximumVectors)
        header.memoryBytes = memoryBytes
        header.partitionID = UInt64(partitionID)
        header.name = name
        header.hostState = UInt32(VGLUE_HOST_SERVING)
        header.magic = GlueSharedHeader.magic
        ownsSocket = adopted == nil
        listenFD = try adopted ?? UnixSocket.listen(path: socketPath, type: Int32(SOCK_STREAM.rawValue), backlog: 4)
    }

    deinit {
        Glibc.close(listenFD)
        if ownsSocket { unlink(socketPath) }
        munmap(shared, Self.sharedSize)
        Glibc.close(sharedFD)
    }

    /// The `-device ivshmem-doorbell,vectors=N` QEMU needs.
    public static var vectors: Int { GlueSharedHeader.maximumVectors }

    public func start(loop: any DescriptorWatcher, delegate: any CarrierDelegate) throws {
        self.loop = loop
        self.delegate = delegate
        loop.watch(listenFD, wanted: true) { [unowned self] in acceptQEMU() }
    }

    public func vpBlock(_ vp: Int) -> UnsafeMutableRawPointer? {
        guard vp >= 0, vp < vps else { return nil }
        // VP n's block: 64 bytes at 0x1000 + 64 n, inside the 16 KiB region for n < 15.
        return shared + GlueSharedHeader.vpBlocksOffset + vp * VPBlock.size
    }

    public func complete(vp: Int) { qemu?.guestVectors[GlueSharedHeader.Vector.completion(vp: vp, vps: vps)].ring() }

    public func raiseInterrupt(vp: Int) { qemu?.guestVectors[GlueSharedHeader.Vector.interrupt(vp: vp)].ring() }

    /// A QEMU guest's legacy devices are QEMU's own; the carrier has no lines.
    public func addInterruptLine(irq: UInt32) throws -> (() -> Void)? { nil }

    /// Event connections get a fast-signal slot while slots last; the rest use the HvSignalEvent exit.
    public func eventPortChanged(_ connection: UInt32, added: Bool) {
        if added {
            guard !slots.contains(connection), let slot = slots.firstIndex(of: 0) else { return }
            slots[slot] = connection
            header.setSignalSlot(slot, connection)
        } else if let slot = slots.firstIndex(of: connection) {
            slots[slot] = 0
            header.setSignalSlot(slot, 0)
        }
    }

    public func guestDetached() {
        joined = nil
        for i in slots.indices {
            slots[i] = 0
            header.setSignalSlot(i, 0)
        }
    }

    public func stop() {
        header.hostState = UInt32(VGLUE_HOST_ABSENT)
        qemu?.guestVectors[GlueSharedHeader.Vector.control].ring()
        loop?.watch(listenFD, wanted: false) {}
    }

    // MARK: QEMU's connection (the ivshmem server protocol)

    private func acceptQEMU() {
        let fd = viridian_accept(listenFD)
        guard fd >= 0 else { return }
        let pid = viridian_peer_pid(fd)
        guard viridian_peer_trusted(fd) != 0 else {
            logger.warning("\(name): refused QEMU pid \(pid): not root and not this host's user")
            Glibc.close(fd)
            return
        }
        if qemu != nil {
            logger.warning("\(name): refused a second QEMU (pid \(pid)) on \(socketPath): one QEMU serves a partition at a time")
            Glibc.close(fd)
            return
        }
        do {
            let connection = try QEMUConnection(fd: fd)
            resetGuestFields()
            // Protocol version, the guest's own id, the shared memory; then the host's vectors
            // (as another peer's) and the guest's own interrupt vectors, one message each.
            try send(fd, 0)
            try send(fd, Self.guestPeer)
            try send(fd, -1, descriptor: sharedFD)
            for v in connection.hostVectors { try send(fd, Self.hostPeer, descriptor: v.fd) }
            for v in connection.guestVectors { try send(fd, Self.guestPeer, descriptor: v.fd) }
            qemu = connection
            loop?.watch(fd, wanted: true) { [unowned self] in qemuReadable() }
            for (index, vector) in connection.hostVectors.enumerated() {
                loop?.watch(vector.fd, wanted: true) { [unowned self] in
                    var count: UInt64 = 0
                    _ = read(vector.fd, &count, 8)
                    doorbell(index)
                }
            }
            logger.notice("\(name): QEMU pid \(pid) connected (\(memory.size >> 20) MiB RAM in \(ramFile), \(vps) VPs)")
        } catch {
            logger.error("\(name): ivshmem handshake with QEMU pid \(pid) failed: \(error)")
        }
    }

    private func send(_ fd: Int32, _ value: Int64, descriptor: Int32? = nil) throws(LinkError) {
        var v = value.littleEndian
        var fds = descriptor.map { [$0] } ?? []
        // Never blocks the partition thread on a QEMU that does not read (the handshake fails instead).
        let n = withUnsafeBytes(of: &v) { viridian_send_with_fds_nowait(fd, $0.baseAddress, 8, &fds, Int32(fds.count)) }
        guard n == 8 else { throw .system(call: "sendmsg(ivshmem)", errno: errno) }
    }

    /// QEMU sends nothing after the handshake: readable means it went away.
    private func qemuReadable() {
        guard let qemu else { return }
        var scratch = [UInt8](repeating: 0, count: 64)
        let n = read(qemu.fd, &scratch, scratch.count)
        if n > 0 { return }
        if joined != nil { delegate?.guestLeft(reason: "QEMU disconnected") }
        loop?.watch(qemu.fd, wanted: false) {}
        for v in qemu.hostVectors { loop?.watch(v.fd, wanted: false) {} }
        self.qemu = nil
        resetGuestFields()
        logger.notice("\(name): QEMU left; waiting for a new one on \(socketPath)")
    }

    private func resetGuestFields() {
        header.guestState = UInt32(VGLUE_GUEST_ABSENT)
        header.guestGeneration = 0
        header.hostJoined = 0
        header.hostReleased = 0
        guestDetached()
        earlyDoorbells = 0
    }

    // MARK: Doorbells from the guest

    private func doorbell(_ vector: Int) {
        if vector == GlueSharedHeader.Vector.control { return control() }
        if vector <= vps {
            let vp = vector - 1
            guard joined != nil else { return earlyExit(vp: vp) }
            delegate?.guestExited(vp: vp)
            return
        }
        let slot = vector - 1 - vps
        guard joined != nil, slot < slots.count, slots[slot] != 0 else { return }
        delegate?.guestSignalled(connectionID: slots[slot])
    }

    /// The agent joined or left (the module changed `guest_state`).
    private func control() {
        let state = header.guestState, generation = header.guestGeneration
        switch Int32(bitPattern: state) {
        case VGLUE_GUEST_READY where generation != joined:
            if let old = joined { delegate?.guestLeft(reason: "agent generation \(old) replaced by generation \(generation)") }
            do {
                try delegate?.guestArrived(memory: memory, description: "QEMU guest agent, generation \(generation)")
                joined = generation
                header.hostJoined = generation
            } catch {
                logger.error("\(name): cannot attach the guest's agent: \(error)")
            }
            qemu?.guestVectors[GlueSharedHeader.Vector.control].ring()
        case VGLUE_GUEST_LEAVING:
            if joined == generation { delegate?.guestLeft(reason: "the guest's agent left (generation \(generation))") }
            header.hostReleased = generation
            qemu?.guestVectors[GlueSharedHeader.Vector.control].ring()
        default:
            break
        }
    }

    /// A VP exit before any agent joined: a guest bug or a hostile guest. Log (a few times), fail the
    /// call so a waiting VP does not hang, touch nothing else.
    private func earlyExit(vp: Int) {
        earlyDoorbells += 1
        if earlyDoorbells <= 3 || earlyDoorbells.nonzeroBitCount == 1 {
            logger.warning("\(name): the guest rang VP \(vp)'s exit doorbell before the KernelGlue ready handshake; ignored (\(earlyDoorbells) so far)")
        }
        if let block = vpBlock(vp) {
            block.storeBytes(of: HypercallResult(status: .invalidHypercallInput).rawValue, toByteOffset: VPBlock.result, as: UInt64.self)
            VPBlock.markCompleted(block)
        }
        complete(vp: vp)
    }
}
