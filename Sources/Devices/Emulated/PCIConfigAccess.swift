// The guest's side of PCI configuration mechanism #1: address to 0xCF8, data through 0xCFC, one trap each.

/// One function a scan of bus 0 found.
public struct PCIFunctionAddress: Sendable, Equatable, CustomStringConvertible {
    public var device: Int
    public var function: Int
    public var vendor: UInt16
    public var deviceID: UInt16
    public init(device: Int, function: Int, vendor: UInt16 = 0, deviceID: UInt16 = 0) {
        self.device = device
        self.function = function
        self.vendor = vendor
        self.deviceID = deviceID
    }
    public var description: String {
        let hex = String(device, radix: 16)
        return "00:\(hex.count < 2 ? "0" + hex : hex).\(function)"
    }
}

/// Configuration reads and writes as a guest kernel issues them (Linux's pci_conf1 accessors:
/// an OUT of the dword address, then an IN or OUT of the data port at the byte offset), and the
/// bus scan Linux does: every device's function 0, its other functions only when the header
/// type says multi-function, an absent function reading vendor 0xFFFF.
public final class PCIConfigAccess {
    let io: any PortIO

    public init(io: any PortIO) { self.io = io }

    private func select(_ f: PCIFunctionAddress, _ offset: Int) {
        io.outl(PCIConfig.addressPort, PCIConfig.enable | UInt32(f.device) << 11 | UInt32(f.function) << 8 | UInt32(offset & 0xFC))
    }

    public func read(_ f: PCIFunctionAddress, _ offset: Int, size: Int) -> UInt32 {
        select(f, offset)
        return io.read(port: PCIConfig.dataPort + UInt16(offset & 3), size: size)
    }

    public func write(_ f: PCIFunctionAddress, _ offset: Int, size: Int, value: UInt32) {
        select(f, offset)
        io.write(port: PCIConfig.dataPort + UInt16(offset & 3), size: size, value: value)
    }

    /// Every function on bus 0.
    public func scan() -> [PCIFunctionAddress] {
        var found: [PCIFunctionAddress] = []
        for device in 0..<32 {
            for function in 0..<8 {
                var f = PCIFunctionAddress(device: device, function: function, vendor: 0, deviceID: 0)
                let id = read(f, PCIConfig.vendorID, size: 4)
                f.vendor = UInt16(truncatingIfNeeded: id)
                f.deviceID = UInt16(truncatingIfNeeded: id >> 16)
                if f.vendor == 0xFFFF || f.vendor == 0 {
                    if function == 0 { break }
                    continue
                }
                found.append(f)
                if function == 0 && UInt8(truncatingIfNeeded: read(f, PCIConfig.headerType, size: 1)) & PCIConfig.multiFunction == 0 { break }
            }
        }
        return found
    }

    /// The port an I/O BAR decodes at, for a driver that uses `span` ports from it; nil for a
    /// memory BAR, an unassigned one, or one whose ports would run past 0xFFFF (the value comes
    /// from the other side, and port arithmetic on it must not overflow).
    public func ioBar(_ f: PCIFunctionAddress, _ index: Int, span: Int) -> UInt16? {
        let bar = read(f, PCIConfig.bar0 + 4 * index, size: 4)
        guard bar & 1 == 1, bar & 0xFFFC != 0, Int(bar & 0xFFFC) + span <= 0x10000 else { return nil }
        return UInt16(truncatingIfNeeded: bar & 0xFFFC)
    }

    /// pci_enable_device + pci_set_master: I/O decoding and bus mastering on.
    public func enable(_ f: PCIFunctionAddress, busMaster: Bool) {
        let command = UInt16(truncatingIfNeeded: read(f, PCIConfig.command, size: 2))
        let wanted = command | PCIConfig.ioSpace | (busMaster ? PCIConfig.busMaster : 0)
        if wanted != command { write(f, PCIConfig.command, size: 2, value: UInt32(wanted)) }
    }
}
