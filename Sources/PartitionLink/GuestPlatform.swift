// What the agent needs from whatever carries it to its partition: the guest's platform protocol.

import GuestMemory
import VMBusClient

/// The agent's view of its partition, whatever the carrier (PartitionLink to a host process, the
/// KernelGlue device in a QEMU guest): the hypervisor (hypercalls, synthetic MSRs), pages to share
/// with the host and their guest-physical addresses, VP interrupts, port I/O. Nothing above it
/// knows which carrier it runs on.
public protocol GuestPlatform: GuestHypervisor, Sendable {
    /// The partition, as the host names it.
    var partitionName: String { get }
    var partitionID: UInt32 { get }
    var vpCount: Int { get }
    /// Host CPUs the agent's threads should run on (0 = any).
    var cpuMask: UInt64 { get }
    /// Pages the bus and its devices share with the host.
    var pool: GuestBufferPool { get }
    var isClosed: Bool { get }
    /// Starts watching for the host going away; `onClose` runs once when it does.
    func startMonitor(onClose: @escaping @Sendable (LinkError) -> Void)
    /// Blocks until VP `vp` is interrupted. False once the carrier is closed.
    func waitForInterrupt(vp: Int) -> Bool
    /// Wakes VP `vp`'s interrupt wait (to stop VP threads).
    func kick(vp: Int)
    /// Leaves the partition (the host sees the guest go).
    func detach()
    /// IN from an I/O port: one trap. nil if the carrier is gone.
    func portIn(vp: UInt32, port: UInt16, size: Int) -> UInt32?
    /// OUT to an I/O port: one trap. False if the carrier is gone.
    @discardableResult
    func portOut(vp: UInt32, port: UInt16, size: Int, value: UInt32) -> Bool
    /// The eventfd of legacy interrupt line `irq`, if the carrier has it.
    func interruptLine(_ irq: UInt32) -> EventFD?
}
