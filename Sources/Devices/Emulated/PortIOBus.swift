// The host's legacy I/O port space: which emulated device answers which port, one trap per access.

/// An emulated device reached through I/O ports (a register model, as real hardware has).
public protocol PortIODevice: AnyObject {
    /// The ports the device decodes.
    var portRanges: [ClosedRange<UInt16>] { get }
    /// IN of `size` bytes (1, 2 or 4) from `port`.
    func read(port: UInt16, size: Int) -> UInt32
    /// OUT of `size` bytes to `port`.
    func write(port: UInt16, size: Int, value: UInt32)
    /// Power-on state (a new guest attached).
    func reset()
}

/// A legacy interrupt line (ISA IRQ): no SynIC, no message, just a level that a device raises and
/// lowers. The partition's transport turns a rising edge into a wake-up of the guest's handler.
public final class InterruptLine {
    public let irq: UInt32
    public private(set) var level = false
    public private(set) var raised: UInt64 = 0
    /// Called on every rising edge (the runtime rings the line's eventfd).
    public var onRaise: (() -> Void)?

    public init(irq: UInt32) { self.irq = irq }

    public func set(_ high: Bool) {
        guard high != level else { return }
        level = high
        if high {
            raised &+= 1
            onRaise?()
        }
    }
}

/// The partition's I/O port space. Every access is one exit, counted; ports no device decodes
/// read as all ones (a floating ISA bus) and swallow writes, as on a PC.
public final class PortIOBus {
    private var table: [(range: ClosedRange<UInt16>, device: any PortIODevice)] = []
    public private(set) var exits: UInt64 = 0
    public private(set) var unclaimed: UInt64 = 0
    public var devices: [any PortIODevice] {
        var seen: [ObjectIdentifier: any PortIODevice] = [:]
        for e in table { seen[ObjectIdentifier(e.device)] = e.device }
        return Array(seen.values)
    }

    public init() {}

    /// Adds a device; its ranges must not overlap a device already on the bus.
    public func attach(_ device: any PortIODevice) {
        for r in device.portRanges {
            precondition(!table.contains { $0.range.overlaps(r) }, "I/O ports \(r) claimed twice")
            table.append((r, device))
        }
    }

    /// Moves a relocatable device (a PCI BAR's register block) to `ranges`, replacing where it was;
    /// [] stops decoding it. A range that overlaps another device is not decoded (false).
    @discardableResult
    public func remap(_ device: any PortIODevice, to ranges: [ClosedRange<UInt16>]) -> Bool {
        table.removeAll { $0.device === device }
        var all = true
        for r in ranges {
            guard !table.contains(where: { $0.range.overlaps(r) }) else {
                all = false
                continue
            }
            table.append((r, device))
        }
        return all
    }

    private func device(at port: UInt16) -> (any PortIODevice)? {
        for e in table where e.range.contains(port) { return e.device }
        return nil
    }

    public func read(port: UInt16, size: Int) -> UInt32 {
        exits &+= 1
        let size = size == 1 || size == 2 ? size : 4
        guard let d = device(at: port) else {
            unclaimed &+= 1
            return size == 4 ? 0xFFFF_FFFF : UInt32((1 << (8 * size)) - 1)
        }
        let mask: UInt32 = size == 4 ? 0xFFFF_FFFF : UInt32((1 << (8 * size)) - 1)
        return d.read(port: port, size: size) & mask
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        exits &+= 1
        let size = size == 1 || size == 2 ? size : 4
        guard let d = device(at: port) else {
            unclaimed &+= 1
            return
        }
        let mask: UInt32 = size == 4 ? 0xFFFF_FFFF : UInt32((1 << (8 * size)) - 1)
        d.write(port: port, size: size, value: value & mask)
    }

    /// Every device back to its power-on state.
    public func reset() { for d in devices { d.reset() } }
}
