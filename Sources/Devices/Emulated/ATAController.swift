// An emulated ATA/IDE channel at the legacy ports: task-file registers, PIO data transfers, IRQ 14.

import SyntheticStorage

/// Status register bits.
public enum ATAStatus {
    public static let busy: UInt8 = 0x80
    public static let ready: UInt8 = 0x40
    public static let deviceFault: UInt8 = 0x20
    public static let seekComplete: UInt8 = 0x10
    public static let dataRequest: UInt8 = 0x08
    public static let error: UInt8 = 0x01
}

/// Error register bits.
public enum ATAError {
    public static let abort: UInt8 = 0x04
    public static let idNotFound: UInt8 = 0x10
    public static let uncorrectable: UInt8 = 0x40
}

/// ATA command codes the controller implements.
public enum ATACommand {
    public static let readSectors: UInt8 = 0x20, readSectorsNoRetry: UInt8 = 0x21, readSectorsExt: UInt8 = 0x24
    public static let readMultipleExt: UInt8 = 0x29
    public static let writeSectors: UInt8 = 0x30, writeSectorsNoRetry: UInt8 = 0x31, writeSectorsExt: UInt8 = 0x34
    public static let writeMultipleExt: UInt8 = 0x39
    public static let executeDiagnostic: UInt8 = 0x90, initializeParameters: UInt8 = 0x91
    public static let readMultiple: UInt8 = 0xC4, writeMultiple: UInt8 = 0xC5, setMultiple: UInt8 = 0xC6
    public static let standbyImmediate: UInt8 = 0xE0, idleImmediate: UInt8 = 0xE1, standby: UInt8 = 0xE2, idle: UInt8 = 0xE3
    public static let checkPowerMode: UInt8 = 0xE5, flushCache: UInt8 = 0xE7, flushCacheExt: UInt8 = 0xEA
    public static let identify: UInt8 = 0xEC, setFeatures: UInt8 = 0xEF
    /// Bus-master DMA transfers (a PIIX4 channel only).
    public static let readDMA: UInt8 = 0xC8, readDMAExt: UInt8 = 0x25, writeDMA: UInt8 = 0xCA, writeDMAExt: UInt8 = 0x35
    /// SET FEATURES subcommand: set transfer mode (sector count: 0x08|n PIO, 0x20|n MWDMA, 0x40|n UDMA).
    public static let setTransferMode: UInt8 = 0x03
}

/// One ATA channel (the primary: command block 0x1F0–0x1F7, control 0x3F6, IRQ 14) with up to two
/// disks over block backends — the same image files the StorageVSP serves. On its own (an ISA
/// channel) transfers are PIO only: every 2 or 4 bytes through the data port is one register
/// access, so one trap. Behind a PIIX4 (`busMaster` set) the disks also offer multiword DMA 0–2
/// and UDMA 0–5 in IDENTIFY and take READ/WRITE DMA (EXT): the command leaves DRQ set until the
/// bus master is started, which moves the whole transfer and interrupts once. Register
/// behaviour follows ATA/ATAPI-7: status and error bits, DRQ blocks of one sector (or the
/// multiple count), interrupts at each data block and at completion, 28- and 48-bit LBA (the
/// latter through the two-deep task-file FIFO and the HOB bit), CHS translated with 16 heads ×
/// 63 sectors. A command in the wrong state, a transfer out of range or an access with no data
/// ready sets what a disk would (ABRT, IDNF, no DRQ), never a host fault.
public final class ATAController: PortIODevice {
    public static let primaryCommand: UInt16 = 0x1F0
    public static let primaryControl: UInt16 = 0x3F6
    public static let sectorSize = 512
    /// Largest READ/WRITE MULTIPLE block the disk offers (IDENTIFY word 47).
    public static let maximumMultiple = 16

    public let commandBase: UInt16
    public let controlPort: UInt16
    public let line: InterruptLine
    let disks: [ATADisk?]

    // The task file, shared by both devices of the channel; the 48-bit registers keep the previous value too.
    var features: UInt8 = 0
    var sectorCount: (current: UInt8, previous: UInt8) = (1, 0)
    var lbaLow: (current: UInt8, previous: UInt8) = (1, 0)
    var lbaMid: (current: UInt8, previous: UInt8) = (0, 0)
    var lbaHigh: (current: UInt8, previous: UInt8) = (0, 0)
    var device: UInt8 = 0xA0
    var control: UInt8 = 0
    private var intrq = false
    /// The PIIX4 bus master in front of this channel; nil on a PIO-only (ISA) channel.
    public internal(set) weak var busMaster: BusMasterIDE?

    public private(set) var commands: UInt64 = 0
    public private(set) var sectorsRead: UInt64 = 0
    public private(set) var sectorsWritten: UInt64 = 0
    /// DMA commands completed.
    public private(set) var dmaCommands: UInt64 = 0

    public init(disks: [(any BlockBackend)?], commandBase: UInt16 = primaryCommand, controlPort: UInt16 = primaryControl,
                line: InterruptLine = InterruptLine(irq: 14)) {
        self.commandBase = commandBase
        self.controlPort = controlPort
        self.line = line
        self.disks = (0..<2).map { i in i < disks.count ? disks[i].map { ATADisk(backend: $0, serial: "VIRIDIAN-ATA-\(i)") } : nil }
    }

    public var portRanges: [ClosedRange<UInt16>] { [commandBase...(commandBase + 7), controlPort...controlPort] }

    var selected: ATADisk? { disks[Int(device >> 4) & 1] }

    /// Whether unit `unit` (0 master, 1 slave) has a disk.
    func hasDisk(_ unit: Int) -> Bool { disks[unit] != nil }

    public func reset() {
        features = 0
        device = 0xA0
        control = 0
        intrq = false
        for d in disks { d?.reset() }
        signature()
        updateLine()
    }

    /// The register values a disk leaves after reset or diagnostics.
    private func signature() {
        sectorCount = (1, 0)
        lbaLow = (1, 0)
        lbaMid = (0, 0)
        lbaHigh = (0, 0)
    }

    private func updateLine() { line.set(intrq && control & 0x02 == 0) }

    private func raise() {
        intrq = true
        updateLine()
    }

    // MARK: Registers

    public func read(port: UInt16, size: Int) -> UInt32 {
        if port == controlPort { return UInt32(selected?.status ?? 0) }  // alternate status: no side effect
        let hob = control & 0x80 != 0
        switch port - commandBase {
        case 0: return readData(size: size)
        case 1: return UInt32(selected?.error ?? 0)
        case 2: return UInt32(hob ? sectorCount.previous : sectorCount.current)
        case 3: return UInt32(hob ? lbaLow.previous : lbaLow.current)
        case 4: return UInt32(hob ? lbaMid.previous : lbaMid.current)
        case 5: return UInt32(hob ? lbaHigh.previous : lbaHigh.current)
        case 6: return UInt32(device)
        case 7:
            // Reading status acknowledges the interrupt.
            intrq = false
            updateLine()
            return UInt32(selected?.status ?? 0)
        default: return 0xFF
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        let byte = UInt8(truncatingIfNeeded: value)
        if port == controlPort { return writeControl(byte) }
        control &= 0x7F  // any task-file write clears HOB
        switch port - commandBase {
        case 0: writeData(size: size, value: value)
        case 1: features = byte
        case 2: sectorCount = (byte, sectorCount.current)
        case 3: lbaLow = (byte, lbaLow.current)
        case 4: lbaMid = (byte, lbaMid.current)
        case 5: lbaHigh = (byte, lbaHigh.current)
        case 6: device = byte | 0xA0
        case 7: execute(byte)
        default: break
        }
    }

    private func writeControl(_ value: UInt8) {
        let wasReset = control & 0x04 != 0
        control = value
        if value & 0x04 != 0 {
            for d in disks { d?.status = ATAStatus.busy }
        } else if wasReset {
            for d in disks { d?.reset() }
            device = 0xA0
            signature()
            intrq = false
        }
        updateLine()
    }

    // MARK: Data port

    private func readData(size: Int) -> UInt32 {
        guard let d = selected, d.phase == .dataIn, d.status & ATAStatus.dataRequest != 0 else { return size == 4 ? 0xFFFF_FFFF : 0xFFFF }
        let n = min(size, d.length - d.position)
        var v: UInt32 = 0
        for i in 0..<n { v |= UInt32(d.buffer[d.position + i]) << (8 * UInt32(i)) }
        d.position += n
        if d.position >= d.length { nextReadBlock(d) }
        return v
    }

    private func writeData(size: Int, value: UInt32) {
        guard let d = selected, d.phase == .dataOut, d.status & ATAStatus.dataRequest != 0 else { return }  // overrun: ignored
        let n = min(size, d.length - d.position)
        for i in 0..<n { d.buffer[d.position + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
        d.position += n
        if d.position >= d.length { writeBlock(d) }
    }

    // MARK: Commands

    private func execute(_ command: UInt8) {
        commands &+= 1
        guard let d = selected else { return }  // no device: nothing answers
        if d.status & (ATAStatus.busy | ATAStatus.dataRequest) != 0 {
            // A command while another is transferring: the transfer is abandoned, the new command aborted.
            d.phase = .idle
            return fail(d, ATAError.abort)
        }
        d.error = 0
        switch command {
        case ATACommand.identify:
            d.load(d.identifyData(dma: busMaster != nil))
            d.begin(.dataIn, remaining: 1, block: 1, lba: 0, write: false)
            d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
            raise()
        case ATACommand.readSectors, ATACommand.readSectorsNoRetry, ATACommand.readSectorsExt,
             ATACommand.readMultiple, ATACommand.readMultipleExt:
            transfer(d, command, write: false)
        case ATACommand.writeSectors, ATACommand.writeSectorsNoRetry, ATACommand.writeSectorsExt,
             ATACommand.writeMultiple, ATACommand.writeMultipleExt:
            transfer(d, command, write: true)
        case ATACommand.setMultiple:
            let n = Int(sectorCount.current)
            guard n == 0 || (n <= Self.maximumMultiple && n & (n - 1) == 0) else { return fail(d, ATAError.abort) }
            d.multiple = n
            complete(d)
        case ATACommand.flushCache, ATACommand.flushCacheExt:
            do { try d.backend.flush() } catch { return fail(d, ATAError.abort, fault: true) }
            complete(d)
        case ATACommand.checkPowerMode:
            sectorCount = (0xFF, sectorCount.current)  // active or idle
            complete(d)
        case ATACommand.executeDiagnostic:
            signature()
            d.error = 0x01  // device 0 passed
            d.status = ATAStatus.ready | ATAStatus.seekComplete
            raise()
        case ATACommand.readDMA, ATACommand.readDMAExt, ATACommand.writeDMA, ATACommand.writeDMAExt:
            dmaCommand(d, command)
        case ATACommand.setFeatures where features == ATACommand.setTransferMode:
            guard d.setTransferMode(sectorCount.current, dma: busMaster != nil) else { return fail(d, ATAError.abort) }
            complete(d)
        case ATACommand.setFeatures, ATACommand.initializeParameters, ATACommand.idle, ATACommand.idleImmediate,
             ATACommand.standby, ATACommand.standbyImmediate:
            complete(d)
        default:
            fail(d, ATAError.abort)
        }
    }

    private func complete(_ d: ATADisk) {
        d.phase = .idle
        d.status = ATAStatus.ready | ATAStatus.seekComplete
        raise()
    }

    private func fail(_ d: ATADisk, _ error: UInt8, fault: Bool = false) {
        d.phase = .idle
        d.error = error
        d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.error | (fault ? ATAStatus.deviceFault : 0)
        raise()
    }

    /// The LBA and count the task file names for `command` (48-bit for the EXT commands).
    private func address(_ command: UInt8) -> (lba: UInt64, count: Int)? {
        let ext = [ATACommand.readSectorsExt, ATACommand.readMultipleExt, ATACommand.writeSectorsExt, ATACommand.writeMultipleExt,
                   ATACommand.readDMAExt, ATACommand.writeDMAExt].contains(command)
        if ext {
            let lba = UInt64(lbaHigh.previous) << 40 | UInt64(lbaMid.previous) << 32 | UInt64(lbaLow.previous) << 24
                | UInt64(lbaHigh.current) << 16 | UInt64(lbaMid.current) << 8 | UInt64(lbaLow.current)
            let count = Int(sectorCount.previous) << 8 | Int(sectorCount.current)
            return (lba, count == 0 ? 65536 : count)
        }
        let count = sectorCount.current == 0 ? 256 : Int(sectorCount.current)
        if device & 0x40 != 0 {
            return (UInt64(device & 0x0F) << 24 | UInt64(lbaHigh.current) << 16 | UInt64(lbaMid.current) << 8 | UInt64(lbaLow.current), count)
        }
        // CHS with the geometry IDENTIFY reports.
        let cylinder = UInt64(lbaHigh.current) << 8 | UInt64(lbaMid.current)
        let head = UInt64(device & 0x0F), sector = UInt64(lbaLow.current)
        guard sector >= 1, sector <= 63 else { return nil }
        return ((cylinder * 16 + head) * 63 + sector - 1, count)
    }

    /// The sectors a transfer command names, or nil after failing it: IDNF past the end of the
    /// disk, ABRT for a write to a read-only image.
    private func checkedRange(_ d: ATADisk, _ command: UInt8, write: Bool) -> (lba: UInt64, count: Int)? {
        guard let (lba, count) = address(command), lba + UInt64(count) <= d.sectors else {
            fail(d, ATAError.idNotFound)
            return nil
        }
        if write && d.backend.isReadOnly {
            fail(d, ATAError.abort)
            return nil
        }
        return (lba, count)
    }

    private func transfer(_ d: ATADisk, _ command: UInt8, write: Bool) {
        let multiple = [ATACommand.readMultiple, ATACommand.readMultipleExt, ATACommand.writeMultiple, ATACommand.writeMultipleExt].contains(command)
        if multiple && d.multiple == 0 { return fail(d, ATAError.abort) }  // SET MULTIPLE first
        guard let (lba, count) = checkedRange(d, command, write: write) else { return }
        d.begin(write ? .dataOut : .dataIn, remaining: count, block: multiple ? d.multiple : 1, lba: lba, write: write)
        if write {
            // PIO out: the first block is asked for without an interrupt.
            d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        } else {
            readBlock(d)
        }
    }

    // MARK: DMA

    /// READ/WRITE DMA (EXT): checked like PIO, then the disk waits with DRQ for the bus master.
    private func dmaCommand(_ d: ATADisk, _ command: UInt8) {
        guard busMaster != nil else { return fail(d, ATAError.abort) }  // an ISA channel has no DMA
        let write = command == ATACommand.writeDMA || command == ATACommand.writeDMAExt
        guard let (lba, count) = checkedRange(d, command, write: write) else { return }
        d.begin(.dma, remaining: count, block: count, lba: lba, write: write)
        d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        if busMaster?.started == true { runDMA(d) }
    }

    /// The bus master's start bit went from 0 to 1.
    func busMasterStarted() {
        guard let d = selected, d.phase == .dma else { return }
        runDMA(d)
    }

    /// Moves the pending DMA transfer between the image and guest memory, then interrupts.
    private func runDMA(_ d: ATADisk) {
        guard let bm = busMaster else { return }
        let bytes = d.remaining * Self.sectorSize
        // The direction bit must match the command; a mismatch is the guest's error.
        guard bm.toMemory != d.write else {
            bm.finish(fault: .wrongDirection, exact: false, bytes: 0)
            return fail(d, ATAError.abort)
        }
        let buffers: [UnsafeMutableRawBufferPointer], exact: Bool
        do {
            (buffers, exact) = try bm.segments(bytes: bytes)
        } catch {
            bm.finish(fault: error, exact: false, bytes: 0)
            return fail(d, ATAError.abort)
        }
        do {
            if d.write {
                try d.backend.write(offset: d.lba * 512, from: buffers.map { UnsafeRawBufferPointer($0) })
                sectorsWritten &+= UInt64(d.remaining)
            } else {
                try d.backend.read(offset: d.lba * 512, into: buffers)
                sectorsRead &+= UInt64(d.remaining)
            }
        } catch {
            bm.finish(fault: nil, exact: exact, bytes: 0)
            return fail(d, d.write ? ATAError.abort : ATAError.uncorrectable, fault: d.write)
        }
        dmaCommands &+= 1
        d.remaining = 0
        bm.finish(fault: nil, exact: exact, bytes: bytes)
        complete(d)
    }

    /// Fills the buffer with the next DRQ block of a read and interrupts.
    private func readBlock(_ d: ATADisk) {
        let n = min(d.block, d.remaining)
        d.length = n * Self.sectorSize
        d.position = 0
        do {
            try d.buffer.withUnsafeMutableBytes { try d.backend.read(offset: d.lba * 512, into: [UnsafeMutableRawBufferPointer(rebasing: $0[0..<d.length])]) }
        } catch {
            return fail(d, ATAError.uncorrectable)
        }
        sectorsRead &+= UInt64(n)
        d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
        raise()
    }

    private func nextReadBlock(_ d: ATADisk) {
        if d.write == false && d.phase == .dataIn && d.remaining > 0 {
            let n = min(d.block, d.remaining)
            d.remaining -= n
            d.lba += UInt64(n)
        }
        if d.remaining > 0 {
            readBlock(d)
        } else {
            d.phase = .idle
            d.status = ATAStatus.ready | ATAStatus.seekComplete
        }
    }

    private func writeBlock(_ d: ATADisk) {
        let n = d.length / Self.sectorSize
        do {
            try d.buffer.withUnsafeBytes { try d.backend.write(offset: d.lba * 512, from: [UnsafeRawBufferPointer(rebasing: $0[0..<d.length])]) }
        } catch {
            return fail(d, ATAError.abort, fault: true)
        }
        sectorsWritten &+= UInt64(n)
        d.remaining -= n
        d.lba += UInt64(n)
        if d.remaining > 0 {
            d.length = min(d.block, d.remaining) * Self.sectorSize
            d.position = 0
            d.status = ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.dataRequest
            raise()
        } else {
            complete(d)
        }
    }
}

/// One disk on an ATA channel: its backend, status, error and the transfer in progress.
final class ATADisk {
    enum Phase { case idle, dataIn, dataOut, dma }
    let backend: any BlockBackend
    let serial: String
    var status: UInt8 = ATAStatus.ready | ATAStatus.seekComplete
    var error: UInt8 = 0x01
    var multiple = 0
    /// The transfer mode SET FEATURES chose (0x08|n PIO n, 0x20|n MWDMA n, 0x40|n UDMA n; 0: default PIO).
    var transferMode: UInt8 = 0
    var phase = Phase.idle
    var buffer = [UInt8](repeating: 0, count: ATAController.maximumMultiple * ATAController.sectorSize)
    var position = 0
    var length = 0
    var remaining = 0
    var block = 1
    var lba: UInt64 = 0
    var write = false

    init(backend: any BlockBackend, serial: String) {
        self.backend = backend
        self.serial = serial
    }

    var sectors: UInt64 { backend.sizeBytes / 512 }

    func reset() {
        status = ATAStatus.ready | ATAStatus.seekComplete
        error = 0x01
        multiple = 0
        transferMode = 0
        phase = .idle
    }

    /// SET FEATURES 03h: PIO 0–4, and MWDMA 0–2 or UDMA 0–5 where the channel has DMA.
    func setTransferMode(_ mode: UInt8, dma: Bool) -> Bool {
        switch mode >> 3 {
        case 0 where mode <= 1, 1 where mode & 7 <= 4: transferMode = 0
        case 4 where dma && mode & 7 <= 2, 8 where dma && mode & 7 <= 5: transferMode = mode
        default: return false
        }
        return true
    }

    func begin(_ phase: Phase, remaining: Int, block: Int, lba: UInt64, write: Bool) {
        self.phase = phase
        self.remaining = remaining
        self.block = block
        self.lba = lba
        self.write = write
        length = min(block, remaining) * ATAController.sectorSize
        position = 0
    }

    /// A one-sector PIO-in block that is not disk data (IDENTIFY).
    func load(_ sector: [UInt8]) {
        buffer.replaceSubrange(0..<512, with: sector)
    }

    /// IDENTIFY DEVICE data (ATA/ATAPI-7 words), with the integrity word.
    func identifyData(dma: Bool) -> [UInt8] {
        var w = [UInt16](repeating: 0, count: 256)
        let cylinders = UInt16(min(sectors / (16 * 63), 16383))
        w[0] = 0x0040
        w[1] = cylinders
        w[3] = 16
        w[6] = 63
        put(&w, 10, 20, serial)
        put(&w, 23, 8, "1.0")
        put(&w, 27, 40, "Viridian emulated ATA disk")
        w[47] = 0x8000 | UInt16(ATAController.maximumMultiple)
        w[49] = dma ? 0x0300 : 0x0200  // LBA, and DMA
        w[53] = dma ? 0x0007 : 0x0003  // words 54–58, 64–70 (and 88) valid
        w[54] = cylinders
        w[55] = 16
        w[56] = 63
        let chs = UInt32(cylinders) * 16 * 63
        w[57] = UInt16(truncatingIfNeeded: chs)
        w[58] = UInt16(truncatingIfNeeded: chs >> 16)
        w[59] = multiple > 0 ? 0x0100 | UInt16(multiple) : 0
        let lba28 = UInt32(min(sectors, 0x0FFF_FFFF))
        w[60] = UInt16(truncatingIfNeeded: lba28)
        w[61] = UInt16(truncatingIfNeeded: lba28 >> 16)
        if dma {
            // Modes supported in the low byte, the one selected in the high byte.
            w[63] = 0x0007 | (transferMode >> 3 == 4 ? 0x0100 << UInt16(transferMode & 7) : 0)
            w[88] = 0x003F | (transferMode >> 3 == 8 ? 0x0100 << UInt16(transferMode & 7) : 0)
            w[93] = 0x6000  // an 80-conductor cable detected (UDMA above mode 2 allowed)
        }
        w[64] = 0x0003  // PIO modes 3 and 4
        w[65] = 120; w[66] = 120; w[67] = 120; w[68] = 120
        w[80] = 0x00F0  // ATA/ATAPI-4 … 7
        w[82] = 0x4000
        w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400  // FLUSH CACHE EXT, FLUSH CACHE, 48-bit
        w[84] = 0x4000
        w[85] = 0x4000
        w[86] = 0x2000 | 0x1000 | 0x0400
        w[87] = 0x4000
        for i in 0..<4 { w[100 + i] = UInt16(truncatingIfNeeded: sectors >> (16 * UInt64(i))) }
        var bytes = [UInt8](repeating: 0, count: 512)
        for i in 0..<256 {
            bytes[2 * i] = UInt8(truncatingIfNeeded: w[i])
            bytes[2 * i + 1] = UInt8(truncatingIfNeeded: w[i] >> 8)
        }
        bytes[510] = 0xA5
        let sum = bytes[0..<511].reduce(UInt8(0)) { $0 &+ $1 }
        bytes[511] = 0 &- sum
        return bytes
    }

    /// An ATA string: space padded, two characters per word, first character in the high byte.
    private func put(_ w: inout [UInt16], _ first: Int, _ length: Int, _ text: String) {
        var chars = Array(text.utf8.prefix(length))
        chars += [UInt8](repeating: 0x20, count: length - chars.count)
        for i in 0..<(length / 2) { w[first + i] = UInt16(chars[2 * i]) << 8 | UInt16(chars[2 * i + 1]) }
    }
}
