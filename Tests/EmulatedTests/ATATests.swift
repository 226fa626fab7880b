// The emulated ATA channel against the guest PIO driver, in memory: identify, transfers, 48-bit, traps, bad sequences.

import EmulatedDevices
import Foundation
import SyntheticStorage
import Testing

/// An InterruptWait for tests: true when the line rose since the last wait (everything is synchronous).
final class RaisedFlag: InterruptWait {
    var raised = false
    init(_ line: InterruptLine) { line.onRaise = { [weak self] in self?.raised = true } }
    func wait(timeoutMs: Int) -> Bool {
        defer { raised = false }
        return raised
    }
}

/// A temporary image file.
final class ScratchImage {
    let path = NSTemporaryDirectory() + "viridian-ata-\(UUID().uuidString.prefix(8)).img"
    let backend: FileBackend
    init(mib: UInt64, readOnly: Bool = false) throws {
        _ = try FileBackend(path: path, createSize: mib << 20)
        backend = try FileBackend(path: path, readOnly: readOnly)
    }
    deinit { unlink(path) }
}

struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func ataRig(_ image: ScratchImage) throws -> (PortIOBus, ATAController, ATADriver) {
    let bus = PortIOBus()
    let controller = ATAController(disks: [image.backend])
    bus.attach(controller)
    controller.reset()
    let driver = try ATADriver(io: DirectPortIO(bus: bus), interrupt: RaisedFlag(controller.line))
    return (bus, controller, driver)
}

/// Port I/O to a real ATAController, except that the IDENTIFY data it returns claims LBA48 with
/// words 100-103 all 0xFFFF: 2^64 - 1 sectors, as a hostile host could.
final class HugeIdentify: PortIO {
    let inner: DirectPortIO
    var word = -1   // index of the next IDENTIFY word read, -1 outside IDENTIFY
    init(_ inner: DirectPortIO) { self.inner = inner }
    func read(port: UInt16, size: Int) -> UInt32 {
        var value = inner.read(port: port, size: size)
        guard port == 0x1F0, word >= 0, size == 4 else { return value }
        for half in 0..<2 {
            switch word + half {
            case 83: value |= 0x0400 << (16 * UInt32(half))
            case 100...103: value |= 0xFFFF << (16 * UInt32(half))
            default: break
            }
        }
        word += 2
        if word >= 256 { word = -1 }
        return value
    }
    func write(port: UInt16, size: Int, value: UInt32) {
        if port == 0x1F7 && value == UInt32(ATACommand.identify) { word = 0 }
        inner.write(port: port, size: size, value: value)
    }
}

@Suite("Emulated ATA disk")
struct ATATests {
    @Test("IDENTIFY from a hostile host claiming 2^64 - 1 sectors: the driver refuses the disk (sectors × 512 used to trap the agent)")
    func hugeIdentify() throws {
        let image = try ScratchImage(mib: 1)
        let bus = PortIOBus()
        let controller = ATAController(disks: [image.backend])
        bus.attach(controller)
        controller.reset()
        #expect(throws: ATADriverError.outOfRange) {
            _ = try ATADriver(io: HugeIdentify(DirectPortIO(bus: bus)), interrupt: RaisedFlag(controller.line))
        }
    }

    @Test("IDENTIFY: model, 48-bit LBA, capacity, multiple count; the integrity byte sums to zero")
    func identify() throws {
        let image = try ScratchImage(mib: 16)
        let (bus, _, driver) = try ataRig(image)
        #expect(driver.model == "Viridian emulated ATA disk" && driver.supportsLBA48 && driver.sectors == 32768 && driver.multiple == 16)
        let io = DirectPortIO(bus: bus)
        io.outb(0x1F6, 0xA0)
        io.outb(0x1F7, ATACommand.identify)
        #expect(io.inb(0x1F7) & ATAStatus.dataRequest != 0)
        var bytes: [UInt8] = []
        for _ in 0..<256 { let w = io.inw(0x1F0); bytes += [UInt8(w & 0xFF), UInt8(w >> 8)] }
        #expect(bytes[510] == 0xA5 && bytes.reduce(UInt8(0)) { $0 &+ $1 } == 0)
        #expect(bytes[0] == 0x40 && bytes[167] & 0x04 != 0)  // fixed disk; word 83 bit 10: 48-bit
        #expect(io.inb(0x1F7) & ATAStatus.dataRequest == 0)  // all 512 bytes taken
    }

    @Test("Reads and writes land in the image; 48-bit commands; traps per sector counted")
    func transfers() throws {
        let image = try ScratchImage(mib: 16)
        let (bus, controller, driver) = try ataRig(image)
        var rng = SplitMix64(state: 9)
        var data = [UInt8](repeating: 0, count: 64 * 512)
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: rng.next()) }
        let before = bus.exits
        try data.withUnsafeBytes { try driver.write(lba: 1000, count: 64, from: $0.baseAddress!) }
        let writeTraps = bus.exits - before
        let file = try Data(contentsOf: URL(fileURLWithPath: image.path))
        #expect(Array(file[(1000 * 512)..<(1064 * 512)]) == data)
        var back = [UInt8](repeating: 0, count: 64 * 512)
        let mark = bus.exits
        try back.withUnsafeMutableBytes { try driver.read(lba: 1000, count: 64, into: $0.baseAddress!) }
        #expect(back == data)
        let readTraps = bus.exits - mark
        print("ATA PIO traps per 512-byte sector: read \(Double(readTraps) / 64), write \(Double(writeTraps) / 64)")
        #expect(readTraps >= 64 * 128 && readTraps < 64 * 140)
        #expect(controller.sectorsRead == 64 && controller.sectorsWritten == 64)
        try driver.flush()
        // Out of range: IDNF from the device, refused by the driver before that.
        #expect(throws: ATADriverError.outOfRange) { try back.withUnsafeMutableBytes { try driver.read(lba: 32767, count: 2, into: $0.baseAddress!) } }
    }

    @Test("Malformed sequences: bad commands abort, data-port overruns read ones, reads past the end IDNF; no crash")
    func hostileRegisters() throws {
        let image = try ScratchImage(mib: 4)
        let (bus, _, _) = try ataRig(image)
        let io = DirectPortIO(bus: bus)
        io.outb(0x1F7, 0xFF)  // unknown command
        #expect(io.inb(0x1F7) & ATAStatus.error != 0 && io.inb(0x1F1) == ATAError.abort)
        #expect(io.inw(0x1F0) == 0xFFFF)  // no DRQ: nothing to read
        io.outb(0x1F6, 0xE0)
        io.outb(0x1F2, 8)
        io.outb(0x1F3, 0xFF); io.outb(0x1F4, 0xFF); io.outb(0x1F5, 0xFF)
        io.outb(0x1F7, ATACommand.readSectors)
        #expect(io.inb(0x1F7) & ATAStatus.error != 0 && io.inb(0x1F1) == ATAError.idNotFound)
        io.outb(0x1F7, ATACommand.readMultiple)  // SET MULTIPLE never issued on a fresh reset? (multiple is set by the driver)
        _ = io.inb(0x1F7)
        // A command in the middle of a transfer aborts it.
        io.outb(0x1F2, 4); io.outb(0x1F3, 0); io.outb(0x1F4, 0); io.outb(0x1F5, 0)
        io.outb(0x1F7, ATACommand.writeSectors)
        #expect(io.inb(0x3F6) & ATAStatus.dataRequest != 0)
        io.outb(0x1F7, ATACommand.identify)
        #expect(io.inb(0x1F7) & ATAStatus.error != 0 && io.inb(0x1F1) == ATAError.abort)
        var rng = SplitMix64(state: 4)
        for _ in 0..<200_000 {
            let port = rng.next() % 10 == 0 ? UInt16(0x3F6) : UInt16(0x1F0 + rng.next() % 8)
            let size = [1, 2, 4][Int(rng.next() % 3)]
            if rng.next() % 2 == 0 {
                _ = io.read(port: port, size: size)
            } else {
                io.write(port: port, size: size, value: UInt32(truncatingIfNeeded: rng.next()))
            }
        }
        // Still a working disk after a reset.
        let controller2 = bus.devices.compactMap { $0 as? ATAController }.first!
        let driver = try ATADriver(io: io, interrupt: RaisedFlag(controller2.line))
        #expect(driver.sectors == 8192)
        // Unclaimed ports float high.
        #expect(io.inb(0x170) == 0xFF && bus.unclaimed > 0)
    }

    @Test("A read-only image refuses writes with ABRT")
    func readOnly() throws {
        let image = try ScratchImage(mib: 1, readOnly: true)
        let (_, _, driver) = try ataRig(image)
        let zeros = [UInt8](repeating: 0, count: 512)
        #expect(throws: ATADriverError.device(status: ATAStatus.ready | ATAStatus.seekComplete | ATAStatus.error, error: ATAError.abort)) {
            try zeros.withUnsafeBytes { try driver.write(lba: 0, count: 1, from: $0.baseAddress!) }
        }
    }
}
