// Target "emulated-drivers": the guest's drivers for the emulated devices (ATA with bus-master
// DMA, NE2000, DEC 21140) against a host whose port reads sometimes lie: the real device models
// answer, and the input replaces chosen answers.

import EmulatedDevices
import GuestMemory
import SyntheticNetwork

let emulatedDriversTarget = FuzzTarget(
    name: "emulated-drivers",
    summary: "ATADriver, NE2000Driver and TulipDriver bring-up and I/O over the device models, with port reads and interrupt waits the input falsifies"
) { data in
    var r = FuzzReader(data)
    EmulatedDriversFuzz.run(&r)
}

/// Port I/O to the real device models, except that the script replaces some reads: after a run of
/// honest accesses it answers one read with a lie (bits flipped, zero, all ones or a value), and may
/// make the next interrupt wait time out.
final class FuzzLyingPortIO: PortIO, InterruptWait {
    let bus: PortIOBus
    private var script: FuzzReader
    private var honestLeft: Int
    private var failNextWait = false
    private(set) var accesses = 0
    private(set) var lies = 0

    init(bus: PortIOBus, script: [UInt8]) {
        var reader = FuzzReader(bytes: script)
        honestLeft = script.isEmpty ? Int.max : Int(reader.u16())
        self.script = reader
        self.bus = bus
    }

    func read(port: UInt16, size: Int) -> UInt32 {
        accesses += 1
        let honest = bus.read(port: port, size: size)
        guard accesses < 1_000_000 else { return honest }
        if honestLeft > 0 {
            honestLeft -= 1
            return honest
        }
        guard !script.isAtEnd else {
            honestLeft = Int.max
            return honest
        }
        lies += 1
        let kind = script.u8()
        let value = script.u32()
        honestLeft = Int(script.u16() % 512)
        if kind & 0x40 != 0 { failNextWait = true }
        switch kind & 3 {
        case 0: return honest ^ value
        case 1: return 0
        case 2: return 0xFFFF_FFFF
        default: return value
        }
    }

    func write(port: UInt16, size: Int, value: UInt32) {
        accesses += 1
        bus.write(port: port, size: size, value: value)
    }

    func wait(timeoutMs: Int) -> Bool {
        defer { failNextWait = false }
        return !failNextWait
    }
}

enum EmulatedDriversFuzz {
    static let master = FuzzBlockBackend(size: 1 << 20, readOnly: false)
    static let slave = FuzzBlockBackend(size: 64 << 10, readOnly: true)
    static let scratch = FuzzPages(bytes: 64 << 10)

    static func run(_ r: inout FuzzReader) {
        fuzzMemory.reset()
        master.reset()
        slave.reset()
        let setup = r.u8()
        let scriptLength = min(Int(r.u16()), r.remaining)
        let script = r.take(scriptLength)
        let m = FuzzLegacyMachine(disks: [master, slave], memory: fuzzMemory.memory)
        // The guest's PCI setup: the 21140 off the PIIX4's bus-master ports, decoding and bus mastering on.
        m.separate()
        let io = FuzzLyingPortIO(bus: m.bus, script: script)
        let memory = fuzzMemory.memory
        switch setup % 3 {
        case 0:
            let busMaster = setup & 0x80 == 0
                ? ATABusMaster(port: PIIX4IDE.defaultBusMasterBase,
                               table: DMAWindow(base: memory.base + 0x10000, gpa: 0x10000, size: 4096),
                               buffer: DMAWindow(base: memory.base + 0x20000, gpa: 0x20000, size: 0x40000))
                : nil
            guard let driver = try? ATADriver(io: io, interrupt: io, unit: setup & 0x40 != 0 ? 1 : 0, busMaster: busMaster) else { return }
            fuzzConsume(driver.sectors ^ UInt64(driver.multiple) ^ UInt64(driver.dmaMode ?? 0) ^ UInt64(driver.maximumTransfer))
            fuzzConsume(driver.model)
            disk(driver, &r)
        case 1:
            guard let driver = try? NE2000Driver(io: io, interrupt: io) else { return }
            nic(driver, port: m.nePort, poll: { _ = m.ne2000.pollReceive() }, &r)
        default:
            let window = DMAWindow(base: memory.base + 0x40000, gpa: 0x40000, size: TulipDriver.windowBytes)
            guard let driver = try? TulipDriver(io: io, interrupt: io, base: FuzzLegacyMachine.separateDECBase, window: window) else { return }
            fuzzConsume(UInt64(driver.srom.count) ^ UInt64(driver.sromAddressBits))
            nic(driver, port: m.decPort, poll: { _ = m.dec.pollReceive() }, &r)
        }
        fuzzConsume(UInt64(io.accesses) ^ UInt64(io.lies))
    }

    static func disk(_ driver: ATADriver, _ r: inout FuzzReader) {
        var steps = 0
        while steps < 32 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            let count = Int(r.u8() % 128)
            let lba = UInt64(r.u32()) % (driver.sectors + 4)
            switch op % 3 {
            case 0: _ = try? driver.read(lba: lba, count: count, into: scratch.base)
            case 1:
                let data = r.blob(limit: 4096)
                if !data.isEmpty { data.withUnsafeBytes { scratch.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                _ = try? driver.write(lba: lba, count: count, from: scratch.base)
            default: _ = try? driver.flush()
            }
        }
    }

    static func nic(_ driver: any LegacyNICDriver, port: FuzzFramePort, poll: () -> Void, _ r: inout FuzzReader) {
        fuzzConsume(driver.mac)
        var steps = 0
        while steps < 64 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 4 {
            case 0:
                let frame = r.blob(limit: 1600)
                _ = frame.withUnsafeBytes { driver.transmit($0) }
            case 1:
                // Frames from the wire into the card, then the guest's interrupt handler.
                port.inbound.removeAll()
                for _ in 0..<(1 + Int(r.u8() % 4)) { port.inbound.append([UInt8](repeating: 0, count: 10) + r.blob(limit: 1600)) }
                poll()
                let (received, transmitted) = driver.handleInterrupt()
                fuzzConsume(UInt64(received ? 1 : 0) ^ UInt64(transmitted ? 2 : 0))
            case 2:
                let buffer = UnsafeMutableRawBufferPointer(start: scratch.base, count: 2048)
                var n = 0
                while n < 64, let length = driver.receive(into: buffer) {
                    n += 1
                    fuzzCheck(length >= 0 && length <= buffer.count, "a received frame of \(length) bytes")
                }
                driver.receiveDone()
            default:
                _ = driver.handleInterrupt()
            }
        }
    }
}
