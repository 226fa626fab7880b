// One agent's attachment to a partition: fresh guest memory, VP blocks, eventfds, the hypervisor objects.

import CSystem
import EmulatedDevices
import Glibc
import GuestMemory
import Hypervisor
import Logging
import PartitionLink
import VMBusWire

/// Everything that lives exactly as long as one agent is attached. A new agent gets a new
/// runtime: zeroed memory, reset SynICs, a fresh VMBus connection.
final class PartitionRuntime: InterruptSink {
    let socket: LinkSocket
    let agentPID: Int32
    let memory: GuestPhysicalMemory
    let vpBlockFD: Int32
    let vpBlocks: UnsafeMutableRawPointer
    let doorbells: [EventFD]
    let completions: [EventFD]
    let interrupts: [EventFD]
    private(set) var partition: Partition!
    private(set) var server: VMBusServer!
    /// Guest → host doorbells per event connection id.
    var channelDoorbells: [UInt32: EventFD] = [:]
    var interruptCounts: [UInt64]
    /// The partition's legacy I/O ports (emulated devices); nil: every port floats.
    var portIO: PortIOBus?
    /// Port I/O exits served (all VPs).
    private(set) var portExits: UInt64 = 0
    /// Eventfds of the legacy interrupt lines handed to the agent.
    var lineDoorbells: [EventFD] = []
    /// Runs after every port write (the NE2000 may have room for frames again).
    var afterPortWrite: (() -> Void)?
    let attachedAt = DispatchClock.now()

    init(socket: LinkSocket, agentPID: Int32, id: UInt32, configuration: PartitionConfiguration,
         serverConfiguration: VMBusServerConfiguration, logger: Logger) throws {
        self.socket = socket
        self.agentPID = agentPID
        memory = try GuestPhysicalMemory(size: configuration.memoryMiB << 20, name: "viridian-\(configuration.name)")
        let fd = viridian_memfd_create("viridian-vp-blocks")
        guard fd >= 0, ftruncate(fd, off_t(VPBlock.memorySize)) == 0, let blocks = viridian_mmap_shared(VPBlock.memorySize, fd, 0) else {
            let e = errno
            if fd >= 0 { close(fd) }
            throw LinkError.system(call: "vp block memory", errno: e)
        }
        vpBlockFD = fd
        vpBlocks = blocks
        let n = configuration.vps
        doorbells = try (0..<n).map { _ in try EventFD() }
        completions = try (0..<n).map { _ in try EventFD() }
        interrupts = try (0..<n).map { _ in try EventFD() }
        interruptCounts = [UInt64](repeating: 0, count: n)
        partition = Partition(id: id, name: configuration.name, memory: memory, vpCount: n, interrupts: self)
        server = VMBusServer(partition: partition, configuration: serverConfiguration, logger: logger)
    }

    deinit {
        munmap(vpBlocks, VPBlock.memorySize)
        close(vpBlockFD)
    }

    /// Descriptors that go with the welcome frame, in its order.
    var welcomeDescriptors: [Int32] {
        [memory.fd, vpBlockFD] + (0..<doorbells.count).flatMap { [doorbells[$0].fd, completions[$0].fd, interrupts[$0].fd] }
    }

    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) {
        interruptCounts[Int(vp)] &+= 1
        interrupts[Int(vp)].ring()
    }

    /// Serves one trapped instruction of `vp`: reads the register block once, runs the call,
    /// writes the result, completes.
    func serviceVP(_ vp: Int) {
        var count: UInt64 = 0
        _ = read(doorbells[vp].fd, &count, 8)
        // VP n's block is the n-th 64 bytes of the 4 KiB block page (n < vps ≤ 16).
        let block = vpBlocks + vp * VPBlock.size
        let kind = block.load(fromByteOffset: VPBlock.kind, as: UInt32.self)
        switch VPBlock.Kind(rawValue: kind) {
        case .hypercall:
            let result = partition.hypercall(
                vp: UInt32(vp), control: block.load(fromByteOffset: VPBlock.control, as: UInt64.self),
                input: block.load(fromByteOffset: VPBlock.input, as: UInt64.self),
                output: block.load(fromByteOffset: VPBlock.output, as: UInt64.self))
            block.storeBytes(of: result.rawValue, toByteOffset: VPBlock.result, as: UInt64.self)
        case .writeMSR:
            let msr = block.load(fromByteOffset: VPBlock.msr, as: UInt32.self)
            let value = block.load(fromByteOffset: VPBlock.value, as: UInt64.self)
            let ok = (try? partition.writeMSR(vp: UInt32(vp), msr, value)) != nil
            block.storeBytes(of: ok ? VPBlock.msrOK : VPBlock.msrRefused, toByteOffset: VPBlock.result, as: UInt64.self)
        case .readMSR:
            let msr = block.load(fromByteOffset: VPBlock.msr, as: UInt32.self)
            if let value = try? partition.readMSR(vp: UInt32(vp), msr) {
                block.storeBytes(of: value, toByteOffset: VPBlock.value, as: UInt64.self)
                block.storeBytes(of: VPBlock.msrOK, toByteOffset: VPBlock.result, as: UInt64.self)
            } else {
                block.storeBytes(of: VPBlock.msrRefused, toByteOffset: VPBlock.result, as: UInt64.self)
            }
        case .portIn:
            portExits &+= 1
            let port = UInt16(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.msr, as: UInt32.self))
            let size = Int(block.load(fromByteOffset: VPBlock.control, as: UInt64.self))
            let value = portIO?.read(port: port, size: size) ?? UInt32.max
            block.storeBytes(of: UInt64(value), toByteOffset: VPBlock.result, as: UInt64.self)
        case .portOut:
            portExits &+= 1
            let port = UInt16(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.msr, as: UInt32.self))
            let size = Int(block.load(fromByteOffset: VPBlock.control, as: UInt64.self))
            portIO?.write(port: port, size: size, value: UInt32(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.value, as: UInt64.self)))
            block.storeBytes(of: UInt64(0), toByteOffset: VPBlock.result, as: UInt64.self)
            completions[vp].ring()
            afterPortWrite?()
            return
        case nil:
            block.storeBytes(of: HypercallResult(status: .invalidHypercallInput).rawValue, toByteOffset: VPBlock.result, as: UInt64.self)
        }
        completions[vp].ring()
    }
}

/// Monotonic seconds, for uptime in status output.
enum DispatchClock {
    static func now() -> Double { Double(viridian_now_ns()) / 1e9 }
}
