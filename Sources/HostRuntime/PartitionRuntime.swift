// One guest's attachment to a partition, whatever its carrier: the hypervisor objects and the exit dispatch.

import CSystem
import EmulatedDevices
import Glibc
import GuestMemory
import Hypervisor
import Logging
import PartitionLink
import VMBusWire

/// Everything that lives exactly as long as one guest is attached: reset SynICs, a fresh VMBus
/// connection, counters. The memory is the carrier's (fresh per agent under PartitionLink, the
/// guest's own RAM under QEMU).
final class PartitionRuntime: InterruptSink {
    unowned let carrier: any HostCarrier
    let guest: String
    let memory: GuestPhysicalMemory
    private(set) var partition: Partition!
    private(set) var server: VMBusServer!
    var interruptCounts: [UInt64]
    /// The partition's legacy I/O ports (emulated devices); nil: every port floats.
    var portIO: PortIOBus?
    /// Port I/O exits served (all VPs).
    private(set) var portExits: UInt64 = 0
    /// Runs after every port write (the NE2000 may have room for frames again).
    var afterPortWrite: (() -> Void)?
    let attachedAt = DispatchClock.now()

    init(memory: GuestPhysicalMemory, carrier: any HostCarrier, guest: String, id: UInt32, configuration: PartitionConfiguration,
         serverConfiguration: VMBusServerConfiguration, logger: Logger) {
        self.memory = memory
        self.carrier = carrier
        self.guest = guest
        let n = configuration.vps
        interruptCounts = [UInt64](repeating: 0, count: n)
        partition = Partition(id: id, name: configuration.name, memory: memory, vpCount: n, interrupts: self)
        server = VMBusServer(partition: partition, configuration: serverConfiguration, logger: logger)
        // The partition may create children of its own; their memory is pages it gives up.
        let children = ChildPartitions(ownerID: UInt64(id), ownerPages: UInt64(memory.pageCount), ownerVPs: n)
        let name = configuration.name
        children.onPagesGiven = { [unowned memory] pfns in memory.discard(pfns: pfns) }
        children.onChildStopped = { child in logger.notice("\(name): child partition \(ChildPartitions.format(child)) stopped") }
        partition.children = children
    }

    /// The partition's children as status shows them.
    var childStatus: [ChildPartitionStatus]? {
        guard let children = partition.children, !children.children.isEmpty else { return nil }
        return children.children.values.sorted { $0.id < $1.id }.map {
            ChildPartitionStatus(id: ChildPartitions.format($0.id), parent: ChildPartitions.format(children.ownerID), state: $0.state.rawValue,
                                 vps: $0.vps.count, memoryMiB: Int($0.memoryBytes >> 20))
        }
    }

    /// Tears down the partition's children (it left, died or was reset): their memory returns.
    func removeChildren() {
        partition.children?.removeAll()
    }

    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) {
        guard Int(vp) < interruptCounts.count else { return }
        interruptCounts[Int(vp)] &+= 1
        carrier.raiseInterrupt(vp: Int(vp))
    }

    /// Serves one trapped instruction of `vp`: reads the register block once, runs the call,
    /// writes the result, completes.
    func serviceVP(_ vp: Int) {
        guard vp < interruptCounts.count, let block = carrier.vpBlock(vp) else { return }
        let served = VPExit.serve(block, vp: vp, partition: partition, ports: portIO)
        if served == .portIn || served == .portOut { portExits &+= 1 }
        VPBlock.markCompleted(block)
        carrier.complete(vp: vp)
        if served == .portOut { afterPortWrite?() }
    }
}

/// Monotonic seconds, for uptime in status output.
enum DispatchClock {
    static func now() -> Double { Double(viridian_now_ns()) / 1e9 }
}
