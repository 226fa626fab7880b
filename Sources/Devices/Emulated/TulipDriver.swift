// The guest's DEC 21140 driver: what Linux's tulip driver does to the chip, through port I/O traps
// for the CSRs and plain memory for the descriptor rings.

import CSystem

/// Why the 21140 driver could not bring the chip up.
public enum TulipDriverError: Error, Equatable, Sendable {
    case noDevice(String)
    /// The CSR block would run past port 0xFFFF.
    case badPort(UInt16)
    /// The DMA window is too small for the rings and buffers.
    case memory(needed: Int)
}

/// Drives a 21140A as Linux's tulip driver does (tulip_init_one, tulip_up, tulip_start_xmit,
/// tulip_interrupt and tulip_rx), over a DMA window of guest memory for the rings and buffers:
///
/// - bring-up: software reset through CSR0, the whole serial ROM read by bit-banging CSR9 (the
///   address width probed as tulip_read_eeprom does, the MAC from bytes 20–25), the rings (128
///   receive descriptors with 1536-byte buffers, 32 transmit descriptors, both ring mode with
///   the end-of-ring bit on the last), a perfect-filter setup frame (broadcast in the unused
///   entries, the station address last) queued first, CSR3/CSR4, the interrupt mask Linux uses
///   for the 21140 (0x0001EBEF) in CSR5 and CSR7, CSR6 with SR and ST, a receive poll demand;
/// - transmit: the frame copied to its slot, TDES1 with FS|LS and the interrupt-on-completion
///   bit only where tulip_start_xmit sets it (when the ring is half and nearly full), OWN set,
///   then one CSR1 write — one trap per frame;
/// - interrupt: CSR5 read, acknowledged by writing it back, the transmit ring reclaimed, the
///   receive ring drained from memory, again until CSR5 shows nothing — three traps per pass
///   however many frames it covers — and a receive poll demand when the ring had run out (RU).
///
/// Not thread-safe: one thread drives it.
public final class TulipDriver: LegacyNICDriver {
    public static let receiveRing = 128, transmitRing = 32
    public static let bufferSize = 1536
    public static let maximumFrame = 1514
    /// CSR5/CSR7 interrupts Linux enables for the 21140 (tulip_tbl's valid_intrs).
    public static let interrupts: UInt32 = 0x0001_EBEF
    /// Bytes of guest memory the driver needs.
    public static let windowBytes = (receiveRing + transmitRing) * 16 + TulipDescriptor.setupFrameSize + 64
        + (receiveRing + transmitRing) * bufferSize

    let io: any PortIO
    let interrupt: any InterruptWait
    let base: UInt16
    let window: DMAWindow
    public private(set) var mac: [UInt8] = []
    /// The serial ROM as read (64 words) and its address width.
    public private(set) var srom: [UInt16] = []
    public private(set) var sromAddressBits = 6
    /// Frames thrown away for bad status, and fatal bus errors the chip reported.
    public private(set) var rxErrors: UInt64 = 0
    public private(set) var busErrors: UInt64 = 0
    public private(set) var restarts: UInt64 = 0

    private let rxRing: DMAWindow, txRing: DMAWindow, setupFrame: DMAWindow, rxBuffers: DMAWindow, txBuffers: DMAWindow
    private var currentRx = 0
    private var currentTx = 0, dirtyTx = 0
    /// RU seen since the last receive poll demand.
    private var receiveStalled = false
    static let csr6: UInt32 = TulipMode.mustBeOne | TulipMode.storeAndForward | TulipMode.portSelect | TulipMode.fullDuplex
        | TulipMode.passMulticast

    public init(io: any PortIO, interrupt: any InterruptWait, base: UInt16, window: DMAWindow) throws(TulipDriverError) {
        guard window.size >= Self.windowBytes else { throw .memory(needed: Self.windowBytes) }
        guard Int(base) + DEC21140.registerBytes <= 0x10000 else { throw .badPort(base) }
        self.io = io
        self.interrupt = interrupt
        self.base = base
        self.window = window
        var at = 0
        func carve(_ n: Int) -> DMAWindow {
            defer { at += n }
            return window.slice(at, n)
        }
        rxRing = carve(Self.receiveRing * 16)
        txRing = carve(Self.transmitRing * 16)
        setupFrame = carve(TulipDescriptor.setupFrameSize + 64)
        rxBuffers = carve(Self.receiveRing * Self.bufferSize)
        txBuffers = carve(Self.transmitRing * Self.bufferSize)
        try probe()
        up()
    }

    private func csr(_ n: Int) -> UInt16 { base + UInt16(8 * n) }
    private func read(_ n: Int) -> UInt32 { io.inl(csr(n)) }
    private func write(_ n: Int, _ v: UInt32) { io.outl(csr(n), v) }

    // MARK: Bring-up

    private func probe() throws(TulipDriverError) {
        write(TulipCSR.busMode, TulipBusMode.softwareReset)
        write(TulipCSR.busMode, 0)
        sromAddressBits = readROM(0xFF, addressBits: 8) & 0x40000 != 0 ? 8 : 6
        srom = (0..<(1 << sromAddressBits)).map { UInt16(truncatingIfNeeded: readROM($0, addressBits: sromAddressBits)) }
        let bytes = srom.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
        guard bytes.count >= 26 else { throw .noDevice("serial ROM too small") }
        mac = Array(bytes[20..<26])
        guard mac.contains(where: { $0 != 0 }), mac.contains(where: { $0 != 0xFF }), mac[0] & 1 == 0 else {
            throw .noDevice("no station address in the serial ROM")
        }
    }

    /// tulip_read_eeprom: the read command and address shifted out MSB first (leading zeros
    /// included), then 16 data bits clocked in; returns every bit DO showed, the address phase too.
    private func readROM(_ location: Int, addressBits: Int) -> UInt32 {
        let enable = TulipSerialROM.select | TulipSerialROM.read | TulipSerialROM.chipSelect
        let command = UInt32(location) | TulipSerialROM.readCommand << UInt32(addressBits)
        var value: UInt32 = 0
        write(TulipCSR.serialROM, enable & ~TulipSerialROM.chipSelect)
        write(TulipCSR.serialROM, enable)
        for i in stride(from: 4 + addressBits, through: 0, by: -1) {
            let bit = command & (1 << UInt32(i)) != 0 ? TulipSerialROM.dataIn : 0
            write(TulipCSR.serialROM, enable | bit)
            _ = read(TulipCSR.serialROM)
            write(TulipCSR.serialROM, enable | bit | TulipSerialROM.clock)
            _ = read(TulipCSR.serialROM)
            value = value << 1 | (read(TulipCSR.serialROM) & TulipSerialROM.dataOut != 0 ? 1 : 0)
        }
        write(TulipCSR.serialROM, enable)
        _ = read(TulipCSR.serialROM)
        for _ in 0..<16 {
            write(TulipCSR.serialROM, enable | TulipSerialROM.clock)
            _ = read(TulipCSR.serialROM)
            value = value << 1 | (read(TulipCSR.serialROM) & TulipSerialROM.dataOut != 0 ? 1 : 0)
            write(TulipCSR.serialROM, enable)
            _ = read(TulipCSR.serialROM)
        }
        write(TulipCSR.serialROM, enable & ~TulipSerialROM.chipSelect)
        return value
    }

    private func descriptor(_ ring: DMAWindow, _ i: Int) -> UnsafeMutableRawPointer { ring.base + 16 * i }

    /// tulip_init_ring + tulip_up.
    private func up() {
        write(TulipCSR.busMode, TulipBusMode.softwareReset)
        write(TulipCSR.busMode, 0x01A0_8000)  // Linux's x86 CSR0: burst and cache alignment
        currentRx = 0
        currentTx = 0
        dirtyTx = 0
        receiveStalled = false
        for i in 0..<Self.receiveRing {
            let d = descriptor(rxRing, i)
            let last = i == Self.receiveRing - 1
            d.storeBytes(of: (UInt32(Self.bufferSize) | (last ? TulipDescriptor.endOfRing : 0)).littleEndian, toByteOffset: 4, as: UInt32.self)
            d.storeBytes(of: UInt32(truncatingIfNeeded: rxBuffers.gpa + UInt64(i * Self.bufferSize)).littleEndian, toByteOffset: 8, as: UInt32.self)
            d.storeBytes(of: UInt32(truncatingIfNeeded: rxRing.gpa + UInt64(16 * ((i + 1) % Self.receiveRing))).littleEndian, toByteOffset: 12, as: UInt32.self)
            viridian_store_release_u32(d, TulipDescriptor.own.littleEndian)
        }
        for i in 0..<Self.transmitRing {
            let d = descriptor(txRing, i)
            d.storeBytes(of: UInt32(0), as: UInt32.self)
            d.storeBytes(of: (i == Self.transmitRing - 1 ? TulipDescriptor.endOfRing : 0).littleEndian, toByteOffset: 4, as: UInt32.self)
            d.storeBytes(of: UInt32(truncatingIfNeeded: txBuffers.gpa + UInt64(i * Self.bufferSize)).littleEndian, toByteOffset: 8, as: UInt32.self)
            d.storeBytes(of: UInt32(truncatingIfNeeded: txRing.gpa + UInt64(16 * ((i + 1) % Self.transmitRing))).littleEndian, toByteOffset: 12, as: UInt32.self)
        }
        // The setup frame: broadcast in the 15 unused entries, the station address in the last.
        let frame = setupFrame.base
        for entry in 0..<16 {
            let address = entry == 15 ? mac : [UInt8](repeating: 0xFF, count: 6)
            for k in 0..<3 {
                let word = UInt32(address[2 * k]) | UInt32(address[2 * k + 1]) << 8
                frame.storeBytes(of: (word | word << 16).littleEndian, toByteOffset: 12 * entry + 4 * k, as: UInt32.self)
            }
        }
        queue(buffer: setupFrame.gpa, control: TulipDescriptor.setupPacket | UInt32(TulipDescriptor.setupFrameSize))
        write(TulipCSR.receiveList, UInt32(truncatingIfNeeded: rxRing.gpa))
        write(TulipCSR.transmitList, UInt32(truncatingIfNeeded: txRing.gpa))
        write(TulipCSR.operationMode, Self.csr6 | TulipMode.startReceive)
        write(TulipCSR.status, Self.interrupts)
        write(TulipCSR.interruptEnable, Self.interrupts)
        write(TulipCSR.operationMode, Self.csr6 | TulipMode.startReceive | TulipMode.startTransmit)
        write(TulipCSR.receivePoll, 0)
    }

    /// Puts one buffer on the transmit ring (OWN last) and moves on.
    private func queue(buffer gpa: UInt64, control: UInt32) {
        let slot = currentTx % Self.transmitRing
        let d = descriptor(txRing, slot)
        let ring = slot == Self.transmitRing - 1 ? TulipDescriptor.endOfRing : 0
        d.storeBytes(of: (control | ring).littleEndian, toByteOffset: 4, as: UInt32.self)
        d.storeBytes(of: UInt32(truncatingIfNeeded: gpa).littleEndian, toByteOffset: 8, as: UInt32.self)
        viridian_store_release_u32(d, TulipDescriptor.own.littleEndian)
        currentTx += 1
    }

    /// A restart after a fatal bus error, as tulip's error path does.
    private func restart() {
        restarts &+= 1
        up()
    }

    // MARK: Transmit

    /// Sends one frame; false when it is empty, too long, or the ring is still full.
    public func transmit(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count > 0, frame.count <= Self.maximumFrame, let source = frame.baseAddress else { return false }
        reclaim()
        if currentTx - dirtyTx >= Self.transmitRing - 1 {
            // Wait for the transmit-done interrupt the IC descriptors bring.
            _ = interrupt.wait(timeoutMs: 100)
            _ = handleInterrupt()
            guard currentTx - dirtyTx < Self.transmitRing - 1 else { return false }
        }
        let slot = currentTx % Self.transmitRing
        (txBuffers.base + slot * Self.bufferSize).copyMemory(from: source, byteCount: frame.count)
        // tulip_start_xmit's rule: an interrupt on completion at half and at nearly full.
        let queued = currentTx - dirtyTx
        let flag: UInt32 = queued == Self.transmitRing / 2 || queued >= Self.transmitRing - 2 ? TulipDescriptor.interruptOnCompletion : 0
        queue(buffer: txBuffers.gpa + UInt64(slot * Self.bufferSize),
              control: flag | TulipDescriptor.firstSegment | TulipDescriptor.lastSegment | UInt32(frame.count))
        write(TulipCSR.transmitPoll, 0)
        return true
    }

    /// Frees the transmit slots the chip is done with (OWN clear), from memory.
    private func reclaim() {
        while dirtyTx < currentTx {
            let d = descriptor(txRing, dirtyTx % Self.transmitRing)
            guard UInt32(littleEndian: viridian_load_acquire_u32(d)) & TulipDescriptor.own == 0 else { break }
            dirtyTx += 1
        }
    }

    // MARK: Receive

    /// The next received frame from the ring into `buffer` (cut to its size); nil when the chip
    /// still owns the next descriptor. Frames with errors are counted and skipped.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        for _ in 0..<Self.receiveRing {
            let d = descriptor(rxRing, currentRx)
            let status = UInt32(littleEndian: viridian_load_acquire_u32(d))
            guard status & TulipDescriptor.own == 0 else { return nil }
            defer {
                viridian_store_release_u32(d, TulipDescriptor.own.littleEndian)
                currentRx = (currentRx + 1) % Self.receiveRing
            }
            let length = Int(status >> TulipDescriptor.frameLengthShift & 0x7FF) - 4
            let whole = TulipDescriptor.firstDescriptor | TulipDescriptor.lastDescriptor
            guard status & (whole | TulipDescriptor.errorSummary) == whole, length >= 14, length <= Self.bufferSize - 4 else {
                rxErrors &+= 1
                continue
            }
            let n = min(length, buffer.count)
            buffer.baseAddress?.copyMemory(from: rxBuffers.base + currentRx * Self.bufferSize, byteCount: n)
            return n
        }
        return nil
    }

    /// After draining the ring: a receive poll demand if the chip had run out of descriptors.
    public func receiveDone() {
        guard receiveStalled else { return }
        receiveStalled = false
        write(TulipCSR.receivePoll, 0)
    }

    // MARK: Interrupt

    /// tulip_interrupt's register work: read CSR5, acknowledge it, reclaim transmit slots, until
    /// CSR5 is quiet. `received` says the caller should drain `receive` (then call `receiveDone`).
    public func handleInterrupt() -> (received: Bool, transmitted: Bool) {
        var received = false, transmitted = false
        var status = read(TulipCSR.status)
        for _ in 0..<16 {
            guard status & (TulipStatus.normalSummary | TulipStatus.abnormalSummary) != 0 else { break }
            write(TulipCSR.status, status & TulipStatus.clearable)
            if status & (TulipStatus.receiveInterrupt | TulipStatus.receiveUnavailable) != 0 { received = true }
            if status & TulipStatus.receiveUnavailable != 0 { receiveStalled = true }
            if status & (TulipStatus.transmitInterrupt | TulipStatus.transmitUnavailable) != 0 {
                transmitted = true
                reclaim()
            }
            if status & TulipStatus.fatalBusError != 0 {
                busErrors &+= 1
                restart()
                return (true, transmitted)
            }
            status = read(TulipCSR.status)
        }
        return (received, transmitted)
    }
}
