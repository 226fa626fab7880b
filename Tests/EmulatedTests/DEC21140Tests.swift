// The emulated DEC 21140A against the guest tulip driver, in memory: serial ROM, frames both ways
// through descriptor rings in guest memory, traps per frame, the filter, and hostile rings.
// (RaisedFlag, SplitMix64, MemoryFramePort and randomFrame come from ATATests.swift and NE2000Tests.swift.)

import EmulatedDevices
import GuestMemory
import Glibc
import SyntheticNetwork
import Testing

let tulipMAC: [UInt8] = [0x00, 0x15, 0x5D, 0x21, 0x14, 0x0A]

/// A PCI bus with the 21140 at 00:0a.0, guest memory, and the driver's DMA window at 1 MiB.
final class TulipRig {
    let memory: GuestPhysicalMemory
    let bus = PortIOBus()
    let pci: PCIBus
    let port = MemoryFramePort()
    let chip: DEC21140
    let io: DirectPortIO
    let flag: RaisedFlag
    var driver: TulipDriver!

    init(bringUp: Bool = true) throws {
        memory = try GuestPhysicalMemory(size: 4 << 20)
        chip = DEC21140(mac: tulipMAC, port: port, line: InterruptLine(irq: 11))
        chip.memory = memory
        pci = PCIBus(ports: bus)
        bus.attach(pci)
        pci.attach(DEC21140Function(chip: chip), device: 10, function: 0)
        bus.reset()
        io = DirectPortIO(bus: bus)
        flag = RaisedFlag(chip.line)
        if bringUp { driver = try up() }
    }

    func up() throws -> TulipDriver {
        let access = PCIConfigAccess(io: io)
        let f = try #require(access.scan().first { $0.vendor == 0x1011 && $0.deviceID == 0x0009 })
        access.enable(f, busMaster: true)
        let base = try #require(access.ioBar(f, 0, span: DEC21140.registerBytes))
        return try TulipDriver(io: io, interrupt: flag, base: base,
                               window: DMAWindow(base: memory.base + (1 << 20), gpa: 1 << 20, size: TulipDriver.windowBytes))
    }

    /// The guest's interrupt path: handler, then the ring drained, then the poll demand if it ran out.
    func drain() -> [[UInt8]] {
        var frames: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: 1536)
        _ = driver.handleInterrupt()
        while let n = buffer.withUnsafeMutableBytes({ driver.receive(into: $0) }) { frames.append(Array(buffer[..<n])) }
        driver.receiveDone()
        return frames
    }

    func transmit(_ frame: [UInt8]) -> Bool { frame.withUnsafeBytes { driver.transmit($0) } }

    func csr(_ n: Int) -> UInt16 { DEC21140Function.defaultBase + UInt16(8 * n) }
}

@Suite("Emulated DEC 21140")
struct DEC21140Tests {
    @Test("CRC-32 known vector; the SROM layout: format 4, one controller, MAC at byte 20, CRC-16 in word 63")
    func vectors() {
        let crc = Array("123456789".utf8).withUnsafeBytes { DEC21140.crcLE($0) }
        #expect(crc ^ 0xFFFF_FFFF == 0xCBF4_3926)
        let rom = SerialROM93C46.tulipSROM(mac: tulipMAC)
        let bytes = rom.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
        #expect(bytes[18] == 4 && bytes[19] == 1 && Array(bytes[20..<26]) == tulipMAC && bytes[27] == 30)
        let sum = bytes[0..<126].withUnsafeBytes { DEC21140.crcLE($0) } ^ 0xFFFF_FFFF
        #expect(rom[63] == UInt16(truncatingIfNeeded: sum))
    }

    @Test("Bring-up as tulip does it: the 6-bit SROM detected and read by bit-banging CSR9, the MAC from it, rings and the setup frame")
    func bringUp() throws {
        let rig = try TulipRig()
        #expect(rig.driver.sromAddressBits == 6)
        #expect(rig.driver.srom == SerialROM93C46.tulipSROM(mac: tulipMAC))
        #expect(rig.driver.mac == tulipMAC)
        #expect(rig.chip.setupFrames == 1)
        // Both processes running; CSR6 reads back what was written (tulip read-modify-writes it).
        let status = rig.io.inl(rig.csr(5))
        #expect(status >> 17 & 7 == 3 && status >> 20 & 7 == 6)
        #expect(rig.io.inl(rig.csr(6)) & (TulipMode.startReceive | TulipMode.startTransmit) == TulipMode.startReceive | TulipMode.startTransmit)
        #expect(rig.port.offload == 0)
    }

    @Test("300 random frames each way, 14…1514 bytes, intact and in order; one trap per frame sent, about three per interrupt pass")
    func frames() throws {
        let rig = try TulipRig()
        _ = rig.drain()
        var rng = SplitMix64(state: 11)
        var sent: [[UInt8]] = []
        let before = rig.bus.exits
        for i in 0..<300 {
            let frame = randomFrame(&rng, size: 14 + Int(rng.next() % 1501), to: [0x00, 0x15, 0x5D, 1, 2, UInt8(i & 0xFF)])
            #expect(rig.transmit(frame))
            sent.append(frame)
        }
        let traps = rig.bus.exits - before
        #expect(rig.port.sent == sent.map { $0.count < 60 ? $0 + [UInt8](repeating: 0, count: 60 - $0.count) : $0 })
        // One CSR1 write each, plus the handler passes the ring-full waits brought (none: the chip is instantaneous).
        #expect(traps == 300, "\(traps) traps for 300 frames")
        _ = rig.drain()
        // Inbound: more than the ring holds, so the chip suspends (RU) and resumes on the poll demand.
        var inbound: [[UInt8]] = []
        for _ in 0..<300 {
            let frame = randomFrame(&rng, size: 14 + Int(rng.next() % 1505), to: rng.next() % 3 == 0 ? [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] : tulipMAC)
            inbound.append(frame)
        }
        rig.port.inbound = inbound
        rig.chip.pollReceive()
        var got: [[UInt8]] = []
        let mark = rig.bus.exits
        var passes = 0
        while got.count < inbound.count && passes < 10 {
            passes += 1
            got += rig.drain()
        }
        let padded = inbound.map { $0.count < 60 ? $0 + [UInt8](repeating: 0, count: 60 - $0.count) : $0 }
        #expect(got == padded)
        #expect(rig.chip.rxFrames == 300 && rig.chip.rxDrops == 0)
        // 128 descriptors: three passes, each CSR5 read, ack, read, and the CSR2 poll demand.
        #expect(passes == 3 && rig.bus.exits - mark <= UInt64(passes * 4), "\(rig.bus.exits - mark) traps in \(passes) passes")
    }

    @Test("The filter: other unicast dropped, broadcast and (with PM) multicast kept; promiscuous; a hash setup frame")
    func filter() throws {
        let rig = try TulipRig()
        _ = rig.drain()
        var rng = SplitMix64(state: 3)
        let other = randomFrame(&rng, size: 100, to: [0x00, 0x15, 0x5D, 9, 9, 9])
        let broadcast = randomFrame(&rng, size: 100, to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        let multicast = randomFrame(&rng, size: 100, to: [0x01, 0x00, 0x5E, 0, 0, 1])
        rig.port.inbound = [other, broadcast, multicast]
        rig.chip.pollReceive()
        #expect(rig.drain() == [broadcast, multicast])
        #expect(rig.chip.rxFiltered == 1)
        // Promiscuous.
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) | TulipMode.promiscuous)
        rig.port.inbound = [other]
        rig.chip.pollReceive()
        #expect(rig.drain() == [other])
        // A hash-only setup frame (FT1|FT0) whose table has the bit of `other`'s destination and nothing else; PM and PR off.
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) & ~(TulipMode.promiscuous | TulipMode.passMulticast))
        let setup = rig.memory.base + 0x3000
        setup.initializeMemory(as: UInt8.self, repeating: 0, count: 192)
        let index = Int(([0x00, 0x15, 0x5D, 9, 9, 9] as [UInt8]).withUnsafeBytes { DEC21140.crcLE($0) } & 0x1FF)
        // Bit `index` of the 512-bit table: longword index/16, bit index%16.
        setup.storeBytes(of: UInt32(1) << UInt32(index % 16), toByteOffset: 4 * (index / 16), as: UInt32.self)
        let d = rig.memory.base + 0x2000
        d.storeBytes(of: (TulipDescriptor.setupPacket | TulipDescriptor.filterType1 | TulipDescriptor.filterType0 | TulipDescriptor.endOfRing | 192).littleEndian, toByteOffset: 4, as: UInt32.self)
        d.storeBytes(of: UInt32(0x3000).littleEndian, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: TulipDescriptor.own.littleEndian, as: UInt32.self)
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) & ~TulipMode.startTransmit)
        rig.io.outl(rig.csr(4), 0x2000)
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) | TulipMode.startTransmit)
        #expect(rig.chip.setupFrames == 2 && rig.io.inl(rig.csr(6)) & TulipMode.filterBits == TulipMode.hashOnly | TulipMode.hashPerfect)
        rig.port.inbound = [other, broadcast]
        rig.chip.pollReceive()
        #expect(rig.drain() == [other])
    }

    /// Points the transmit list at `list` (stopping and restarting the transmit process) and polls.
    func transmitFrom(_ rig: TulipRig, list: UInt32) {
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) & ~TulipMode.startTransmit)
        rig.io.outl(rig.csr(4), list)
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) | TulipMode.startTransmit)
    }

    func descriptor(_ rig: TulipRig, at: Int, status: UInt32, control: UInt32, buffer1: UInt32, buffer2: UInt32) {
        let p = rig.memory.base + at
        p.storeBytes(of: status.littleEndian, as: UInt32.self)
        p.storeBytes(of: control.littleEndian, toByteOffset: 4, as: UInt32.self)
        p.storeBytes(of: buffer1.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: buffer2.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    @Test("Hostile rings: descriptors and buffers outside memory are a fatal bus error; a self-chained ring, an oversize frame, zero-size buffers and bus mastering off stay bounded")
    func hostileRings() throws {
        let rig = try TulipRig()
        _ = rig.drain()
        var rng = SplitMix64(state: 5)
        let fbe = TulipStatus.fatalBusError
        // A transmit list outside guest memory.
        transmitFrom(rig, list: 0xFFFF_FFF0)
        #expect(rig.io.inl(rig.csr(5)) & fbe != 0 && rig.chip.busErrors == 1)
        #expect(rig.io.inl(rig.csr(5)) >> 17 & 0x3F == 0)  // both processes stopped
        // The driver resets the chip and carries on.
        _ = rig.drain()
        #expect(rig.driver.restarts == 1 && rig.transmit([UInt8](repeating: 0xAB, count: 64)))
        // A buffer outside memory.
        descriptor(rig, at: 0x2000, status: TulipDescriptor.own, control: TulipDescriptor.firstSegment | TulipDescriptor.lastSegment | TulipDescriptor.endOfRing | 100,
                   buffer1: 0x7FFF_FF00, buffer2: 0)
        transmitFrom(rig, list: 0x2000)
        #expect(rig.io.inl(rig.csr(5)) & fbe != 0)
        _ = rig.drain()
        // One chained descriptor pointing at itself, owned, no LS: the walk ends at the limit; nothing is sent.
        let sent = rig.port.sent.count
        descriptor(rig, at: 0x2000, status: TulipDescriptor.own, control: TulipDescriptor.chained | TulipDescriptor.firstSegment | 100,
                   buffer1: 0x4000, buffer2: 0x2000)
        transmitFrom(rig, list: 0x2000)
        #expect(rig.port.sent.count == sent)
        // A frame of 1600 bytes over two descriptors: ES|TO on the last, TJT, not sent.
        descriptor(rig, at: 0x2000, status: TulipDescriptor.own, control: TulipDescriptor.firstSegment | 800 | 800 << 11, buffer1: 0x4000, buffer2: 0x5000)
        descriptor(rig, at: 0x2010, status: TulipDescriptor.own, control: TulipDescriptor.lastSegment | TulipDescriptor.endOfRing | 800 | 800 << 11,
                   buffer1: 0x4000, buffer2: 0x5000)
        transmitFrom(rig, list: 0x2000)
        let last = UInt32(littleEndian: (rig.memory.base + 0x2010).load(as: UInt32.self))
        #expect(last == TulipDescriptor.errorSummary | TulipDescriptor.jabberTimeout && rig.port.sent.count == sent)
        #expect(rig.io.inl(rig.csr(5)) & TulipStatus.transmitJabber != 0)
        // Zero-size owned descriptors (tulip's dummy descriptors) are taken and skipped.
        descriptor(rig, at: 0x2000, status: TulipDescriptor.own, control: 0, buffer1: 0, buffer2: 0)
        descriptor(rig, at: 0x2010, status: TulipDescriptor.own, control: TulipDescriptor.firstSegment | TulipDescriptor.lastSegment | TulipDescriptor.endOfRing | 60,
                   buffer1: 0x4000, buffer2: 0)
        transmitFrom(rig, list: 0x2000)
        #expect(rig.port.sent.count == sent + 1 && rig.port.sent.last?.count == 60)
        // Receive descriptors outside memory.
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) & ~TulipMode.startReceive)
        rig.io.outl(rig.csr(3), 0xFFFF_FF00)
        rig.io.outl(rig.csr(6), rig.io.inl(rig.csr(6)) | TulipMode.startReceive)
        rig.port.inbound = [randomFrame(&rng, size: 80, to: tulipMAC)]
        rig.chip.pollReceive()
        #expect(rig.io.inl(rig.csr(5)) & fbe != 0)
        // Bus mastering off: the next poll is a bus error too.
        _ = rig.drain()
        rig.io.outl(0xCF8, 0x8000_5004)
        rig.io.outw(0xCFC, 1)
        #expect(rig.transmit([UInt8](repeating: 1, count: 64)))
        #expect(rig.io.inl(rig.csr(5)) & fbe != 0)
    }

    @Test("A frame handed over in two steps (FS descriptor, poll, then the LS descriptor, poll) goes out whole, as on the chip")
    func frameAcrossPolls() throws {
        let rig = try TulipRig()
        _ = rig.drain()
        let sent = rig.port.sent.count
        for i in 0..<150 { (rig.memory.base + (i < 100 ? 0x4000 + i : 0x5000 + i - 100)).storeBytes(of: UInt8(i), as: UInt8.self) }
        descriptor(rig, at: 0x2000, status: TulipDescriptor.own, control: TulipDescriptor.firstSegment | 100, buffer1: 0x4000, buffer2: 0)
        descriptor(rig, at: 0x2010, status: 0, control: TulipDescriptor.lastSegment | TulipDescriptor.endOfRing | 50, buffer1: 0x5000, buffer2: 0)
        transmitFrom(rig, list: 0x2000)
        #expect(rig.port.sent.count == sent && rig.io.inl(rig.csr(5)) & TulipStatus.transmitUnavailable != 0)
        (rig.memory.base + 0x2010).storeBytes(of: TulipDescriptor.own.littleEndian, as: UInt32.self)
        rig.io.outl(rig.csr(1), 0)
        #expect(rig.port.sent.count == sent + 1 && rig.port.sent.last == (0..<150).map { UInt8($0) })
    }

    @Test("Random CSR writes and random descriptor memory: 100,000 accesses, the host survives and the chip still works after a reset")
    func randomGarbage() throws {
        let rig = try TulipRig()
        var rng = SplitMix64(state: 99)
        for i in 0..<100_000 {
            let r = rng.next()
            let port = rig.csr(0) + UInt16(r % 128)
            if r >> 8 & 1 == 0 {
                _ = rig.io.read(port: port, size: [1, 2, 4][Int((r >> 9) % 3)])
            } else {
                rig.io.write(port: port & ~7, size: 4, value: UInt32(truncatingIfNeeded: r >> 32))
            }
            if i % 500 == 0 {
                // Random descriptors where the rings are, and random frames waiting.
                for k in 0..<1024 { (rig.memory.base + (1 << 20) + 8 * k).storeBytes(of: rng.next(), as: UInt64.self) }
                rig.port.inbound = (0..<4).map { _ in randomFrame(&rng, size: 14 + Int(rng.next() % 1600), to: tulipMAC) }
                rig.chip.pollReceive()
            }
        }
        rig.bus.reset()
        rig.port.inbound = []
        rig.driver = try rig.up()
        _ = rig.drain()
        let frame = [UInt8](repeating: 0x42, count: 200)
        #expect(rig.transmit(frame) && rig.port.sent.last == frame)
        rig.port.inbound = [tulipMAC + [UInt8](repeating: 7, count: 94)]
        rig.chip.pollReceive()
        #expect(rig.drain() == [tulipMAC + [UInt8](repeating: 7, count: 94)])
    }
}

@Suite("Generation 1 PCI layout")
struct Generation1LayoutTests {
    @Test("The 21140's CSRs and the PIIX4's bus-master block both decode at their default BARs (0xC000 overlapped 0xC040: one of them did not)")
    func defaultBarsDoNotOverlap() throws {
        let bus = PortIOBus()
        let pci = PCIBus(ports: bus)
        bus.attach(pci)
        let chip = DEC21140(mac: tulipMAC, port: MemoryFramePort(), line: InterruptLine(irq: 11))
        let ide = PIIX4IDE(channel: ATAController(disks: [nil]))
        pci.attach(piix4ISABridge(), device: 7, function: 0)
        pci.attach(ide, device: 7, function: 1)
        pci.attach(DEC21140Function(chip: chip), device: 10, function: 0)
        bus.reset()
        let io = DirectPortIO(bus: bus)
        let access = PCIConfigAccess(io: io)
        let functions = access.scan()
        let dec = try #require(functions.first { $0.vendor == 0x1011 })
        let piix = try #require(functions.first { $0.vendor == 0x8086 && $0.deviceID == 0x7111 })
        let csrs = try #require(access.ioBar(dec, 0, span: DEC21140.registerBytes))
        let busMaster = try #require(access.ioBar(piix, 4, span: 16))
        #expect(csrs + UInt16(DEC21140.registerBytes) <= busMaster || busMaster + 16 <= csrs, "CSRs \(csrs), BMIDE \(busMaster)")
        access.enable(dec, busMaster: true)
        access.enable(piix, busMaster: true)
        // Both answer: CSR5 (status) reads the chip's state, BMIDE status its drive-capable bits.
        #expect(bus.read(port: csrs + 0x28, size: 4) != UInt32.max, "CSR5 floats")
        bus.write(port: busMaster + 2, size: 1, value: 0x20)
        #expect(bus.read(port: busMaster + 2, size: 1) & 0x20 == 0x20, "BMIDE status floats")
    }
}
