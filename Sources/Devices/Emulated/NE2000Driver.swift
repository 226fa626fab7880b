// The guest's NE2000 driver: the register sequences Linux's ne.c and lib8390.c issue, through IN/OUT traps.

/// Why the NE2000 driver could not bring the card up.
public enum NE2000DriverError: Error, Equatable, Sendable {
    /// Nothing (or not an NE2000) at the base port.
    case noDevice(String)
    case timeout(String)
}

/// Drives an NE2000 in 16-bit mode the way Linux does: probe (ne_probe1: a DP8390 behind the
/// ports, reset through the reset port, station PROM by remote DMA), NS8390_init (stop, DCR,
/// monitor + loopback while the ring is set up, PAR/CURR/MAR on page 1, start, TCR/RCR last),
/// ne_block_output + NS8390_trigger_send to transmit, ei_receive + ne_get_8390_hdr +
/// ne_block_input to receive. Card memory is reached only by remote DMA through the data port,
/// one 16-bit word per access, so every 2 bytes of a frame cost one trap.
///
/// Layout: one transmit buffer of 6 pages at 0x40, receive ring 0x46…0x7F. A transmission is
/// complete when the call returns (the card reports PTX within the CR write; otherwise the
/// driver waits for the interrupt). Not thread-safe: one thread drives it, the caller locks.
public final class NE2000Driver: LegacyNICDriver {
    public static let transmitPage: UInt8 = 0x40
    public static let receiveStart: UInt8 = 0x46
    public static let receiveStop: UInt8 = 0x80
    public static let maximumFrame = 1518
    static let minimumFrame = 60
    static let pollLimit = 10_000
    static let timeoutMs = 1000

    let io: any PortIO
    let interrupt: any InterruptWait
    let base: UInt16
    /// The station address from the card's PROM.
    public private(set) var mac: [UInt8] = []
    /// Frames the driver threw away (bad length or status), ring resets after a corrupt header,
    /// and card re-initialisations after a timeout.
    public private(set) var rxErrors: UInt64 = 0
    public private(set) var ringResets: UInt64 = 0
    public private(set) var restarts: UInt64 = 0

    public init(io: any PortIO, interrupt: any InterruptWait, base: UInt16 = 0x300) throws(NE2000DriverError) {
        self.io = io
        self.interrupt = interrupt
        self.base = base
        try probe()
        initialize()
    }

    private typealias R = NE2000Register
    private typealias C = NE2000Command
    private typealias I = NE2000Interrupt

    private func outb(_ r: UInt16, _ v: UInt8) { io.outb(base + r, v) }
    private func inb(_ r: UInt16) -> UInt8 { io.inb(base + r) }

    // MARK: Bring-up

    /// ne_probe1: is there a DP8390, reset it, read the station address PROM.
    private func probe() throws(NE2000DriverError) {
        let reg0 = inb(R.command)
        guard reg0 != 0xFF else { throw .noDevice("nothing at port \(base)") }
        // A DP8390 has a writable page-1 register 0x0D and tally counters that clear when read.
        outb(R.command, C.noDMA | C.page1 | C.stop)
        let regd = inb(0x0D)
        outb(0x0D, 0xFF)
        outb(R.command, C.noDMA | C.page0)
        _ = inb(0x0D)
        if inb(0x0D) != 0 {
            outb(R.command, reg0)
            outb(0x0D, regd)
            throw .noDevice("no DP8390 at port \(base)")
        }
        try resetCard()
        // Read the 32-byte PROM in word mode: each word holds one address byte twice.
        for (r, v) in [(R.command, C.noDMA | C.page0 | C.stop), (R.dataConfig, 0x49), (R.remoteCount0, 0), (R.remoteCount1, 0),
                       (R.interruptMask, 0), (R.interruptStatus, 0xFF), (R.receiveConfig, NE2000Bits.monitor),
                       (R.transmitConfig, NE2000Bits.internalLoopback), (R.remoteCount0, 32), (R.remoteCount1, 0),
                       (R.remoteAddress0, 0), (R.remoteAddress1, 0), (R.command, C.remoteRead | C.start)] as [(UInt16, UInt8)] {
            outb(r, v)
        }
        let prom = (0..<16).map { _ in UInt8(truncatingIfNeeded: io.inw(base + R.dataPort)) }
        guard prom[14] == 0x57, prom[15] == 0x57 else { throw .noDevice("no NE2000 signature in the PROM") }
        mac = Array(prom[0..<6])
    }

    /// ne_reset_8390: a read of the reset port (written back, as clones want), then ISR.RST.
    private func resetCard() throws(NE2000DriverError) {
        outb(R.resetPort, inb(R.resetPort))
        var polls = 0
        while inb(R.interruptStatus) & I.reset == 0 {
            polls += 1
            guard polls < Self.pollLimit else { throw .timeout("no reset acknowledge") }
        }
        outb(R.interruptStatus, 0xFF)
    }

    /// NS8390_init(dev, startp: 1) with do_set_multicast_list accepting all multicast.
    private func initialize() {
        outb(R.command, C.noDMA | C.page0 | C.stop)
        outb(R.dataConfig, 0x48 | NE2000Bits.wordTransfer)
        outb(R.remoteCount0, 0)
        outb(R.remoteCount1, 0)
        outb(R.receiveConfig, NE2000Bits.monitor)  // monitor and loopback while the ring is set up
        outb(R.transmitConfig, NE2000Bits.internalLoopback)
        outb(R.transmitPage, Self.transmitPage)
        outb(R.pageStart, Self.receiveStart)
        outb(R.boundary, Self.receiveStop - 1)
        outb(R.pageStop, Self.receiveStop)
        outb(R.interruptStatus, 0xFF)
        outb(R.interruptMask, 0)
        outb(R.command, C.noDMA | C.page1 | C.stop)
        for i in 0..<6 { outb(R.physicalAddress + UInt16(i), mac[i]) }
        outb(R.currentPage, Self.receiveStart)
        outb(R.command, C.noDMA | C.page0 | C.stop)
        outb(R.interruptStatus, 0xFF)
        outb(R.interruptMask, I.all)
        outb(R.command, C.noDMA | C.page0 | C.start)
        outb(R.transmitConfig, 0)
        outb(R.receiveConfig, NE2000Bits.acceptBroadcast)
        outb(R.command, C.noDMA | C.page1)
        for i in 0..<8 { outb(R.multicast + UInt16(i), 0xFF) }
        outb(R.command, C.noDMA | C.page0)
        outb(R.receiveConfig, NE2000Bits.acceptBroadcast | NE2000Bits.acceptMulticast)
    }

    /// What lib8390 does after a timeout: reset and initialise the card again.
    private func restart() {
        restarts &+= 1
        if (try? resetCard()) != nil { initialize() }
    }

    // MARK: Remote DMA

    /// Points the remote DMA at `count` bytes from `address` and issues `command` (ne.c's sequence).
    private func remoteDMA(_ command: UInt8, address: UInt16, count: Int) {
        outb(R.remoteCount0, UInt8(truncatingIfNeeded: count))
        outb(R.remoteCount1, UInt8(truncatingIfNeeded: count >> 8))
        outb(R.remoteAddress0, UInt8(truncatingIfNeeded: address))
        outb(R.remoteAddress1, UInt8(truncatingIfNeeded: address >> 8))
        outb(R.command, command | C.start)
    }

    /// ne_block_input: `count` bytes from card `address` into `p`, a word per access (an odd last byte by inb).
    private func blockInput(_ p: UnsafeMutableRawPointer, address: UInt16, count: Int) {
        outb(R.command, C.noDMA | C.page0 | C.start)
        remoteDMA(C.remoteRead, address: address, count: count)
        for i in stride(from: 0, to: count & ~1, by: 2) {
            p.storeBytes(of: io.inw(base + R.dataPort).littleEndian, toByteOffset: i, as: UInt16.self)
        }
        if count & 1 != 0 { p.storeBytes(of: io.inb(base + R.dataPort), toByteOffset: count - 1, as: UInt8.self) }
        outb(R.interruptStatus, I.remoteDMAComplete)
    }

    // MARK: Transmit

    /// Sends one frame (padded to 60 bytes): remote DMA write to the transmit buffer, TBCR/TPSR,
    /// CR.TXP, then PTX or TXE. False for an empty or oversized frame, an aborted transmission or
    /// a card that stopped answering (which is then reset).
    public func transmit(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard frame.count > 0, frame.count <= Self.maximumFrame else { return false }
        let length = max(frame.count, Self.minimumFrame)
        let count = (length + 1) & ~1  // whole words
        // ne_block_output
        outb(R.command, C.noDMA | C.page0 | C.start)
        outb(R.interruptStatus, I.remoteDMAComplete)
        remoteDMA(C.remoteWrite, address: UInt16(Self.transmitPage) << 8, count: count)
        for i in stride(from: 0, to: count, by: 2) {
            let lo: UInt8 = i < frame.count ? frame[i] : 0
            let hi: UInt8 = i + 1 < frame.count ? frame[i + 1] : 0
            io.outw(base + R.dataPort, UInt16(lo) | UInt16(hi) << 8)
        }
        var polls = 0
        while inb(R.interruptStatus) & I.remoteDMAComplete == 0 {
            polls += 1
            guard polls < Self.pollLimit else {
                restart()
                return false
            }
        }
        outb(R.interruptStatus, I.remoteDMAComplete)
        // NS8390_trigger_send
        outb(R.command, C.noDMA | C.page0)
        guard inb(R.command) & C.transmit == 0 else { return false }
        outb(R.transmitCount0, UInt8(truncatingIfNeeded: length))
        outb(R.transmitCount1, UInt8(truncatingIfNeeded: length >> 8))
        outb(R.transmitPage, Self.transmitPage)
        outb(R.command, C.noDMA | C.transmit | C.start)
        // Completion: the emulated card reports it within the CR write; a slower one interrupts.
        for attempt in 0..<3 {
            let status = inb(R.interruptStatus)
            if status & (I.transmitted | I.transmitError) != 0 {
                outb(R.interruptStatus, status & (I.transmitted | I.transmitError))
                if status & I.transmitError != 0 { _ = inb(R.transmitPage) }  // TSR, as ei_tx_err reads it
                return status & I.transmitError == 0
            }
            if attempt < 2 { _ = interrupt.wait(timeoutMs: Self.timeoutMs) }
        }
        restart()
        return false
    }

    // MARK: Receive

    /// Takes the next frame from the ring into `buffer` (which should hold 1518 bytes; a longer
    /// frame is cut to it) and returns its length, or nil when the ring is empty. As ei_receive:
    /// CURR from page 1, the frame at BNRY+1, its 4-byte header checked (a next-page pointer that
    /// does not match the length resets the ring to empty; a length outside 60…1518 or a bad
    /// status skips the frame), BNRY moved to the page before the next frame.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let start = Int(Self.receiveStart), stop = Int(Self.receiveStop), ringPages = stop - start
        for _ in 0..<10 {
            outb(R.command, C.noDMA | C.page1)
            let rxing = inb(R.currentPage)
            outb(R.command, C.noDMA | C.page0)
            var this = Int(inb(R.boundary)) + 1
            if this >= stop || this < start { this = start }
            if this == Int(rxing) { return nil }
            // ne_get_8390_hdr
            var header = (status: UInt8(0), next: UInt8(0), count: 0)
            withUnsafeTemporaryAllocation(byteCount: 4, alignment: 2) { h in
                blockInput(h.baseAddress!, address: UInt16(this) << 8, count: 4)
                header = (h[0], h[1], Int(h[2]) | Int(h[3]) << 8)
            }
            let length = header.count - 4
            let expected = this + 1 + ((length + 4) >> 8)
            let next = Int(header.next)
            guard [expected, expected + 1, expected - ringPages, expected + 1 - ringPages].contains(next) else {
                // The header is garbage: give up everything in the ring.
                rxErrors &+= 1
                ringResets &+= 1
                outb(R.boundary, rxing &- 1)
                continue
            }
            var received: Int?
            if length < Self.minimumFrame || length > Self.maximumFrame || header.status & 0x0F != NE2000Bits.receiveOK {
                rxErrors &+= 1
            } else if let p = buffer.baseAddress {
                let n = min(length, buffer.count)
                blockInput(p, address: UInt16(this) << 8 + 4, count: n)
                received = n
            }
            let following = next >= stop || next < start ? start : next
            outb(R.boundary, UInt8(following - 1))
            if let received { return received }
        }
        return nil
    }

    // MARK: Interrupt

    /// The interrupt handler's register work: read ISR, acknowledge what it shows. The caller
    /// then drains `receive` when `received`; transmissions are already complete when
    /// `transmit` returns, so `transmitted` only reports a completion nobody waited for.
    public func handleInterrupt() -> (received: Bool, transmitted: Bool) {
        outb(R.command, C.noDMA | C.page0)
        let status = inb(R.interruptStatus) & 0x7F
        if status != 0 { outb(R.interruptStatus, status) }
        return (status & (I.received | I.receiveError) != 0, status & (I.transmitted | I.transmitError) != 0)
    }
}
