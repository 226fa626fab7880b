// The guest's view of I/O ports: IN and OUT instructions, each one trap to the host.

/// IN/OUT as a guest driver issues them. In the agent every call is one trap through
/// PartitionLink (a VM exit); tests wire it straight to a `PortIOBus`.
public protocol PortIO: AnyObject {
    func read(port: UInt16, size: Int) -> UInt32
    func write(port: UInt16, size: Int, value: UInt32)
}

extension PortIO {
    public func inb(_ port: UInt16) -> UInt8 { UInt8(truncatingIfNeeded: read(port: port, size: 1)) }
    public func inw(_ port: UInt16) -> UInt16 { UInt16(truncatingIfNeeded: read(port: port, size: 2)) }
    public func inl(_ port: UInt16) -> UInt32 { read(port: port, size: 4) }
    public func outb(_ port: UInt16, _ v: UInt8) { write(port: port, size: 1, value: UInt32(v)) }
    public func outw(_ port: UInt16, _ v: UInt16) { write(port: port, size: 2, value: UInt32(v)) }
    public func outl(_ port: UInt16, _ v: UInt32) { write(port: port, size: 4, value: v) }
}

/// Port I/O wired directly to a bus in the same process (tests, and the cost-free reference).
public final class DirectPortIO: PortIO {
    public let bus: PortIOBus
    public init(bus: PortIOBus) { self.bus = bus }
    public func read(port: UInt16, size: Int) -> UInt32 { bus.read(port: port, size: size) }
    public func write(port: UInt16, size: Int, value: UInt32) { bus.write(port: port, size: size, value: value) }
}

/// How a guest driver waits for its interrupt line.
public protocol InterruptWait: AnyObject {
    /// Blocks until the line rose (or `timeoutMs` passed); false on timeout or when the partition is gone.
    func wait(timeoutMs: Int) -> Bool
}

/// A guest driver for an emulated network card (NE2000, DEC 21140), as the agent's bridge to a TAP uses it.
public protocol LegacyNICDriver: AnyObject {
    /// The station address the card reported.
    var mac: [UInt8] { get }
    /// Sends one frame; false if the card did not take it.
    func transmit(_ frame: UnsafeRawBufferPointer) -> Bool
    /// The next received frame into `buffer`; its length, or nil when none waits.
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int?
    /// The interrupt handler's register work; `received` says `receive` has frames.
    func handleInterrupt() -> (received: Bool, transmitted: Bool)
    /// Called after `receive` ran dry.
    func receiveDone()
}

extension LegacyNICDriver {
    public func receiveDone() {}
}

/// The host side of an emulated NIC (NE2000, DEC 21140) as the partition's loop serves it: frames
/// wait on the port's descriptor, and the card takes them while it has room.
public protocol LegacyNICDevice: AnyObject {
    /// The port's descriptor, readable when frames wait (-1: none to watch).
    var descriptor: Int32 { get }
    /// Whether `pollReceive` would take frames now; it turns true again only through a guest
    /// register access.
    var acceptsFrames: Bool { get }
    /// Takes frames while the card has room; false when it stopped taking them.
    func pollReceive() -> Bool
}
