// Legacy PCI configuration access (mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC)
// and the functions on bus 0, each with a 256-byte header-type-0 configuration space.

/// Offsets and bits of the standard PCI configuration header.
public enum PCIConfig {
    public static let vendorID = 0x00, deviceID = 0x02, command = 0x04, status = 0x06
    public static let revision = 0x08, progIF = 0x09, subclass = 0x0A, classCode = 0x0B
    public static let headerType = 0x0E, bar0 = 0x10
    public static let subsystemVendorID = 0x2C, subsystemID = 0x2E
    public static let interruptLine = 0x3C, interruptPin = 0x3D
    /// Command register bits: decode I/O space, memory space, act as bus master.
    public static let ioSpace: UInt16 = 0x0001, memorySpace: UInt16 = 0x0002, busMaster: UInt16 = 0x0004
    /// Header type bit: the device has more functions than function 0.
    public static let multiFunction: UInt8 = 0x80
    /// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration cycle.
    public static let enable: UInt32 = 0x8000_0000
    public static let addressPort: UInt16 = 0xCF8
    public static let dataPort: UInt16 = 0xCFC
}

/// The configuration space of one function: what the guest reads, which bits it may write, and
/// the I/O BARs. Writes honour a per-byte mask, so read-only fields (IDs, class, header type)
/// stay as they are, and a BAR answers the sizing probe (all ones written, size mask read back)
/// the way hardware does. Status bits are read-only here (nothing sets an error bit).
public final class PCIConfigSpace {
    public private(set) var bytes = [UInt8](repeating: 0, count: 256)
    private var writable = [UInt8](repeating: 0, count: 256)
    private var initial = [UInt8](repeating: 0, count: 256)
    /// BAR index → size in bytes of an I/O BAR (a power of two, at least 4).
    public private(set) var ioBars: [Int: Int] = [:]

    public init(vendor: UInt16, device: UInt16, revision: UInt8, classCode: UInt8, subclass: UInt8, progIF: UInt8,
                headerType: UInt8 = 0) {
        put16(PCIConfig.vendorID, vendor)
        put16(PCIConfig.deviceID, device)
        bytes[PCIConfig.revision] = revision
        bytes[PCIConfig.progIF] = progIF
        bytes[PCIConfig.subclass] = subclass
        bytes[PCIConfig.classCode] = classCode
        bytes[PCIConfig.headerType] = headerType
        // Command: I/O, memory, bus master, and interrupt disable (bit 10) are the guest's.
        writable[PCIConfig.command] = 0x07
        writable[PCIConfig.command + 1] = 0x04
        writable[PCIConfig.interruptLine] = 0xFF
        initial = bytes
    }

    /// Declares BAR `index` as an I/O BAR of `size` bytes at `port` (what firmware assigned).
    public func ioBar(_ index: Int, size: Int, at port: UInt16) {
        precondition((0..<6).contains(index) && size >= 4 && size <= 256 && size & (size - 1) == 0, "bad I/O BAR")
        ioBars[index] = size
        let offset = PCIConfig.bar0 + 4 * index
        let mask = UInt32(0xFFFF) & ~UInt32(size - 1)  // 16-bit I/O decode, as PC chipsets have
        for i in 0..<4 { writable[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(i))) }
        put32(offset, UInt32(port) & mask | 1)
        initial = bytes
    }

    /// Makes `count` bytes from `offset` (device-specific registers) writable by the guest, starting at `value`.
    public func register(_ offset: Int, count: Int, value: UInt32 = 0, mask: UInt32 = 0xFFFF_FFFF) {
        precondition(offset >= 0x40 && offset + count <= 256 && count <= 4, "device registers live at 0x40…0xFF")
        for i in 0..<count {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            writable[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(i)))
        }
        initial = bytes
    }

    /// Sets a byte the guest cannot write (interrupt pin, subsystem IDs, power-on command bits).
    public func set(_ offset: Int, _ value: UInt8) {
        bytes[offset] = value
        initial = bytes
    }

    public func reset() { bytes = initial }

    public var command: UInt16 { get16(PCIConfig.command) }

    /// The port an I/O BAR decodes at, or nil when I/O decoding is off or the BAR is not an I/O BAR.
    public func ioBase(_ index: Int) -> UInt16? {
        guard ioBars[index] != nil, command & PCIConfig.ioSpace != 0 else { return nil }
        return UInt16(truncatingIfNeeded: get32(PCIConfig.bar0 + 4 * index) & 0xFFFC)
    }

    /// `size` bytes (1, 2 or 4) from `offset`; bytes past the space read as ones.
    public func read(_ offset: Int, size: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(offset + i < 256 ? bytes[offset + i] : 0xFF) << (8 * UInt32(i)) }
        return v
    }

    /// Writes through the mask; true when the command register or a BAR changed (decoding may move).
    @discardableResult
    public func write(_ offset: Int, size: Int, value: UInt32) -> Bool {
        var moved = false
        for i in 0..<size where offset + i < 256 {
            let at = offset + i
            let v = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let updated = bytes[at] & ~writable[at] | v & writable[at]
            if updated != bytes[at] && (at < 0x06 || (0x10..<0x28).contains(at)) { moved = true }
            bytes[at] = updated
        }
        return moved
    }

    public func get16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
    public func get32(_ offset: Int) -> UInt32 { read(offset, size: 4) }
    private func put16(_ offset: Int, _ v: UInt16) {
        bytes[offset] = UInt8(truncatingIfNeeded: v)
        bytes[offset + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    private func put32(_ offset: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }
}

/// A register block behind an I/O BAR: the bus places it on the port bus and tells it its base,
/// from which it decodes its registers' offsets.
public protocol PCIIORegion: PortIODevice {
    func relocate(_ base: UInt16)
}

/// A function on the emulated PCI bus.
public protocol PCIFunction: AnyObject {
    var config: PCIConfigSpace { get }
    /// The function's I/O register blocks, by BAR index (the bus decodes them where the BAR points).
    var ioRegions: [Int: any PCIIORegion] { get }
    /// Power-on state of the function's registers (the configuration space is reset by the bus).
    func resetFunction()
}

extension PCIFunction {
    public var ioRegions: [Int: any PCIIORegion] { [:] }
    public func resetFunction() {}
}

/// A function with nothing but its configuration header (host bridge, ISA bridge).
public final class PCIHeaderOnly: PCIFunction {
    public let config: PCIConfigSpace
    public init(_ config: PCIConfigSpace) { self.config = config }
}

/// Bus 0 behind configuration mechanism #1. CONFIG_ADDRESS (a dword at 0xCF8) selects bus,
/// device, function and dword register; CONFIG_DATA (0xCFC–0xCFF) reads or writes bytes, words
/// or the dword of that register, one trap each, as on a PC. Absent functions, other buses and
/// accesses without the enable bit read all ones and swallow writes, which is how a guest's scan
/// tells that nothing is there. Byte and word accesses to 0xCF8–0xCFB are not configuration
/// cycles (the chipset's other registers live there): they read ones and are ignored.
///
/// The bus also places each function's I/O BARs on the port bus: when the guest moves a BAR or
/// turns I/O decoding on or off, the region follows and learns its new base (a BAR that would
/// overlap another device's ports is left undecoded rather than stealing them).
public final class PCIBus: PortIODevice {
    public private(set) var address: UInt32 = 0
    private var functions: [Int: any PCIFunction] = [:]
    private unowned let ports: PortIOBus
    /// Configuration cycles served, and those that reached no function.
    public private(set) var cycles: UInt64 = 0
    public private(set) var misses: UInt64 = 0

    /// A bus whose BAR regions go on `ports` (this bus must be attached to it too).
    public init(ports: PortIOBus) { self.ports = ports }

    public var portRanges: [ClosedRange<UInt16>] { [PCIConfig.addressPort...(PCIConfig.dataPort + 3)] }

    /// Puts `function` at bus 0, `device` (0–31), `function` number (0–7).
    public func attach(_ function: any PCIFunction, device: Int, function number: Int) {
        precondition((0..<32).contains(device) && (0..<8).contains(number) && functions[device << 3 | number] == nil, "PCI slot taken")
        functions[device << 3 | number] = function
        mapRegions(of: function)
    }

    public func function(device: Int, function number: Int) -> (any PCIFunction)? { functions[device << 3 | number] }

    public func reset() {
        address = 0
        for f in functions.values {
            f.config.reset()
            f.resetFunction()
            mapRegions(of: f)
        }
    }

    /// The selected function and register offset, if the address names one on bus 0.
    private func target(_ port: UInt16) -> (any PCIFunction, Int)? {
        guard address & PCIConfig.enable != 0, (address >> 16) & 0xFF == 0 else { return nil }
        let slot = Int((address >> 8) & 0xFF)
        guard let f = functions[slot] else { return nil }
        return (f, Int(address & 0xFC) + Int(port - PCIConfig.dataPort))
    }

    public func read(port: UInt16, size: Int) -> UInt32 {
        if port < PCIConfig.dataPort { return port == PCIConfig.addressPort && size == 4 ? address : 0xFFFF_FFFF }
        cycles &+= 1
        guard let (f, offset) = target(port) else {
            misses &+= 1
            return 0xFFFF_FFFF
        }
        return f.config.read(offset, size: min(size, 4 - (offset & 3)))  // a cycle stays within its dword
            | (size > 4 - (offset & 3) ? 0xFFFF_FFFF << (8 * UInt32(4 - (offset & 3))) : 0)
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        if port < PCIConfig.dataPort {
            if port == PCIConfig.addressPort && size == 4 { address = value & 0x80FF_FFFC }
            return
        }
        cycles &+= 1
        guard let (f, offset) = target(port) else {
            misses &+= 1
            return
        }
        if f.config.write(offset, size: min(size, 4 - (offset & 3)), value: value) { mapRegions(of: f) }
    }

    private func mapRegions(of f: any PCIFunction) {
        for (bar, region) in f.ioRegions {
            let size = f.config.ioBars[bar] ?? 0
            if let base = f.config.ioBase(bar), size > 0, Int(base) + size <= 0x10000 {
                region.relocate(base)
                ports.remap(region, to: [base...(base + UInt16(size - 1))])
            } else {
                ports.remap(region, to: [])
            }
        }
    }
}
