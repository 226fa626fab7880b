// The agent's carrier inside a QEMU guest: the KernelGlue device's doorbells, MSI-X eventfds and pinned pages.

import Atomics
import CSystem
import Glibc
import GuestMemory
import Logging
import PartitionLink
import VMBusClient
import VMBusWire

/// Why the agent could not join through KernelGlue, in the user's terms.
public enum GlueError: Error, CustomStringConvertible, Equatable {
    /// No KernelGlue device, and the module is not loaded.
    case moduleNotLoaded
    /// The module is loaded but drives no ivshmem-doorbell device.
    case noDevice
    /// Another agent holds the device.
    case busy(String)
    case system(call: String, errno: Int32)
    /// The shared region or the device says something that cannot be right.
    case malformed(String)
    /// The host did not acknowledge the join.
    case noAnswer(String)

    public var description: String {
        switch self {
        case .moduleNotLoaded:
            "KernelGlue is not loaded: no /dev/viridian-glue* device (load it with 'modprobe viridian_glue'; the viridian-glue-dkms package builds it)"
        case .noDevice: "the viridian_glue module is loaded but no ivshmem-doorbell device (PCI 1af4:1110) is bound to it"
        case .busy(let node): "\(node) is in use by another agent"
        case .system(let call, let e): "\(call) failed: \(String(cString: strerror(e)))"
        case .malformed(let why): "KernelGlue: \(why)"
        case .noAnswer(let why): why
        }
    }
}

/// A partition joined through the KernelGlue device of a QEMU guest. VP exits go through the
/// register blocks in the shared region and the host's exit vector (one ioctl rings it); the
/// completion and the SINT interrupt of each VP are MSI-X vectors the module forwards to
/// eventfds. Rings, SynIC pages and device buffers are pinned guest pages from the module, whose
/// guest-physical addresses the host reaches through the guest's RAM. A fast HvSignalEvent on a
/// connection the host put in a signal slot rings that slot's vector.
public final class GlueLink: GuestPlatform, @unchecked Sendable {
    public let node: String
    public let pool: GuestBufferPool
    public let vpCount: Int
    public let partitionName: String
    public let partitionID: UInt32
    public var cpuMask: UInt64 { 0 }
    let device: GlueDevice
    let header: GlueSharedHeader
    let hostPeer: UInt32
    let control: EventFD
    let interrupts: [EventFD]
    let exits: VPExitPort
    let generation: UInt32
    private let closed: ManagedAtomic<Bool>
    private var monitor: OSThread?
    public let fastSignals = ManagedAtomic<UInt64>(0)

    /// How long the host has to acknowledge the join.
    static let joinTimeoutMs: Int32 = 5000

    /// Opens `node` (or the first KernelGlue device udev knows), maps the shared region, takes a
    /// pool of `poolBytes` pinned pages, registers the MSI-X eventfds and joins.
    public static func attach(node given: String?, poolBytes: Int, logger: Logger) throws(GlueError) -> GlueLink {
        let node: String
        if let given {
            node = given
        } else if let found = GlueDiscovery.devices().first {
            node = found.node
        } else if !GlueDiscovery.moduleLoaded {
            throw .moduleNotLoaded
        } else if let found = GlueDiscovery.waitForDevice(timeoutMs: 2000) {
            node = found.node
        } else {
            throw .noDevice
        }
        let device = try GlueDevice(node: node)
        return try GlueLink(node: node, device: device, poolBytes: poolBytes, logger: logger)
    }

    private init(node: String, device: GlueDevice, poolBytes: Int, logger: Logger) throws(GlueError) {
        self.node = node
        self.device = device
        let info = try device.info()
        guard info.abi_version == VGLUE_ABI_VERSION else { throw .malformed("module ABI \(info.abi_version), this agent speaks \(VGLUE_ABI_VERSION)") }
        guard info.shared_size >= UInt64(GlueSharedHeader.vpBlocksOffset + VPBlock.memorySize), info.shared_size <= 1 << 30 else {
            throw .malformed("shared region of \(info.shared_size) bytes")
        }
        let region = try device.mapShared(bytes: Int(info.shared_size))
        header = GlueSharedHeader(region)
        guard header.magic == GlueSharedHeader.magic, header.abiVersion == GlueSharedHeader.abiVersion else {
            throw .malformed("the shared region has no Viridian host header (is this partition served by viridian-host with carrier = \"qemu\"?)")
        }
        guard header.hostState == UInt32(VGLUE_HOST_SERVING) else { throw .noAnswer("viridian-host is not serving this partition") }
        let vps = Int(header.vpCount)
        guard (1...15).contains(vps), 1 + 2 * vps <= Int(info.vectors) else {
            throw .malformed("\(vps) VPs need \(1 + 2 * vps) MSI-X vectors, the device has \(info.vectors)")
        }
        vpCount = vps
        hostPeer = header.hostPeer
        partitionName = header.name
        partitionID = UInt32(truncatingIfNeeded: header.partitionID)
        guard hostPeer <= 0xFFFF else { throw .malformed("host peer id \(hostPeer)") }
        // The pool: pinned pages, contiguous here, each with its guest page number.
        let pages = max(poolBytes / 4096, 64)
        let (base, pfns) = try device.allocate(pages: pages)
        let limit = header.memoryBytes >> 12
        if let bad = pfns.first(where: { $0 >= limit }) {
            throw .malformed("page 0x\(String(bad, radix: 16)) lies beyond the \(header.memoryBytes >> 20) MiB the host maps")
        }
        pool = GuestBufferPool(base: base, pfns: pfns, owner: device)
        // Vectors: control, then a SINT interrupt and an exit completion per VP.
        do {
            control = try EventFD()
            interrupts = try (0..<vps).map { _ throws(LinkError) in try EventFD() }
            let completions = try (0..<vps).map { _ throws(LinkError) in try EventFD() }
            try device.register(control, vector: GlueSharedHeader.Vector.control)
            for vp in 0..<vps {
                try device.register(interrupts[vp], vector: GlueSharedHeader.Vector.interrupt(vp: vp))
                try device.register(completions[vp], vector: GlueSharedHeader.Vector.completion(vp: vp, vps: vps))
            }
            let closed = ManagedAtomic<Bool>(false)
            self.closed = closed
            let peer = hostPeer
            exits = VPExitPort(blocks: region + GlueSharedHeader.vpBlocksOffset, vpCount: vps, completions: completions, closed: closed) {
                device.ring(peer: peer, vector: GlueSharedHeader.Vector.exit(vp: $0))
            }
        } catch let e as GlueError {
            throw e
        } catch {
            throw .system(call: "eventfd", errno: errno)
        }
        // Join: the module bumps the generation and rings the host; the host answers on control.
        try device.join()
        generation = header.guestGeneration
        let deadline = viridian_now_ns() + UInt64(Self.joinTimeoutMs) * 1_000_000
        while header.hostJoined != generation {
            let now = viridian_now_ns()
            guard now < deadline else { throw .noAnswer("viridian-host did not acknowledge the join within \(Self.joinTimeoutMs) ms") }
            if control.poll(timeoutMs: Int((deadline - now) / 1_000_000 + 1)) { control.wait() }
        }
        logger.info("KernelGlue: \(node) joined partition \(partitionName) (generation \(generation), \(vps) VPs, \(pages) pool pages)")
    }

    public var isClosed: Bool { closed.load(ordering: .acquiring) }

    public func startMonitor(onClose: @escaping @Sendable (LinkError) -> Void) {
        monitor = OSThread { [self] in
            var reason = LinkError.closed
            while true {
                control.wait()
                if closed.load(ordering: .acquiring) { break }
                if header.hostState != UInt32(VGLUE_HOST_SERVING) {
                    reason = .refused(LinkRefusal.shuttingDown, "host is shutting down")
                    break
                }
                if header.hostJoined != generation { break }
            }
            closed.store(true, ordering: .releasing)
            exits.wakeAll()
            for i in interrupts { i.ring() }
            onClose(reason)
        }
    }

    public func waitForInterrupt(vp: Int) -> Bool {
        interrupts[vp].wait()
        return !isClosed
    }

    public func kick(vp: Int) { interrupts[vp].ring() }

    /// Stops the monitor. The module tells the host the agent left when the device closes, which
    /// happens once the last mapping of the pool is gone.
    public func detach() {
        closed.store(true, ordering: .releasing)
        control.ring()
        monitor?.join()
        monitor = nil
    }

    public func portIn(vp: UInt32, port: UInt16, size: Int) -> UInt32? { exits.portIn(vp: vp, port: port, size: size) }

    @discardableResult
    public func portOut(vp: UInt32, port: UInt16, size: Int, value: UInt32) -> Bool {
        exits.portOut(vp: vp, port: port, size: size, value: value)
    }

    /// A QEMU guest's legacy lines are QEMU's; KernelGlue carries none.
    public func interruptLine(_ irq: UInt32) -> EventFD? { nil }

    public func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        let c = HypercallControl(rawValue: control)
        if c.code == HypercallCode.signalEvent.rawValue, c.isFast, input >> 32 == 0, input != 0 {
            let connection = UInt32(truncatingIfNeeded: input)
            for slot in 0..<GlueSharedHeader.Vector.signalSlots(vps: vpCount)
            where header.signalSlot(slot) == connection {
                fastSignals.wrappingIncrement(ordering: .relaxed)
                device.ring(peer: hostPeer, vector: GlueSharedHeader.Vector.signal(slot: slot, vps: vpCount))
                return HypercallResult(status: .success).rawValue
            }
        }
        return exits.hypercall(vp: vp, control: control, input: input, output: output)
    }

    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { exits.writeMSR(vp: vp, msr, value) }

    public func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { exits.readMSR(vp: vp, msr) }
}
