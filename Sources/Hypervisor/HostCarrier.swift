// How a guest reaches a partition: the carrier protocol every transport (PartitionLink, QEMU) implements on the host.

import GuestMemory

/// The host half of one transport between a guest and its partition. A carrier accepts a guest
/// (a process, a QEMU), hands the partition its guest-physical memory, turns the guest's VM exits
/// and channel signals into calls on its `CarrierDelegate`, and carries interrupts and exit
/// completions back. It holds no protocol logic: the same hypervisor, VMBus server and devices
/// serve every carrier.
public protocol HostCarrier: AnyObject {
    /// What kind of carrier this is, for status and logs ("link", "qemu").
    var kind: String { get }
    /// Where guests reach it (a socket path), for status and logs.
    var address: String { get }
    /// Starts accepting guests: registers the carrier's descriptors with `loop`.
    func start(loop: any DescriptorWatcher, delegate: any CarrierDelegate) throws
    /// The 64-byte register block of `vp` for the exit being served (see `VPBlock`).
    func vpBlock(_ vp: Int) -> UnsafeMutableRawPointer?
    /// Completes the exit `vp` is waiting on.
    func complete(vp: Int)
    /// Raises the VMBus SINT interrupt on `vp`.
    func raiseInterrupt(vp: Int)
    /// A legacy interrupt line the guest should be able to wait on; returns how to raise it, or
    /// nil when this carrier has no legacy lines.
    func addInterruptLine(irq: UInt32) throws -> (() -> Void)?
    /// The partition gained or lost an event connection (a fast-signal doorbell may follow it).
    func eventPortChanged(_ connectionID: UInt32, added: Bool)
    /// The partition dropped its guest (after `guestLeft`, or on its own): forget per-guest state.
    func guestDetached()
    /// The host is stopping: tell the guest, stop accepting.
    func stop()
    /// The next moment the carrier wants `expire(now:)` called (a handshake deadline), if any.
    var nextDeadline: UInt64? { get }
    /// Called by the loop at or after `nextDeadline`.
    func expire(now: UInt64)
}

extension HostCarrier {
    public var nextDeadline: UInt64? { nil }
    public func expire(now: UInt64) {}
}

/// What a carrier calls on its partition; every call comes on the partition's service thread.
public protocol CarrierDelegate: AnyObject {
    /// A guest arrived with this memory. Throws to refuse it (the carrier tells the guest).
    func guestArrived(memory: GuestPhysicalMemory, description: String) throws
    /// VP `vp` trapped: its register block holds the exit.
    func guestExited(vp: Int)
    /// The guest signalled event connection `connectionID` without an exit (a fast doorbell).
    func guestSignalled(connectionID: UInt32)
    /// The guest left or was lost.
    func guestLeft(reason: String)
}
