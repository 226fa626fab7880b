// The emulated NE2000 against the guest driver, in memory: PROM, frames both ways through the ring, traps, bad sequences.
// (RaisedFlag and SplitMix64 come from ATATests.swift.)

import EmulatedDevices
import Glibc
import SyntheticNetwork
import Testing

/// A FramePort in memory: records what the card sends, hands it queued frames.
final class MemoryFramePort: FramePort {
    var sent: [[UInt8]] = []
    var sentHeaders: [[UInt8]] = []
    var inbound: [[UInt8]] = []
    var offload: UInt32 = 0xFFFF
    let descriptor: Int32 = -1

    func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool {
        var bytes: [UInt8] = []
        for v in iov where v.iov_len > 0 { bytes += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) }
        sentHeaders.append(Array(bytes[..<VirtioNetHeader.size]))
        sent.append(Array(bytes[VirtioNetHeader.size...]))
        return true
    }

    func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? {
        guard !inbound.isEmpty else { return nil }
        let bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size) + inbound.removeFirst()
        var at = 0
        for v in iov where at < bytes.count {
            let n = min(v.iov_len, bytes.count - at)
            bytes.withUnsafeBytes { v.iov_base!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
            at += n
        }
        return at
    }

    func setOffload(_ flags: UInt32) { offload = flags }
    func setCarrier(_ on: Bool) {}
}

let cardMAC: [UInt8] = [0x00, 0x15, 0x5D, 0x33, 0x44, 0x55]

/// A bus with one NE2000 at 0x300 and a driver that brought it up.
final class NE2000Rig {
    let bus = PortIOBus()
    let port = MemoryFramePort()
    let nic: NE2000
    let flag: RaisedFlag
    let io: DirectPortIO
    var driver: NE2000Driver

    init() throws {
        nic = NE2000(mac: cardMAC, port: port, line: InterruptLine(irq: 3))
        bus.attach(nic)
        flag = RaisedFlag(nic.line)
        io = DirectPortIO(bus: bus)
        driver = try NE2000Driver(io: io, interrupt: flag)
    }

    /// The guest's interrupt path: acknowledge, then drain the ring.
    func drain() -> [[UInt8]] {
        var frames: [[UInt8]] = []
        var buffer = [UInt8](repeating: 0, count: NE2000Driver.maximumFrame)
        _ = driver.handleInterrupt()
        while let n = buffer.withUnsafeMutableBytes({ driver.receive(into: $0) }) { frames.append(Array(buffer[..<n])) }
        return frames
    }

    func transmit(_ frame: [UInt8]) -> Bool { frame.withUnsafeBytes { driver.transmit($0) } }
}

/// A frame of `size` bytes: destination, our source, an EtherType, then random bytes.
func randomFrame(_ rng: inout SplitMix64, size: Int, to destination: [UInt8]) -> [UInt8] {
    var f = destination + [0x00, 0x15, 0x5D, 0x99, 0x88, 0x77, 0x08, 0x00]
    while f.count < size { f.append(UInt8(truncatingIfNeeded: rng.next())) }
    return f
}

@Suite("Emulated NE2000")
struct NE2000Tests {
    @Test("Bring-up: the driver reads the MAC from the PROM, programs PAR and starts the card")
    func bringUp() throws {
        let rig = try NE2000Rig()
        #expect(rig.driver.mac == cardMAC)
        #expect(rig.port.offload == 0)
        let io = rig.io
        // The PROM byte-wide: every byte twice, "WW" at logical bytes 14/15.
        io.outb(0x30E, 0x48)  // DCR byte-wide
        io.outb(0x30A, 32); io.outb(0x30B, 0)
        io.outb(0x308, 0); io.outb(0x309, 0)
        io.outb(0x300, NE2000Command.remoteRead | NE2000Command.start)
        let prom = (0..<32).map { _ in io.inb(0x310) }
        #expect(Array(prom[0..<12]) == cardMAC.flatMap { [$0, $0] } && Array(prom[28..<32]) == [0x57, 0x57, 0x57, 0x57])
        #expect(io.inb(0x307) & NE2000Interrupt.remoteDMAComplete != 0)
        #expect(io.inb(0x310) == 0xFF)  // count exhausted: nothing more
        io.outb(0x307, 0xFF)
        io.outb(0x30E, 0x49)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page1)
        #expect((1...6).map { io.inb(0x300 + UInt16($0)) } == cardMAC && io.inb(0x307) == NE2000Driver.receiveStart)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page2)
        #expect(io.inb(0x301) == 0x46 && io.inb(0x302) == 0x80 && io.inb(0x30C) == 0x0C && io.inb(0x30F) == NE2000Interrupt.all)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page0)
        #expect(io.inb(0x300) & NE2000Command.start != 0 && !rig.nic.line.level)
    }

    @Test("500 frames each way of 60…1514 bytes arrive intact; the ring wraps; traps per frame")
    func frames() throws {
        let rig = try NE2000Rig()
        var rng = SplitMix64(state: 11)
        // Guest → port.
        var sentFrames: [[UInt8]] = []
        let txMark = rig.bus.exits
        for _ in 0..<500 {
            let frame = randomFrame(&rng, size: 60 + Int(rng.next() % 1455), to: [0x00, 0x15, 0x5D, 0x01, 0x02, 0x03])
            #expect(rig.transmit(frame))
            sentFrames.append(frame)
        }
        let txTraps = rig.bus.exits - txMark
        #expect(rig.port.sent == sentFrames && rig.nic.txFrames == 500)
        #expect(rig.port.sentHeaders.allSatisfy { $0.allSatisfy { $0 == 0 } })
        // Port → guest, in bursts of 1–24 so the ring fills and the card holds frames back.
        var inbound: [[UInt8]] = []
        for i in 0..<500 {
            let to = i % 7 == 0 ? [UInt8](repeating: 0xFF, count: 6) : cardMAC
            inbound.append(randomFrame(&rng, size: 60 + Int(rng.next() % 1455), to: to))
        }
        let bytes = inbound.reduce(0) { $0 + $1.count }
        #expect(bytes > 16 * 1024 * 4)
        var received: [[UInt8]] = []
        var next = 0
        let rxMark = rig.bus.exits
        let raisedBefore = rig.nic.line.raised
        while received.count < 500 {
            let burst = min(1 + Int(rng.next() % 24), 500 - next)
            rig.port.inbound += inbound[next..<(next + burst)]
            next += burst
            rig.nic.pollReceive()
            #expect(rig.nic.line.level)  // PRX pending and unmasked
            _ = rig.flag.wait(timeoutMs: 0)
            let got = rig.drain()
            received += got
            guard !got.isEmpty || next < 500 else { break }
            #expect(rig.port.inbound.isEmpty)  // every BNRY move let the waiting frames in
        }
        let rxTraps = rig.bus.exits - rxMark
        #expect(received == inbound)
        #expect(rig.nic.rxFrames == 500 && rig.nic.rxDrops == 0 && rig.driver.rxErrors == 0)
        #expect(rig.nic.line.raised > raisedBefore)
        print("NE2000 traps per frame (500, 60…1514 bytes): transmit \(Double(txTraps) / 500), receive \(Double(rxTraps) / 500)")

        // Full-size frames, one at a time: the cost of one 1514-byte frame each way.
        let big = randomFrame(&rng, size: 1514, to: cardMAC)
        let t0 = rig.bus.exits
        for _ in 0..<20 { #expect(rig.transmit(big)) }
        let perTransmit = Double(rig.bus.exits - t0) / 20
        let r0 = rig.bus.exits
        for _ in 0..<20 {
            rig.port.inbound.append(big)
            rig.nic.pollReceive()
            #expect(rig.drain() == [big])
        }
        let perReceive = Double(rig.bus.exits - r0) / 20
        print("NE2000 traps per 1514-byte frame: transmit \(perTransmit), receive \(perReceive) (757 are data words)")
        #expect(perTransmit >= 757 && perTransmit < 800)
        #expect(perReceive >= 757 && perReceive < 800)
    }

    @Test("Address filter: other unicast dropped, multicast by MAR, promiscuous takes all; short frames padded")
    func filter() throws {
        let rig = try NE2000Rig()
        var rng = SplitMix64(state: 5)
        let other = randomFrame(&rng, size: 100, to: [0x00, 0x15, 0x5D, 0x00, 0x00, 0x01])
        let multicast = randomFrame(&rng, size: 80, to: [0x01, 0x00, 0x5E, 0x00, 0x00, 0x01])
        let short = randomFrame(&rng, size: 20, to: cardMAC)
        let jumbo = randomFrame(&rng, size: 1600, to: cardMAC)
        rig.port.inbound = [other, multicast, short, jumbo]
        #expect(rig.nic.pollReceive())
        #expect(rig.drain() == [multicast, short + [UInt8](repeating: 0, count: 40)])
        #expect(rig.nic.rxFiltered == 1 && rig.nic.rxDrops == 1)
        // MAR cleared: the multicast frame no longer passes; RCR.PRO takes everything.
        rig.io.outb(0x300, NE2000Command.noDMA | NE2000Command.page1)
        for i in 0..<8 { rig.io.outb(0x308 + UInt16(i), 0) }
        rig.io.outb(0x300, NE2000Command.noDMA | NE2000Command.page0)
        rig.port.inbound = [multicast]
        rig.nic.pollReceive()
        #expect(rig.drain().isEmpty && rig.nic.rxFiltered == 2)
        rig.io.outb(0x30C, NE2000Bits.promiscuous)
        rig.port.inbound = [other, multicast]
        rig.nic.pollReceive()
        #expect(rig.drain() == [other, multicast])
    }

    @Test("Malformed sequences: aborts, DMA past memory, stray pointers, 100k random accesses; then a driver re-init works")
    func hostileRegisters() throws {
        let rig = try NE2000Rig()
        let io = rig.io
        // Transmit with TBCR 0 and TBCR 2000: aborted.
        for count in [0, 2000] {
            io.outb(0x305, UInt8(count & 0xFF)); io.outb(0x306, UInt8(count >> 8))
            io.outb(0x300, NE2000Command.noDMA | NE2000Command.transmit | NE2000Command.start)
            #expect(io.inb(0x307) & NE2000Interrupt.transmitError != 0 && io.inb(0x304) & NE2000Bits.transmitAborted != 0)
            io.outb(0x307, 0xFF)
        }
        #expect(rig.port.sent.isEmpty && rig.nic.line.level == false)
        // Byte-wide remote DMA: past 0xFFFF the address wraps to the PROM; nothing lives at 0xFFFF.
        io.outb(0x30E, 0x48)
        func remote(_ command: UInt8, at address: UInt16, count: UInt8) {
            io.outb(0x30A, count); io.outb(0x30B, 0)
            io.outb(0x308, UInt8(address & 0xFF)); io.outb(0x309, UInt8(address >> 8))
            io.outb(0x300, command | NE2000Command.start)
        }
        remote(NE2000Command.remoteRead, at: 0xFFFF, count: 6)
        #expect((0..<6).map { _ in io.inb(0x310) } == [0xFF, 0x00, 0x00, 0x15, 0x15, 0x5D])
        #expect(io.inb(0x307) & NE2000Interrupt.remoteDMAComplete != 0)
        // At PSTOP the remote DMA wraps to PSTART, as the chip's does.
        remote(NE2000Command.remoteWrite, at: 0x7FFF, count: 2)
        io.outb(0x310, 0xAB); io.outb(0x310, 0xCD)
        remote(NE2000Command.remoteRead, at: 0x4600, count: 1)
        #expect(io.inb(0x310) == 0xCD)
        // The PROM is read-only.
        remote(NE2000Command.remoteWrite, at: 0x0000, count: 1)
        io.outb(0x310, 0x12)
        remote(NE2000Command.remoteRead, at: 0x0000, count: 1)
        #expect(io.inb(0x310) == cardMAC[0])
        // Unimplemented registers read 0xFF; the data port with no DMA running reads all ones.
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page2)
        #expect(io.inb(0x30A) == 0xFF && io.inb(0x303) == 0xFF)
        io.outb(0x300, NE2000Command.noDMA | 0xC0)
        #expect(io.inb(0x305) == 0xFF)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page0)
        #expect(io.inw(0x310) == 0xFFFF)
        // CURR and BNRY outside the ring, then a ring too small for any frame.
        var rng = SplitMix64(state: 77)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page1)
        io.outb(0x307, 0xF0)
        io.outb(0x300, NE2000Command.noDMA | NE2000Command.page0)
        io.outb(0x303, 0x10)
        rig.port.inbound = [randomFrame(&rng, size: 1514, to: cardMAC)]
        rig.nic.pollReceive()
        io.outb(0x301, 0x50); io.outb(0x302, 0x51)
        rig.port.inbound = [randomFrame(&rng, size: 200, to: cardMAC)]
        rig.nic.pollReceive()
        io.outb(0x301, 0x60); io.outb(0x302, 0x20)  // PSTART > PSTOP
        rig.port.inbound = [randomFrame(&rng, size: 200, to: cardMAC)]
        #expect(!rig.nic.pollReceive())
        // 100k random accesses over the whole window, with frames arriving now and then.
        for i in 0..<100_000 {
            let port = UInt16(0x300 + rng.next() % 0x20)
            let size = [1, 2, 4][Int(rng.next() % 3)]
            if rng.next() % 2 == 0 {
                _ = io.read(port: port, size: size)
            } else {
                io.write(port: port, size: size, value: UInt32(truncatingIfNeeded: rng.next()))
            }
            if i % 500 == 0 {
                rig.port.inbound.append(randomFrame(&rng, size: 14 + Int(rng.next() % 1600), to: i % 1000 == 0 ? cardMAC : [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]))
                rig.nic.pollReceive()
            }
        }
        // A fresh driver brings the card back: MAC, then a frame each way.
        rig.port.inbound.removeAll()
        rig.driver = try NE2000Driver(io: io, interrupt: rig.flag)
        #expect(rig.driver.mac == cardMAC)
        _ = rig.drain()  // a frame the card held through the chaos, if any
        let out = randomFrame(&rng, size: 600, to: [0x00, 0x15, 0x5D, 0x01, 0x02, 0x03])
        let sentBefore = rig.port.sent.count
        #expect(rig.transmit(out) && rig.port.sent.count == sentBefore + 1 && rig.port.sent.last == out)
        let inFrame = randomFrame(&rng, size: 900, to: cardMAC)
        rig.port.inbound = [inFrame]
        rig.nic.pollReceive()
        #expect(rig.drain() == [inFrame])
    }

    @Test("A corrupt ring header makes the driver reset the ring, as lib8390 does")
    func corruptHeader() throws {
        let rig = try NE2000Rig()
        var rng = SplitMix64(state: 3)
        rig.port.inbound = [randomFrame(&rng, size: 300, to: cardMAC)]
        rig.nic.pollReceive()
        // Overwrite the header's next-page byte at 0x4601 by remote DMA.
        let io = rig.io
        io.outb(0x30A, 2); io.outb(0x30B, 0)
        io.outb(0x308, 0x00); io.outb(0x309, 0x46)
        io.outb(0x300, NE2000Command.remoteWrite | NE2000Command.start)
        io.outw(0x310, 0x7001)  // status OK, next page 0x70
        io.outb(0x307, 0xFF)
        #expect(rig.drain().isEmpty && rig.driver.ringResets == 1)
        let frame = randomFrame(&rng, size: 64, to: cardMAC)
        rig.port.inbound = [frame]
        rig.nic.pollReceive()
        #expect(rig.drain() == [frame])
    }
}
