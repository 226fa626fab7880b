// Target "emulated-ports": a generation 1 machine's legacy I/O (ATA channel, NE2000, PCI bus with
// the PIIX4 IDE function and a DEC 21140) driven by a sequence of port accesses, with DMA tables
// and descriptor rings in guest memory and frames arriving from the wire.

import EmulatedDevices
import GuestMemory
import SyntheticNetwork
import SyntheticStorage
import VMBusWire

let emulatedPortsTarget = FuzzTarget(
    name: "emulated-ports",
    summary: "PortIOBus accesses {port, size 1/2/4 (and odd), read/write, value} to ATAController, NE2000, PCIBus/PIIX4 BMIDE, DEC 21140; PRD/descriptor DMA; received frames"
) { data in
    var r = FuzzReader(data)
    EmulatedFuzz.run(&r)
}

/// The legacy I/O of one partition, wired as the host's partition service wires it: the ATA
/// channel and NE2000 at their ISA ports, PCI mechanism #1 with the 440BX, the PIIX4 (ISA bridge
/// and IDE with bus-master DMA) and the DEC 21140 at 00:0a.0.
final class FuzzLegacyMachine {
    static let neMAC: [UInt8] = [0x00, 0x15, 0x5D, 0x00, 0x01, 0x80]
    static let decMAC: [UInt8] = [0x00, 0x15, 0x5D, 0x00, 0x01, 0x81]

    let bus: PortIOBus
    let pci: PCIBus
    let ata: ATAController
    let piix4: PIIX4IDE
    let ne2000: NE2000
    let dec: DEC21140
    let nePort: FuzzFramePort
    let decPort: FuzzFramePort

    init(disks: [(any BlockBackend)?], memory: GuestPhysicalMemory) {
        let bus = PortIOBus()
        let nePort = FuzzFramePort()
        let decPort = FuzzFramePort()
        let ata = ATAController(disks: disks)
        let piix4 = PIIX4IDE(channel: ata)
        let ne2000 = NE2000(base: 0x300, mac: Self.neMAC, port: nePort, line: InterruptLine(irq: 9))
        let dec = DEC21140(mac: Self.decMAC, port: decPort, line: InterruptLine(irq: 11))
        let pci = PCIBus(ports: bus)
        bus.attach(ata)
        bus.attach(ne2000)
        bus.attach(pci)
        pci.attach(i440BXHostBridge(), device: 0, function: 0)
        pci.attach(piix4ISABridge(), device: 7, function: 0)
        pci.attach(piix4, device: 7, function: 1)
        pci.attach(DEC21140Function(chip: dec), device: 10, function: 0)
        bus.reset()
        piix4.busMaster.memory = memory
        dec.memory = memory
        self.bus = bus
        self.pci = pci
        self.ata = ata
        self.piix4 = piix4
        self.ne2000 = ne2000
        self.dec = dec
        self.nePort = nePort
        self.decPort = decPort
    }

    /// Where the 21140's CSRs go when `separate()` moves them: its default BAR (0xC000, 128 ports)
    /// overlaps the PIIX4's bus-master block (0xC040), so only one of the two would decode.
    static let separateDECBase: UInt16 = 0xC100

    /// Moves the 21140's BAR off the PIIX4's bus-master ports, then turns on I/O decoding and bus
    /// mastering for both functions (the order makes the result independent of which BAR won at reset).
    func separate() {
        configWrite(device: 10, function: 0, offset: 0x10, size: 4, value: UInt32(Self.separateDECBase) | 1)
        enableBusMastering()
    }

    /// pci_set_master for the PIIX4 IDE function and the 21140.
    func enableBusMastering() {
        configWrite(device: 7, function: 1, offset: 4, size: 2, value: 0x0005)
        configWrite(device: 10, function: 0, offset: 4, size: 2, value: 0x0005)
    }

    /// A configuration cycle as a guest kernel issues it: CONFIG_ADDRESS, then CONFIG_DATA.
    func configWrite(device: Int, function: Int, offset: Int, size: Int, value: UInt32) {
        bus.write(port: 0xCF8, size: 4, value: 0x8000_0000 | UInt32(device & 31) << 11 | UInt32(function & 7) << 8 | UInt32(offset & 0xFC))
        bus.write(port: 0xCFC + UInt16(offset & 3), size: size, value: value)
    }

    func configRead(device: Int, function: Int, offset: Int, size: Int) -> UInt32 {
        bus.write(port: 0xCF8, size: 4, value: 0x8000_0000 | UInt32(device & 31) << 11 | UInt32(function & 7) << 8 | UInt32(offset & 0xFC))
        return bus.read(port: 0xCFC + UInt16(offset & 3), size: size)
    }
}

enum EmulatedFuzz {
    static let master = FuzzBlockBackend(size: 1 << 20, readOnly: false)
    static let slave = FuzzBlockBackend(size: 64 << 10, readOnly: true)
    static let sizes = [1, 2, 4, 3]

    static func run(_ r: inout FuzzReader) {
        fuzzMemory.reset()
        master.reset()
        slave.reset()
        let setup = r.u8()
        master.failReads = setup & 0x10 != 0
        master.failWrites = setup & 0x20 != 0
        master.failFlush = setup & 0x40 != 0
        let choices: [[(any BlockBackend)?]] = [[master, slave], [master], [nil, slave], []]
        let m = FuzzLegacyMachine(disks: choices[Int(setup & 3)], memory: fuzzMemory.memory)
        // What the guest's drivers do first: bus mastering on for the PIIX4 IDE and the 21140, the
        // 21140 usually moved off the PIIX4's bus-master ports first (as the host lays them out,
        // the two overlap and which one decodes depends on the order the PCI bus resets them).
        switch (setup >> 2) & 3 {
        case 0, 1: m.separate()
        case 2: m.enableBusMastering()
        default: break
        }
        m.nePort.acceptSends = setup & 0x80 == 0
        var steps = 0
        while steps < 512 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            let size = sizes[Int(op >> 4) & 3]
            let write = op & 0x40 != 0
            switch op & 0x0F {
            case 0...7:
                let port = target(m, Int(op & 0x0F), &r)
                if write {
                    m.bus.write(port: port, size: size, value: r.u32())
                } else {
                    fuzzConsume(UInt64(m.bus.read(port: port, size: size)))
                }
            case 8:
                let devices = [0, 7, 10, 3]
                let device = devices[Int(r.u8()) % devices.count]
                let function = Int(r.u8() % 8)
                let offset = Int(r.u8())
                if write {
                    m.configWrite(device: device, function: function, offset: offset, size: size, value: r.u32())
                } else {
                    fuzzConsume(UInt64(m.configRead(device: device, function: function, offset: offset, size: size)))
                }
            case 9:
                let gpa = UInt64(r.u16()) * 8
                fuzzMemory.poke(gpa: gpa, r.blob(limit: 128))
            case 10:
                prdTable(m, &r)
            case 11:
                descriptors(&r)
            case 12:
                frames(m.nePort, &r)
                fuzzConsume(UInt64(m.ne2000.pollReceive() ? 1 : 0) ^ UInt64(m.ne2000.acceptsFrames ? 2 : 0))
            case 13:
                frames(m.decPort, &r)
                fuzzConsume(UInt64(m.dec.pollReceive() ? 1 : 0) ^ UInt64(m.dec.acceptsFrames ? 2 : 0))
            case 14:
                // A disk command with its task file, as a driver loads it.
                let base = ATAController.primaryCommand
                let commands: [UInt8] = [0xEC, 0x20, 0x24, 0x29, 0x30, 0x34, 0x39, 0xC4, 0xC5, 0xC6, 0xC8, 0x25, 0xCA, 0x35, 0xE7, 0xEA, 0xEF, 0x90, 0x91, 0xE5]
                m.bus.write(port: base + 6, size: 1, value: UInt32(0xE0 | (r.u8() & 0x1F)))
                for register in [UInt16(2), 3, 4, 5] { m.bus.write(port: base + register, size: 1, value: UInt32(r.u8())) }
                if write { for register in [UInt16(2), 3, 4, 5] { m.bus.write(port: base + register, size: 1, value: UInt32(r.u8())) } }
                m.bus.write(port: base + 1, size: 1, value: UInt32(r.u8() & 0x0F))
                m.bus.write(port: base + 7, size: 1, value: UInt32(commands[Int(r.u8()) % commands.count]))
            default:
                if write { m.bus.reset() }
                fuzzConsume(m.bus.exits ^ m.bus.unclaimed ^ m.pci.cycles ^ m.pci.misses ^ m.ata.commands ^ m.ata.sectorsRead)
                fuzzConsume(m.piix4.busMaster.transfers ^ m.piix4.busMaster.faults ^ m.dec.busErrors ^ m.ne2000.rxFrames ^ m.dec.rxFrames)
                fuzzConsume(UInt64(m.ata.line.level ? 1 : 0) ^ UInt64(m.ne2000.line.raised) ^ UInt64(m.dec.line.raised))
            }
        }
    }

    /// A port in one of the device blocks (offset from the input), wherever the guest moved the BARs.
    static func target(_ m: FuzzLegacyMachine, _ block: Int, _ r: inout FuzzReader) -> UInt16 {
        let offset = UInt16(r.u8())
        switch block {
        case 0, 1: return ATAController.primaryCommand + (offset & 7)
        case 2: return ATAController.primaryControl
        case 3: return 0x300 + (offset & 0x1F)
        case 4: return 0xCF8 + (offset & 7)
        case 5: return m.piix4.busMaster.base &+ (offset & 0x0F)
        case 6: return m.dec.base &+ (offset & 0x7F)
        default: return UInt16(offset) << 8 | UInt16(r.u8())
        }
    }

    /// A PRD table in guest memory: entries of address, byte count (0 = 64 KiB) and EOT.
    static func prdTable(_ m: FuzzLegacyMachine, _ r: inout FuzzReader) {
        let table = UInt64(r.u16() & 0x7FF8) * 8
        let count = 1 + Int(r.u8() % 8)
        var bytes: [UInt8] = []
        for i in 0..<count {
            let sel = r.u8()
            var entry = [UInt8](repeating: 0, count: 8)
            entry.putLE(sel & 0x80 != 0 ? r.u32() : UInt32(r.u16()) * 8, at: 0)
            entry.putLE(sel & 0x40 != 0 ? r.u16() : UInt16(512 * (1 + Int(sel & 7))), at: 4)
            let last = i == count - 1 ? sel & 0x20 == 0 : sel & 0x10 != 0
            entry.putLE(last ? UInt16(0x8000) : 0, at: 6)
            bytes += entry
        }
        fuzzMemory.poke(gpa: table, bytes)
        if r.bool() {
            // Point the bus master at it and start it (direction from the input).
            let bm = m.piix4.busMaster.base
            m.bus.write(port: bm &+ 4, size: 4, value: UInt32(table))
            m.bus.write(port: bm, size: 1, value: UInt32(r.u8() & 0x09))
        }
    }

    /// 21140 descriptors in guest memory: status (OWN mostly set), control, two buffer addresses.
    static func descriptors(_ r: inout FuzzReader) {
        let at = UInt64(r.u16() & 0x7FFC) * 16
        let count = 1 + Int(r.u8() % 4)
        var bytes: [UInt8] = []
        for _ in 0..<count {
            let sel = r.u8()
            var d = [UInt8](repeating: 0, count: 16)
            d.putLE(sel & 0x80 != 0 ? r.u32() : 0x8000_0000, at: 0)
            d.putLE(sel & 0x40 != 0 ? r.u32() : UInt32(r.u16() & 0x7FF) | 0x6000_0000 | (UInt32(sel & 3) << 24), at: 4)
            d.putLE(UInt32(r.u16()) * 8, at: 8)
            d.putLE(sel & 0x20 != 0 ? r.u32() : UInt32(r.u16()) * 8, at: 12)
            bytes += d
        }
        fuzzMemory.poke(gpa: at, bytes)
    }

    /// Frames from the wire: a virtio header (zeros) and bytes from the input.
    static func frames(_ port: FuzzFramePort, _ r: inout FuzzReader) {
        port.inbound.removeAll()
        for _ in 0..<(1 + Int(r.u8() % 4)) {
            var frame = [UInt8](repeating: 0, count: 10)
            frame += r.blob(limit: 1600)
            port.inbound.append(frame)
        }
    }
}
