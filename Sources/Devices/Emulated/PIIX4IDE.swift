// The Intel PIIX4 IDE function (PCI 8086:7111) of a Hyper-V generation 1 VM: legacy-mode ATA
// channels plus the bus-master IDE registers (BMIDE) that move sectors by DMA through PRD tables.

import GuestMemory

/// Bus-master IDE register bits.
public enum BusMasterBits {
    /// Command register: start/stop, and direction (set: the controller writes memory, a disk read).
    public static let start: UInt8 = 0x01, toMemory: UInt8 = 0x08
    /// Status register: active (read-only), error and interrupt (write one to clear), drive 0/1 DMA capable.
    public static let active: UInt8 = 0x01, error: UInt8 = 0x02, interrupt: UInt8 = 0x04
    public static let drive0Capable: UInt8 = 0x20, drive1Capable: UInt8 = 0x40
    /// PRD flags word: end of table.
    public static let endOfTable: UInt16 = 0x8000
}

/// Why a bus-master transfer stopped; the channel reports each as ABRT with the BMIDE error bit.
public enum BusMasterFault: Error, Equatable, Sendable {
    case busMasterDisabled
    case noMemory
    /// A PRD entry (or the table itself) lies outside guest memory.
    case outsideMemory(gpa: UInt64)
    /// The table ended (EOT) before the transfer did.
    case tableTooShort(bytes: Int)
    /// No EOT within the 64 KiB the table may occupy.
    case tableUnterminated
    /// The command register's direction does not match the disk command (read vs write).
    case wrongDirection
}

/// The BMIDE block of one PIIX4 (BAR 4, 16 bytes: primary channel at +0, secondary at +8). Each
/// channel has a command register (+0), a status register (+2) and the PRD table pointer (+4,
/// a dword, bits 1–0 zero). A transfer runs when the channel's disk has a DMA command pending and
/// the start bit is set (in either order). It walks the PRD table — 8-byte entries: a physical
/// address (bit 0 ignored), a byte count (0 means 64 KiB) and the EOT flag — checking every entry
/// against guest memory, and moves the data between the image and guest memory in one call.
/// The table may not run past the 64 KiB-aligned block it starts in (8192 entries), which bounds
/// the walk. A table longer than the transfer leaves the active bit set, as the chip does; a
/// shorter one, an entry outside memory or bus mastering off in the PCI command register end
/// the command with the error bit and ABRT. Only the primary channel has a disk; the secondary's
/// registers hold what is written and never transfer.
public final class BusMasterIDE: PCIIORegion {
    public private(set) var base: UInt16 = 0
    /// The guest's memory while a guest is attached (DMA needs it).
    public var memory: GuestPhysicalMemory?
    /// Whether the PCI command register lets the function master the bus.
    var masterEnabled: () -> Bool = { true }
    unowned let channel: ATAController

    private var command: [UInt8] = [0, 0]
    private var status: [UInt8] = [0, 0]
    private var table: [UInt32] = [0, 0]
    /// Reused for every transfer: the guest buffers the PRD table names.
    private var segments: [UnsafeMutableRawBufferPointer] = []

    /// Transfers completed, refused (any fault) and the bytes moved.
    public private(set) var transfers: UInt64 = 0
    public private(set) var faults: UInt64 = 0
    public private(set) var bytesMoved: UInt64 = 0
    public private(set) var lastFault: BusMasterFault?

    init(channel: ATAController) {
        self.channel = channel
        segments.reserveCapacity(64)
        reset()
    }

    /// Moved by the PCI bus when BAR 4 changes.
    public var portRanges: [ClosedRange<UInt16>] { [] }

    public func relocate(_ base: UInt16) { self.base = base }

    public func reset() {
        command = [0, 0]
        table = [0, 0]
        // Firmware marks the drives it found as DMA capable.
        status = [(channel.hasDisk(0) ? BusMasterBits.drive0Capable : 0) | (channel.hasDisk(1) ? BusMasterBits.drive1Capable : 0), 0]
    }

    var started: Bool { command[0] & BusMasterBits.start != 0 }

    public func read(port: UInt16, size: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<size { v |= UInt32(readByte(Int(port &- base) + i)) << (8 * UInt32(i)) }
        return v
    }

    private func readByte(_ offset: Int) -> UInt8 {
        guard (0..<16).contains(offset) else { return 0xFF }
        let ch = offset >> 3
        switch offset & 7 {
        case 0: return command[ch]
        case 2: return status[ch]
        case 4...7: return UInt8(truncatingIfNeeded: table[ch] >> (8 * UInt32(offset & 3)))
        default: return 0
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        for i in 0..<size { writeByte(Int(port &- base) + i, UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
    }

    private func writeByte(_ offset: Int, _ v: UInt8) {
        guard (0..<16).contains(offset) else { return }
        let ch = offset >> 3
        switch offset & 7 {
        case 0:
            let was = command[ch]
            // The direction cannot change while the engine runs.
            let direction = was & BusMasterBits.start != 0 ? was & BusMasterBits.toMemory : v & BusMasterBits.toMemory
            command[ch] = v & BusMasterBits.start | direction
            if v & BusMasterBits.start == 0 {
                status[ch] &= ~BusMasterBits.active
            } else if was & BusMasterBits.start == 0 {
                status[ch] |= BusMasterBits.active
                if ch == 0 { channel.busMasterStarted() }
            }
        case 2:
            status[ch] = status[ch] & ~(v & (BusMasterBits.error | BusMasterBits.interrupt)) & ~0x60
                | status[ch] & BusMasterBits.active | v & 0x60
        case 4...7:
            let shift = 8 * UInt32(offset & 3)
            table[ch] = (table[ch] & ~(0xFF << shift) | UInt32(v) << shift) & ~3
        default: break
        }
    }

    /// The guest buffers for a transfer of `bytes`, in PRD order, the last one cut to fit; whether
    /// the table ended exactly there.
    func segments(bytes: Int) throws(BusMasterFault) -> (buffers: [UnsafeMutableRawBufferPointer], exact: Bool) {
        guard masterEnabled() else { throw .busMasterDisabled }
        guard let memory else { throw .noMemory }
        segments.removeAll(keepingCapacity: true)
        var entry = UInt64(table[0])
        let limit = entry | 0xFFFF  // the table stays within its 64 KiB block
        var remaining = bytes
        while entry + 7 <= limit {
            guard let e = try? memory.pointer(gpa: entry, count: 8) else { throw .outsideMemory(gpa: entry) }
            let address = UInt64(UInt32(littleEndian: e.loadUnaligned(as: UInt32.self)) & ~1)
            let raw = Int(UInt16(littleEndian: e.loadUnaligned(fromByteOffset: 4, as: UInt16.self)))
            let count = raw == 0 ? 0x10000 : raw
            let last = UInt16(littleEndian: e.loadUnaligned(fromByteOffset: 6, as: UInt16.self)) & BusMasterBits.endOfTable != 0
            if remaining > 0 {
                let take = min(count, remaining)
                guard let b = try? memory.buffer(gpa: address, count: take) else { throw .outsideMemory(gpa: address) }
                segments.append(b)
                remaining -= take
                if remaining == 0 { return (segments, last && take == count) }
            }
            if last { throw .tableTooShort(bytes: bytes - remaining) }
            entry += 8
        }
        throw .tableUnterminated
    }

    /// The end of a transfer: interrupt (and error) in the status; active clears when the table
    /// was used up exactly (or on error), as the chip does.
    func finish(fault: BusMasterFault?, exact: Bool, bytes: Int) {
        if let fault {
            faults &+= 1
            lastFault = fault
            status[0] = status[0] & ~BusMasterBits.active | BusMasterBits.error | BusMasterBits.interrupt
        } else {
            transfers &+= 1
            bytesMoved &+= UInt64(bytes)
            status[0] |= BusMasterBits.interrupt
            if exact { status[0] &= ~BusMasterBits.active }
        }
    }

    /// Whether a transfer moves data toward memory (disk reads).
    var toMemory: Bool { command[0] & BusMasterBits.toMemory != 0 }
}

/// The PIIX4's IDE function at 00:07.1 in front of an `ATAController` (the primary channel at
/// the legacy ports 0x1F0/0x3F6, IRQ 14): PCI IDs 8086:7111, class 01 01 with prog-if 0x80
/// (both channels in legacy mode, bus master capable), BAR 4 the BMIDE block (16 ports), and
/// the timing registers firmware leaves as it found the channels: IDETIM at 0x40 with IDE decode
/// enabled for the primary channel only, the secondary (0x42) disabled, SIDETIM 0x44, UDMACTL
/// 0x48 and UDMATIM 0x4A writable by the driver.
public final class PIIX4IDE: PCIFunction {
    public static let vendor: UInt16 = 0x8086, device: UInt16 = 0x7111
    /// Where Viridian's firmware puts BAR 4.
    public static let defaultBusMasterBase: UInt16 = 0xC040
    public static let idetimPrimary = 0x40, idetimSecondary = 0x42, sidetim = 0x44, udmaControl = 0x48, udmaTiming = 0x4A
    /// IDETIM bit 15: the channel decodes its legacy ports.
    public static let decodeEnable: UInt16 = 0x8000

    public let config: PCIConfigSpace
    public let channel: ATAController
    public let busMaster: BusMasterIDE

    public init(channel: ATAController, busMasterBase: UInt16 = defaultBusMasterBase) {
        self.channel = channel
        config = PCIConfigSpace(vendor: Self.vendor, device: Self.device, revision: 0x01, classCode: 0x01, subclass: 0x01, progIF: 0x80)
        config.ioBar(4, size: 16, at: busMasterBase)
        config.set(PCIConfig.command, UInt8(PCIConfig.ioSpace))  // firmware turned I/O decoding on
        config.register(Self.idetimPrimary, count: 2, value: UInt32(Self.decodeEnable), mask: 0xF3FF)
        config.register(Self.idetimSecondary, count: 2, value: 0, mask: 0xF3FF)
        config.register(Self.sidetim, count: 1, value: 0)
        config.register(Self.udmaControl, count: 1, value: 0, mask: 0x0F)
        config.register(Self.udmaTiming, count: 2, value: 0, mask: 0x3333)
        busMaster = BusMasterIDE(channel: channel)
        let config = config
        busMaster.masterEnabled = { config.command & PCIConfig.busMaster != 0 }
        channel.busMaster = busMaster
    }

    public var ioRegions: [Int: any PCIIORegion] { [4: busMaster] }

    public func resetFunction() { busMaster.reset() }
}

/// The other PIIX4 function a guest's scan must see first: the PCI-to-ISA bridge at 00:07.0
/// (8086:7110), whose header type marks the device as multi-function.
public func piix4ISABridge() -> PCIHeaderOnly {
    PCIHeaderOnly(PCIConfigSpace(vendor: 0x8086, device: 0x7110, revision: 0x01, classCode: 0x06, subclass: 0x01, progIF: 0,
                                 headerType: PCIConfig.multiFunction))
}

/// The host bridge at 00:00.0 of a generation 1 VM: Intel 440BX (8086:7192).
public func i440BXHostBridge() -> PCIHeaderOnly {
    PCIHeaderOnly(PCIConfigSpace(vendor: 0x8086, device: 0x7192, revision: 0x03, classCode: 0x06, subclass: 0x00, progIF: 0))
}
