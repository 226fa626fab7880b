// The PCI bus and the PIIX4 IDE function with bus-master DMA, in memory: the guest's scan, BAR
// sizing and moves, DMA transfers through PRD tables, traps per command, and hostile tables.
// (RaisedFlag, ScratchImage and SplitMix64 come from ATATests.swift.)

import EmulatedDevices
import Foundation
import GuestMemory
import SyntheticStorage
import Testing

/// A generation 1 machine's PCI bus with the PIIX4 in front of one IDE disk, guest memory, and DMA windows in it.
final class PIIX4Rig {
    let memory: GuestPhysicalMemory
    let bus = PortIOBus()
    let pci: PCIBus
    let controller: ATAController
    let piix4: PIIX4IDE
    let io: DirectPortIO
    let flag: RaisedFlag

    init(_ image: ScratchImage, memoryMiB: Int = 4) throws {
        memory = try GuestPhysicalMemory(size: memoryMiB << 20)
        controller = ATAController(disks: [image.backend])
        piix4 = PIIX4IDE(channel: controller)
        piix4.busMaster.memory = memory
        pci = PCIBus(ports: bus)
        bus.attach(controller)
        bus.attach(pci)
        pci.attach(i440BXHostBridge(), device: 0, function: 0)
        pci.attach(piix4ISABridge(), device: 7, function: 0)
        pci.attach(piix4, device: 7, function: 1)
        bus.reset()
        io = DirectPortIO(bus: bus)
        flag = RaisedFlag(controller.line)
    }

    /// A window of guest memory at `offset`.
    func window(_ offset: Int, _ size: Int) -> DMAWindow { DMAWindow(base: memory.base + offset, gpa: UInt64(offset), size: size) }

    /// The guest's bring-up: scan, enable, and a driver with the bus master (PRD page at 64 KiB, buffer at 1 MiB).
    func driver() throws -> ATADriver {
        let access = PCIConfigAccess(io: io)
        let f = try #require(access.scan().first { $0.vendor == 0x8086 && $0.deviceID == 0x7111 })
        access.enable(f, busMaster: true)
        let port = try #require(access.ioBar(f, 4, span: 16))
        return try ATADriver(io: io, interrupt: flag, busMaster: ATABusMaster(port: port, table: window(0x10000, 4096), buffer: window(1 << 20, 1 << 20)))
    }
}

@Suite("PCI bus and PIIX4 bus-master IDE")
struct PIIX4Tests {
    @Test("The guest's scan finds 440BX, the PIIX4 ISA bridge (multi-function) and IDE function; absent slots read all ones")
    func scan() throws {
        let image = try ScratchImage(mib: 8)
        let rig = try PIIX4Rig(image)
        let access = PCIConfigAccess(io: rig.io)
        let found = access.scan()
        #expect(found.map(\.description) == ["00:00.0", "00:07.0", "00:07.1"])
        #expect(found.map { [$0.vendor, $0.deviceID] } == [[0x8086, 0x7192], [0x8086, 0x7110], [0x8086, 0x7111]])
        let ide = found[2]
        #expect(access.read(ide, PCIConfig.progIF, size: 1) == 0x80 && access.read(ide, PCIConfig.subclass, size: 2) == 0x0101)
        // IDETIM: the primary channel decodes, the secondary does not (what ata_piix's prereset checks).
        #expect(access.read(ide, 0x41, size: 1) & 0x80 != 0 && access.read(ide, 0x43, size: 1) & 0x80 == 0)
        let absent = PCIFunctionAddress(device: 3, function: 0, vendor: 0, deviceID: 0)
        #expect(access.read(absent, 0, size: 4) == 0xFFFF_FFFF)
        // Read-only header fields stay.
        access.write(ide, PCIConfig.vendorID, size: 4, value: 0x1234_5678)
        #expect(access.read(ide, PCIConfig.vendorID, size: 4) == 0x7111_8086)
        // Byte accesses to 0xCF8 are not CONFIG_ADDRESS; CONFIG_ADDRESS without the enable bit selects nothing.
        rig.io.outb(0xCF8, 0)
        #expect(rig.pci.address & PCIConfig.enable != 0)
        rig.io.outl(0xCF8, 0x0000_3900)
        #expect(rig.io.inl(0xCFC) == 0xFFFF_FFFF)
        // Another bus reads as empty.
        rig.io.outl(0xCF8, 0x8001_0000)
        #expect(rig.io.inl(0xCFC) == 0xFFFF_FFFF)
    }

    @Test("BAR 4 answers the sizing probe, moves where the guest puts it and stops decoding with I/O space off")
    func barMoves() throws {
        let image = try ScratchImage(mib: 8)
        let rig = try PIIX4Rig(image)
        let access = PCIConfigAccess(io: rig.io)
        let ide = try #require(access.scan().last)
        #expect(access.ioBar(ide, 4, span: 16) == PIIX4IDE.defaultBusMasterBase)
        access.write(ide, 0x20, size: 4, value: 0xFFFF_FFFF)
        #expect(access.read(ide, 0x20, size: 4) == 0x0000_FFF1)  // 16 ports, I/O
        access.write(ide, 0x20, size: 4, value: 0xD001)
        #expect(access.ioBar(ide, 4, span: 16) == 0xD000)
        // A BAR whose ports would run past 0xFFFF (a hostile host's value) is not handed to a driver.
        access.write(ide, 0x20, size: 4, value: 0xFFF5)
        #expect(access.ioBar(ide, 4, span: 16) == 0xFFF0 && access.ioBar(ide, 4, span: 17) == nil)
        access.write(ide, 0x20, size: 4, value: 0xD001)
        rig.io.outl(0xD004, 0x0001_2344)
        #expect(rig.io.inl(0xD004) == 0x0001_2344)  // the PRD pointer, bits 1–0 zero
        #expect(rig.io.inl(PIIX4IDE.defaultBusMasterBase + 4) == 0xFFFF_FFFF)  // the old place floats
        access.write(ide, PCIConfig.command, size: 2, value: 0)
        #expect(rig.io.inl(0xD004) == 0xFFFF_FFFF)
        // A BAR moved onto the ATA ports would steal them: it is left undecoded instead.
        access.write(ide, PCIConfig.command, size: 2, value: 1)
        access.write(ide, 0x20, size: 4, value: 0x1F1)
        rig.io.outb(0x1F2, 0x5A)
        #expect(rig.io.inb(0x1F2) == 0x5A)  // the sector count register, not the BMIDE status
        #expect(rig.bus.remap(rig.piix4.busMaster, to: [0x1F0...0x1FF]) == false)
    }

    @Test("DMA: UDMA2 chosen as ata_piix would; 3000 random sectors out and back through PRD tables, one interrupt and 26 traps per LBA28 command")
    func roundTrip() throws {
        let image = try ScratchImage(mib: 16)
        let rig = try PIIX4Rig(image)
        let driver = try rig.driver()
        #expect(driver.dmaMode == 0x42)
        var rng = SplitMix64(state: 21)
        var data = [UInt8](repeating: 0, count: 3000 * 512)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: rng.next()) }
        let commandsBefore = rig.controller.dmaCommands
        try data.withUnsafeBytes { try driver.write(lba: 100, count: 3000, from: $0.baseAddress!) }
        // 3000 sectors in 1 MiB commands: 2048 + 952, each in one LBA48 command (more than 256 sectors).
        #expect(rig.controller.dmaCommands - commandsBefore == 2)
        var back = [UInt8](repeating: 0, count: data.count)
        try back.withUnsafeMutableBytes { try driver.read(lba: 100, count: 3000, into: $0.baseAddress!) }
        #expect(back == data)
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: image.path))
        #expect(Array(onDisk[(100 * 512)..<(3100 * 512)]) == data)
        // Traps and interrupts of one 8-sector read (LBA28): ata_bmdma's 18 to issue, 8 in the handler.
        let exits = rig.bus.exits, raised = rig.controller.line.raised
        try back.withUnsafeMutableBytes { try driver.read(lba: 7, count: 8, into: $0.baseAddress!) }
        #expect(rig.bus.exits - exits == 26)
        #expect(rig.controller.line.raised - raised == 1)
        #expect(Array(back[0..<4096]) == Array(onDisk[(7 * 512)..<(15 * 512)]))
        #expect(rig.piix4.busMaster.faults == 0)
    }

    @Test("An ISA channel (no PIIX4) offers no DMA: IDENTIFY word 49 bit 8 clear, READ DMA aborted, the driver uses PIO")
    func isaHasNoDMA() throws {
        let image = try ScratchImage(mib: 8)
        let (bus, controller, driver) = try ataRig(image)
        #expect(driver.dmaMode == nil)
        let io = DirectPortIO(bus: bus)
        io.outb(0x1F6, 0xE0)
        io.outb(0x1F2, 1)
        io.outb(0x1F7, ATACommand.readDMA)
        #expect(io.inb(0x1F7) & ATAStatus.error != 0 && io.inb(0x1F1) & ATAError.abort != 0)
        _ = controller
    }

    /// Issues READ DMA of `count` sectors at LBA 0 with the PRD table at `table`, starts the bus master, returns (BM status, ATA status).
    func rawRead(_ rig: PIIX4Rig, table: UInt32, count: UInt8 = 8, start: Bool = true) -> (UInt8, UInt8) {
        let bm = PIIX4IDE.defaultBusMasterBase
        rig.io.outl(bm + 4, table)
        rig.io.outb(bm, BusMasterBits.toMemory)
        rig.io.outb(bm + 2, BusMasterBits.error | BusMasterBits.interrupt | BusMasterBits.drive0Capable)
        rig.io.outb(0x1F6, 0xE0)
        rig.io.outb(0x1F2, count)
        rig.io.outb(0x1F3, 0); rig.io.outb(0x1F4, 0); rig.io.outb(0x1F5, 0)
        rig.io.outb(0x1F7, ATACommand.readDMA)
        if start { rig.io.outb(bm, BusMasterBits.toMemory | BusMasterBits.start) }
        let status = rig.io.inb(bm + 2)
        rig.io.outb(bm, BusMasterBits.toMemory)
        return (status, rig.io.inb(0x1F7))
    }

    /// Writes a PRD entry at guest address `at`.
    func entry(_ rig: PIIX4Rig, at: Int, address: UInt32, count: UInt16, last: Bool) {
        let p = rig.memory.base + at
        p.storeBytes(of: address.littleEndian, as: UInt32.self)
        p.storeBytes(of: count.littleEndian, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: (last ? UInt16(0x8000) : 0).littleEndian, toByteOffset: 6, as: UInt16.self)
    }

    @Test("Hostile PRD tables — outside memory, unterminated, short, zero-length (64 KiB), bus mastering off, wrong direction — end in ERR and ABRT, never a fault")
    func hostileTables() throws {
        let image = try ScratchImage(mib: 8)
        let rig = try PIIX4Rig(image)
        PCIConfigAccess(io: rig.io).enable(PCIFunctionAddress(device: 7, function: 1, vendor: 0, deviceID: 0), busMaster: true)
        let failed = BusMasterBits.error | BusMasterBits.interrupt
        // The table itself outside memory (4 MiB of it).
        var (bm, ata) = rawRead(rig, table: 0xFFFF_FFF8)
        #expect(bm & failed == failed && ata & ATAStatus.error != 0)
        #expect(rig.piix4.busMaster.lastFault == .outsideMemory(gpa: 0xFFFF_FFF8))
        // An entry pointing past the end of memory.
        entry(rig, at: 0x1000, address: 0x3FFF_F000, count: 4096, last: true)
        (bm, ata) = rawRead(rig, table: 0x1000)
        #expect(bm & failed == failed && ata & ATAStatus.error != 0)
        // Entries straddling the end: in memory but running over it.
        entry(rig, at: 0x1000, address: UInt32((4 << 20) - 512), count: 4096, last: true)
        (bm, _) = rawRead(rig, table: 0x1000)
        #expect(bm & failed == failed)
        // No EOT anywhere in the 64 KiB block: the walk stops at the block's end.
        for i in 0..<8192 { entry(rig, at: 0x20000 + 8 * i, address: 0x80000, count: 0, last: false) }
        (bm, _) = rawRead(rig, table: 0x20000, count: 0)  // 256 sectors = 128 KiB: two 64 KiB entries suffice…
        #expect(bm & failed == BusMasterBits.interrupt)    // …so it completes, table longer than the transfer: still active
        #expect(bm & BusMasterBits.active != 0)
        (bm, _) = rawRead(rig, table: 0x2FFF8)  // one entry left before the block ends, without EOT, 8 sectors: fits
        #expect(bm & BusMasterBits.error == 0)
        entry(rig, at: 0x2FFF8, address: 0x80000, count: 512, last: false)
        (bm, _) = rawRead(rig, table: 0x2FFF8)  // 512 bytes then the block ends: unterminated
        #expect(bm & failed == failed && rig.piix4.busMaster.lastFault == .tableUnterminated)
        // A table shorter than the transfer.
        entry(rig, at: 0x1000, address: 0x80000, count: 1024, last: true)
        (bm, ata) = rawRead(rig, table: 0x1000)
        #expect(bm & failed == failed && ata & ATAStatus.error != 0 && rig.piix4.busMaster.lastFault == .tableTooShort(bytes: 1024))
        // Exact table: done, active cleared, the data in memory.
        entry(rig, at: 0x1000, address: 0x80000, count: 4096, last: true)
        (bm, ata) = rawRead(rig, table: 0x1000)
        #expect(bm == BusMasterBits.interrupt | BusMasterBits.drive0Capable && ata & ATAStatus.error == 0)
        // The wrong direction for the command.
        rig.io.outb(PIIX4IDE.defaultBusMasterBase + 2, failed)
        rig.io.outl(PIIX4IDE.defaultBusMasterBase + 4, 0x1000)
        rig.io.outb(0x1F2, 8)
        rig.io.outb(0x1F7, ATACommand.writeDMA)
        rig.io.outb(PIIX4IDE.defaultBusMasterBase, BusMasterBits.toMemory | BusMasterBits.start)
        #expect(rig.io.inb(PIIX4IDE.defaultBusMasterBase + 2) & failed == failed && rig.piix4.busMaster.lastFault == .wrongDirection)
        rig.io.outb(PIIX4IDE.defaultBusMasterBase, 0)
        // Start without a command: nothing moves; the command afterwards runs at once.
        rig.io.outb(PIIX4IDE.defaultBusMasterBase + 2, failed)
        rig.io.outb(PIIX4IDE.defaultBusMasterBase, BusMasterBits.toMemory | BusMasterBits.start)
        #expect(rig.io.inb(PIIX4IDE.defaultBusMasterBase + 2) & BusMasterBits.interrupt == 0)
        rig.io.outb(0x1F2, 8)
        rig.io.outb(0x1F7, ATACommand.readDMA)
        #expect(rig.io.inb(PIIX4IDE.defaultBusMasterBase + 2) & failed == BusMasterBits.interrupt)
        rig.io.outb(PIIX4IDE.defaultBusMasterBase, 0)
        // Bus mastering off in the PCI command register.
        rig.io.outl(0xCF8, 0x8000_3904)
        rig.io.outw(0xCFC, 1)
        (bm, _) = rawRead(rig, table: 0x1000)
        #expect(bm & failed == failed && rig.piix4.busMaster.lastFault == .busMasterDisabled)
        // Without guest memory (no guest attached).
        rig.io.outw(0xCFC, 5)
        rig.piix4.busMaster.memory = nil
        (bm, _) = rawRead(rig, table: 0x1000)
        #expect(bm & failed == failed && rig.piix4.busMaster.lastFault == .noMemory)
    }

    @Test("Random register and PRD garbage: 200,000 accesses to the task file, BMIDE and PCI configuration, random tables; the host survives and the disk still works")
    func randomGarbage() throws {
        let image = try ScratchImage(mib: 8)
        let rig = try PIIX4Rig(image)
        var rng = SplitMix64(state: 7)
        let ports: [UInt16] = Array(0x1F0...0x1F7) + [0x3F6] + Array(0xC040...0xC04F) + Array(0xCF8...0xCFF)
        for i in 0..<200_000 {
            let r = rng.next()
            let port = ports[Int(r % UInt64(ports.count))]
            let size = [1, 2, 4][Int((r >> 8) % 3)]
            if r >> 20 & 1 == 0 {
                _ = rig.io.read(port: port, size: size)
            } else {
                rig.io.write(port: port, size: size, value: UInt32(truncatingIfNeeded: r >> 24))
            }
            if i % 1000 == 0 {
                // Random PRD tables in the first 64 KiB of guest memory.
                for k in 0..<8192 { (rig.memory.base + 8 * k).storeBytes(of: rng.next(), as: UInt64.self) }
            }
        }
        rig.bus.reset()
        let driver = try rig.driver()
        var data = [UInt8](repeating: 0xA5, count: 64 * 512)
        try data.withUnsafeBytes { try driver.write(lba: 0, count: 64, from: $0.baseAddress!) }
        data = [UInt8](repeating: 0, count: data.count)
        try data.withUnsafeMutableBytes { try driver.read(lba: 0, count: 64, into: $0.baseAddress!) }
        #expect(data.allSatisfy { $0 == 0xA5 })
    }
}
