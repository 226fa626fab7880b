// The guest's ATA PIO driver: the register sequences Linux's libata SFF code issues, through IN/OUT traps.

/// Guest memory a driver hands to a bus-mastering device: a host view of `size` bytes that are
/// contiguous in guest-physical memory from `gpa`.
public struct DMAWindow: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let gpa: UInt64
    public let size: Int
    public init(base: UnsafeMutableRawPointer, gpa: UInt64, size: Int) {
        self.base = base
        self.gpa = gpa
        self.size = size
    }

    /// `count` bytes from `offset` as a window of its own.
    public func slice(_ offset: Int, _ count: Int) -> DMAWindow {
        precondition(offset >= 0 && count >= 0 && offset + count <= size, "slice outside the window")
        return DMAWindow(base: base + offset, gpa: gpa + UInt64(offset), size: count)
    }
}

/// What the driver needs for bus-master DMA on a PIIX4 channel: the channel's BMIDE ports, a
/// page for the PRD table and a bounce buffer the transfers land in.
public struct ATABusMaster: Sendable {
    public let port: UInt16
    public let table: DMAWindow
    public let buffer: DMAWindow
    public init(port: UInt16, table: DMAWindow, buffer: DMAWindow) {
        self.port = port
        self.table = table
        self.buffer = buffer
    }
}

/// Why an ATA command failed.
public enum ATADriverError: Error, Equatable, Sendable {
    case noDevice
    case timeout(String)
    /// The device set ERR (status, error register).
    case device(status: UInt8, error: UInt8)
    case outOfRange
    /// The bus master reported an error (BMIDE status).
    case busMaster(status: UInt8)
    /// The bus master's eight ports would run past 0xFFFF.
    case badPort(UInt16)
}

/// Drives one disk of a legacy ATA channel with PIO, as libata's SFF host state machine does:
/// select, wait for !BSY, load the task file (HOB bytes first for 48-bit), issue the command,
/// then per DRQ block wait for the interrupt (or, for the first block of a write, poll the
/// alternate status), read the status to acknowledge, and move the block through the data port
/// 32 bits at a time. Every register access is one trap. One thread drives it.
///
/// Given a bus master (a PIIX4 channel) and a disk whose IDENTIFY offers DMA, it selects the
/// fastest UDMA (else multiword DMA) mode with SET FEATURES and moves data as ata_bmdma does:
/// PRD table pointer and direction, the DMA command, the start bit, one interrupt, then bus
/// master status, stop, status and interrupt acknowledge — about 26 traps per command however
/// many sectors it moves.
public final class ATADriver {
    let io: any PortIO
    let interrupt: any InterruptWait
    let base: UInt16
    let controlPort: UInt16
    /// 0 master, 1 slave.
    let unit: UInt8
    public private(set) var sectors: UInt64 = 0
    public private(set) var model = ""
    public private(set) var supportsLBA48 = false
    /// Sectors per DRQ block once SET MULTIPLE succeeded (0: single-sector commands).
    public private(set) var multiple = 0
    /// The transfer mode set (SET FEATURES value), nil when the driver uses PIO.
    public private(set) var dmaMode: UInt8?
    let busMaster: ATABusMaster?
    static let timeoutMs = 5000

    public init(io: any PortIO, interrupt: any InterruptWait, base: UInt16 = ATAController.primaryCommand,
                controlPort: UInt16 = ATAController.primaryControl, unit: UInt8 = 0, busMaster: ATABusMaster? = nil) throws(ATADriverError) {
        self.io = io
        if let busMaster, busMaster.port > 0xFFF8 { throw .badPort(busMaster.port) }
        self.busMaster = busMaster
        self.interrupt = interrupt
        self.base = base
        self.controlPort = controlPort
        self.unit = unit
        try probe()
    }

    private var deviceBits: UInt8 { 0xE0 | unit << 4 }

    /// Presence check (a register that holds what was written), soft reset, IDENTIFY, SET MULTIPLE.
    private func probe() throws(ATADriverError) {
        io.outb(base + 6, deviceBits)
        io.outb(base + 2, 0x55)
        io.outb(base + 3, 0xAA)
        guard io.inb(base + 2) == 0x55, io.inb(base + 3) == 0xAA else { throw .noDevice }
        // Soft reset of the channel (once, from the master: it resets both devices), interrupts enabled afterwards.
        if unit == 0 {
            io.outb(controlPort, 0x06)
            io.outb(controlPort, 0x02)
            io.outb(controlPort, 0x00)
            try waitNotBusy()
        }
        // Reset selects the master again; an absent device reads as status 0.
        io.outb(base + 6, deviceBits)
        let status = io.inb(base + 7)
        guard status != 0, status != 0xFF else { throw .noDevice }
        var id = [UInt8](repeating: 0, count: 512)
        try command(ATACommand.identify, lba: 0, count: 0, lba48: false)
        try waitForInterrupt()
        let s = io.inb(base + 7)
        guard s & ATAStatus.error == 0, s & ATAStatus.dataRequest != 0 else { throw .device(status: s, error: io.inb(base + 1)) }
        id.withUnsafeMutableBytes { readBlock(into: $0.baseAddress!, count: 512) }
        func word(_ i: Int) -> UInt64 { UInt64(id[2 * i]) | UInt64(id[2 * i + 1]) << 8 }
        supportsLBA48 = word(83) & 0x0400 != 0
        let reported = supportsLBA48 ? word(100) | word(101) << 16 | word(102) << 32 | word(103) << 48 : word(60) | word(61) << 16
        // LBA48 addresses 2^48 sectors; more (words 100-103 all 0xFFFF) would overflow sectors × 512.
        guard reported <= 1 << 48 else { throw .outOfRange }
        sectors = reported
        var text = (27..<47).flatMap { [id[2 * $0 + 1], id[2 * $0]] }
        while text.last == 0x20 || text.last == 0 { text.removeLast() }
        model = String(decoding: text, as: UTF8.self)
        let maxMultiple = Int(word(47) & 0xFF)
        if maxMultiple >= 2 {
            io.outb(base + 6, deviceBits)
            io.outb(base + 2, UInt8(maxMultiple))
            io.outb(base + 7, ATACommand.setMultiple)
            try waitForInterrupt()
            if io.inb(base + 7) & ATAStatus.error == 0 { multiple = maxMultiple }
        }
        // DMA as libata chooses it for a PIIX4 (piix_pata_33: UDMA 0–2, MWDMA 1–2): the best mode both
        // sides have, UDMA before MWDMA.
        if busMaster != nil, word(49) & 0x0100 != 0 {
            let udma = word(53) & 0x0004 != 0 ? word(88) & 0x07 : 0
            let mwdma = word(63) & 0x06
            let mode: UInt8? = udma != 0 ? 0x40 | UInt8(63 - udma.leadingZeroBitCount) : mwdma != 0 ? 0x20 | UInt8(63 - mwdma.leadingZeroBitCount) : nil
            if let mode {
                io.outb(base + 6, deviceBits)
                io.outb(base + 1, ATACommand.setTransferMode)
                io.outb(base + 2, mode)
                io.outb(base + 7, ATACommand.setFeatures)
                try waitForInterrupt()
                if io.inb(base + 7) & ATAStatus.error == 0 { dmaMode = mode }
            }
        }
    }

    /// The most sectors one command moves.
    public var maximumTransfer: Int {
        guard dmaMode != nil, let busMaster else { return commandLimit }
        return min(commandLimit, busMaster.buffer.size / 512)
    }

    // MARK: Waiting

    private func waitNotBusy() throws(ATADriverError) {
        for _ in 0..<100_000 where io.inb(controlPort) & ATAStatus.busy == 0 { return }
        throw .timeout("BSY did not clear")
    }

    private func waitForInterrupt() throws(ATADriverError) {
        guard interrupt.wait(timeoutMs: Self.timeoutMs) else { throw .timeout("no interrupt") }
    }

    // MARK: Commands

    /// Loads the task file and writes the command register.
    private func command(_ code: UInt8, lba: UInt64, count: Int, lba48: Bool) throws(ATADriverError) {
        io.outb(base + 6, deviceBits)
        try waitNotBusy()
        loadTaskFile(lba: lba, count: count, lba48: lba48, feature: nil)
        io.outb(base + 7, code)
    }

    /// The task file for a transfer: the HOB bytes first for 48-bit, then count and LBA, then the
    /// device register (LBA bits 27–24 for 28-bit). With `feature`, the features register leads
    /// each half, as ata_sff_tf_load writes it.
    private func loadTaskFile(lba: UInt64, count: Int, lba48: Bool, feature: UInt8?) {
        if lba48 {
            if let feature { io.outb(base + 1, feature) }
            io.outb(base + 2, UInt8(truncatingIfNeeded: count >> 8))
            io.outb(base + 3, UInt8(truncatingIfNeeded: lba >> 24))
            io.outb(base + 4, UInt8(truncatingIfNeeded: lba >> 32))
            io.outb(base + 5, UInt8(truncatingIfNeeded: lba >> 40))
        }
        if let feature { io.outb(base + 1, feature) }
        io.outb(base + 2, UInt8(truncatingIfNeeded: count))
        io.outb(base + 3, UInt8(truncatingIfNeeded: lba))
        io.outb(base + 4, UInt8(truncatingIfNeeded: lba >> 8))
        io.outb(base + 5, UInt8(truncatingIfNeeded: lba >> 16))
        io.outb(base + 6, lba48 ? deviceBits : deviceBits | UInt8(truncatingIfNeeded: lba >> 24) & 0x0F)
    }

    private func readBlock(into p: UnsafeMutableRawPointer, count: Int) {
        for i in stride(from: 0, to: count, by: 4) { p.storeBytes(of: io.inl(base).littleEndian, toByteOffset: i, as: UInt32.self) }
    }

    private func writeBlock(from p: UnsafeRawPointer, count: Int) {
        for i in stride(from: 0, to: count, by: 4) { io.outl(base, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt32.self))) }
    }

    /// Largest transfer of one command.
    private var commandLimit: Int { supportsLBA48 ? 65536 : 256 }

    /// Reads `count` sectors at `lba` into `buffer` (count × 512 bytes).
    public func read(lba: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) throws(ATADriverError) {
        try run(lba: lba, count: count, buffer: buffer, write: false)
    }

    /// Writes `count` sectors at `lba` from `buffer`.
    public func write(lba: UInt64, count: Int, from buffer: UnsafeRawPointer) throws(ATADriverError) {
        try run(lba: lba, count: count, buffer: UnsafeMutableRawPointer(mutating: buffer), write: true)
    }

    private func run(lba: UInt64, count: Int, buffer: UnsafeMutableRawPointer, write: Bool) throws(ATADriverError) {
        guard count >= 0, lba + UInt64(count) <= sectors else { throw .outOfRange }
        if dmaMode != nil, let busMaster {
            var done = 0
            while done < count {
                let n = min(count - done, maximumTransfer)
                let p = buffer + done * 512
                if write { busMaster.buffer.base.copyMemory(from: p, byteCount: n * 512) }
                try dma(busMaster, lba: lba + UInt64(done), count: n, write: write)
                if !write { p.copyMemory(from: busMaster.buffer.base, byteCount: n * 512) }
                done += n
            }
            return
        }
        var done = 0
        while done < count {
            let n = min(count - done, commandLimit)
            let at = lba + UInt64(done)
            let lba48 = supportsLBA48 && (at + UInt64(n) > 0x0FFF_FFFF || n > 256)
            let code: UInt8
            switch (write, multiple > 0, lba48) {
            case (false, true, true): code = ATACommand.readMultipleExt
            case (false, true, false): code = ATACommand.readMultiple
            case (false, false, true): code = ATACommand.readSectorsExt
            case (false, false, false): code = ATACommand.readSectors
            case (true, true, true): code = ATACommand.writeMultipleExt
            case (true, true, false): code = ATACommand.writeMultiple
            case (true, false, true): code = ATACommand.writeSectorsExt
            case (true, false, false): code = ATACommand.writeSectors
            }
            try command(code, lba: at, count: n == 65536 || (n == 256 && !lba48) ? 0 : n, lba48: lba48)
            let block = max(multiple, 1)
            var moved = 0
            while moved < n {
                let sectorsNow = min(block, n - moved)
                let p = buffer + (done + moved) * 512
                if write {
                    if moved == 0 {
                        // The first block of a PIO write is asked for by DRQ alone.
                        var status = io.inb(controlPort)
                        var polls = 0
                        while status & ATAStatus.busy != 0 || status & (ATAStatus.dataRequest | ATAStatus.error) == 0 {
                            polls += 1
                            guard polls < 100_000 else { throw .timeout("DRQ for the first write block") }
                            status = io.inb(controlPort)
                        }
                        if status & ATAStatus.error != 0 { throw .device(status: io.inb(base + 7), error: io.inb(base + 1)) }
                    }
                    writeBlock(from: p, count: sectorsNow * 512)
                    try waitForInterrupt()
                    let status = io.inb(base + 7)
                    if status & ATAStatus.error != 0 { throw .device(status: status, error: io.inb(base + 1)) }
                } else {
                    try waitForInterrupt()
                    let status = io.inb(base + 7)
                    if status & ATAStatus.error != 0 { throw .device(status: status, error: io.inb(base + 1)) }
                    guard status & ATAStatus.dataRequest != 0 else { throw .device(status: status, error: 0) }
                    readBlock(into: p, count: sectorsNow * 512)
                }
                moved += sectorsNow
            }
            done += n
        }
    }

    /// One READ/WRITE DMA (EXT) of `count` sectors through the bounce buffer, in ata_bmdma_qc_issue's
    /// order, then what ata_bmdma_port_intr does when the interrupt comes.
    private func dma(_ bm: ATABusMaster, lba: UInt64, count: Int, write: Bool) throws(ATADriverError) {
        // The PRD table: entries of at most 64 KiB that do not cross a 64 KiB boundary.
        var entries = 0
        var at = 0
        let bytes = count * 512
        while at < bytes {
            let gpa = bm.buffer.gpa + UInt64(at)
            let n = min(bytes - at, 0x10000 - Int(gpa & 0xFFFF))
            let e = bm.table.base + entries * 8
            e.storeBytes(of: UInt32(truncatingIfNeeded: gpa).littleEndian, as: UInt32.self)
            e.storeBytes(of: UInt16(truncatingIfNeeded: n).littleEndian, toByteOffset: 4, as: UInt16.self)
            at += n
            e.storeBytes(of: (at == bytes ? BusMasterBits.endOfTable : 0).littleEndian, toByteOffset: 6, as: UInt16.self)
            entries += 1
        }
        let lba48 = supportsLBA48 && (lba + UInt64(count) > 0x0FFF_FFFF || count > 256)
        let code = write ? (lba48 ? ATACommand.writeDMAExt : ATACommand.writeDMA) : (lba48 ? ATACommand.readDMAExt : ATACommand.readDMA)
        // ata_dev_select (wait idle, device, pause, wait idle)
        _ = io.inb(base + 7)
        io.outb(base + 6, deviceBits)
        _ = io.inb(controlPort)
        _ = io.inb(base + 7)
        // ata_sff_tf_load
        loadTaskFile(lba: lba, count: count, lba48: lba48, feature: 0)
        _ = io.inb(base + 7)
        // ata_bmdma_setup: table, direction (start clear), then the command and a pause
        io.outl(bm.port + 4, UInt32(truncatingIfNeeded: bm.table.gpa))
        let command = io.inb(bm.port) & ~(BusMasterBits.start | BusMasterBits.toMemory)
        io.outb(bm.port, command | (write ? 0 : BusMasterBits.toMemory))
        io.outb(base + 7, code)
        _ = io.inb(controlPort)
        // ata_bmdma_start
        io.outb(bm.port, io.inb(bm.port) | BusMasterBits.start)
        try waitForInterrupt()
        // ata_bmdma_port_intr: bus master status, stop, pause; status; acknowledge the bus master.
        let host = io.inb(bm.port + 2)
        io.outb(bm.port, io.inb(bm.port) & ~BusMasterBits.start)
        _ = io.inb(controlPort)
        _ = io.inb(controlPort)
        let status = io.inb(base + 7)
        io.outb(bm.port + 2, io.inb(bm.port + 2))
        if host & BusMasterBits.error != 0 { throw .busMaster(status: host) }
        guard host & BusMasterBits.interrupt != 0 else { throw .timeout("interrupt without the bus master's") }
        if status & (ATAStatus.error | ATAStatus.deviceFault) != 0 { throw .device(status: status, error: io.inb(base + 1)) }
    }

    /// FLUSH CACHE (EXT).
    public func flush() throws(ATADriverError) {
        try command(supportsLBA48 ? ATACommand.flushCacheExt : ATACommand.flushCache, lba: 0, count: 0, lba48: false)
        try waitForInterrupt()
        let status = io.inb(base + 7)
        if status & ATAStatus.error != 0 { throw .device(status: status, error: io.inb(base + 1)) }
    }
}
