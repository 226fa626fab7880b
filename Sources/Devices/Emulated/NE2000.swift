// An emulated NE2000 (a DP8390 core behind the NE2000 ASIC) at ISA ports: paged registers, remote DMA
// through the data port, a receive ring in 16 KiB of card memory, frames to and from a FramePort.

import Glibc
import SyntheticNetwork

/// Command register (CR) bits, the same on every register page.
public enum NE2000Command {
    public static let stop: UInt8 = 0x01, start: UInt8 = 0x02, transmit: UInt8 = 0x04
    /// Remote DMA command (RD2–0): read, write, send packet, abort/complete.
    public static let remoteRead: UInt8 = 0x08, remoteWrite: UInt8 = 0x10, sendPacket: UInt8 = 0x18, noDMA: UInt8 = 0x20
    /// Register page select (PS1–0).
    public static let page0: UInt8 = 0x00, page1: UInt8 = 0x40, page2: UInt8 = 0x80
}

/// Interrupt status / mask bits (ISR, IMR).
public enum NE2000Interrupt {
    public static let received: UInt8 = 0x01, transmitted: UInt8 = 0x02
    public static let receiveError: UInt8 = 0x04, transmitError: UInt8 = 0x08
    public static let overwrite: UInt8 = 0x10, counterOverflow: UInt8 = 0x20
    public static let remoteDMAComplete: UInt8 = 0x40, reset: UInt8 = 0x80
    /// What lib8390 unmasks (ENISR_ALL): everything but RDC and RST.
    public static let all: UInt8 = 0x3F
}

/// Register offsets from the base port. Page 0 names are the write side; where a read
/// answers something else it says so.
public enum NE2000Register {
    public static let command: UInt16 = 0x00
    /// Page 0 (read 0x01/0x02: CLDA0/1).
    public static let pageStart: UInt16 = 0x01, pageStop: UInt16 = 0x02, boundary: UInt16 = 0x03
    /// Page 0 (read 0x04: TSR, 0x05: NCR, 0x06: FIFO).
    public static let transmitPage: UInt16 = 0x04, transmitCount0: UInt16 = 0x05, transmitCount1: UInt16 = 0x06
    public static let interruptStatus: UInt16 = 0x07
    /// Page 0 (read 0x08/0x09: CRDA0/1).
    public static let remoteAddress0: UInt16 = 0x08, remoteAddress1: UInt16 = 0x09
    public static let remoteCount0: UInt16 = 0x0A, remoteCount1: UInt16 = 0x0B
    /// Page 0 (read 0x0C: RSR, 0x0D–0x0F: tally counters CNTR0–2).
    public static let receiveConfig: UInt16 = 0x0C, transmitConfig: UInt16 = 0x0D
    public static let dataConfig: UInt16 = 0x0E, interruptMask: UInt16 = 0x0F
    /// Page 1: PAR0–5 at 0x01…0x06, CURR, MAR0–7 at 0x08…0x0F.
    public static let physicalAddress: UInt16 = 0x01, currentPage: UInt16 = 0x07, multicast: UInt16 = 0x08
    /// The NE2000 ASIC: remote DMA data port (0x10–0x17) and reset port (0x18–0x1F).
    public static let dataPort: UInt16 = 0x10, resetPort: UInt16 = 0x1F
}

/// Configuration and status register bits (RCR, TCR, DCR, TSR, RSR).
public enum NE2000Bits {
    /// RCR: accept broadcast, multicast (hashed through MAR), everything; monitor (check, don't buffer).
    public static let acceptBroadcast: UInt8 = 0x04, acceptMulticast: UInt8 = 0x08, promiscuous: UInt8 = 0x10, monitor: UInt8 = 0x20
    /// TCR: loopback mode (LB1–0).
    public static let loopbackMask: UInt8 = 0x06, internalLoopback: UInt8 = 0x02
    /// DCR: word-wide transfers, byte order swap (big-endian words), long addresses, normal (not loopback) operation.
    public static let wordTransfer: UInt8 = 0x01, byteOrderSwap: UInt8 = 0x02, longAddress: UInt8 = 0x04, normal: UInt8 = 0x08
    /// TSR: packet transmitted, aborted.
    public static let transmitOK: UInt8 = 0x01, transmitAborted: UInt8 = 0x08
    /// RSR: packet received intact, destination was multicast/broadcast.
    public static let receiveOK: UInt8 = 0x01, receivedMulticast: UInt8 = 0x20
}

/// An NE2000-compatible ISA network card: a DP8390 register model (CR, pages 0–2) with the NE2000
/// ASIC's data and reset ports at base+0x10 and base+0x1F, 16 KiB of card memory at 0x4000–0x7FFF
/// (pages 0x40–0x7F) and the station-address PROM at 0x0000–0x001F. The guest reaches card memory
/// only through remote DMA, one data-port access per byte or word — one trap each.
///
/// The PROM holds 16 bytes (MAC, zeros, "WW" at bytes 14/15 as QEMU's NE2000 has), each stored
/// twice, as on 16-bit NE2000 cards: byte-wide reads give every byte twice, word reads give
/// (b | b << 8). Transmission (CR.TXP) sends TBCR bytes from page TPSR to the port with a zero
/// virtio header and completes at once (TSR.PTX, ISR.PTX). Reception happens in `pollReceive`
/// while the card is started and not in monitor mode: each frame goes to the ring at CURR with a
/// 4-byte header (RSR, next page, byte count = frame + 4), padded to 60 bytes, with 4 bytes
/// reserved behind it where the chip would put the FCS (so `next` is what lib8390 expects), wrapping
/// from PSTOP to PSTART; ISR.PRX. The device also pulls from the port when BNRY is written, when it
/// is started and when RCR changes — the guest freeing ring space lets the wire in.
///
/// Malformed sequences give defined results, never a host fault:
/// - Remote DMA works byte by byte on a 16-bit address that wraps at 0xFFFF and, like the chip,
///   from PSTOP to PSTART. Outside the PROM and RAM, reads give 0xFF and writes go nowhere. The
///   PROM is read-only. Data-port accesses with no remote DMA running (or its count at 0) read all
///   ones and are ignored on write. In word mode (DCR.WTS) every access moves a word, an 8-bit
///   one included (it gets the low byte); in byte mode a 16/32-bit access moves 2/4 bytes.
/// - Registers the model does not implement (page 0 0x0A/0x0B, page 2 diagnostics, page 3) read
///   0xFF; writes to them are ignored. Ports 0x10–0x17 all alias the data port and 0x18–0x1F the
///   reset port, as the ASIC decodes them. Wider accesses to register ports are split into byte
///   accesses at consecutive ports, as the ISA bus splits them for an 8-bit device.
/// - TXP while stopped is ignored; TBCR of 0 or above 1518 aborts (TSR.ABT, ISR.TXE); in loopback
///   (TCR.LB) the frame stays on the card and completes.
/// - CURR outside PSTART…PSTOP counts as PSTART, BNRY outside it as PSTOP-1 (what lib8390 means by
///   writing PSTART-1); PSTART ≥ PSTOP disables reception. A full ring (no room for the next frame
///   before BNRY) stops reading: the frame waits in the device (one-frame FIFO) and later frames in
///   the port — no overwrite, no ISR.OVW. Frames that can never fit the ring, frames over 1518 bytes
///   and runts under 14 are dropped.
///
/// Not thread-safe: the caller serialises port accesses and `pollReceive` (one host thread).
public final class NE2000: PortIODevice, LegacyNICDevice {
    public static let memoryStart = 0x4000
    public static let memorySize = 0x4000
    public static let maximumFrame = 1518
    public static let minimumFrame = 60
    static let headerSize = VirtioNetHeader.size

    public let base: UInt16
    public let mac: [UInt8]
    public let port: any FramePort
    public let line: InterruptLine

    /// Frames handed to the port / stored in the ring / dropped on receive (too large, too short,
    /// can never fit the ring). Frames not addressed to the card count in `rxFiltered`.
    public private(set) var txFrames: UInt64 = 0
    public private(set) var rxFrames: UInt64 = 0
    public private(set) var rxDrops: UInt64 = 0
    public private(set) var rxFiltered: UInt64 = 0
    /// Frames the port refused on transmit, and transmissions aborted for a bad length.
    public private(set) var txDrops: UInt64 = 0
    public private(set) var txAborts: UInt64 = 0

    private let prom: [UInt8]
    private var ram = [UInt8](repeating: 0, count: NE2000.memorySize)

    // DP8390 registers.
    private var cr: UInt8 = 0x21
    private var pstart: UInt8 = 0, pstop: UInt8 = 0, bnry: UInt8 = 0, tpsr: UInt8 = 0, curr: UInt8 = 0
    private var tbcr: UInt16 = 0, rsar: UInt16 = 0, rbcr: UInt16 = 0
    private var isr: UInt8 = 0, imr: UInt8 = 0
    private var rcr: UInt8 = 0, tcr: UInt8 = 0, dcr: UInt8 = 0
    private var tsr: UInt8 = 0, rsr: UInt8 = 0
    private var par = [UInt8](repeating: 0, count: 6)
    private var mar = [UInt8](repeating: 0, count: 8)
    /// The local DMA address (CLDA): where the last receive or transmit stopped.
    private var localAddress: UInt16 = 0

    // Frame buffers: virtio header then frame, and the iovecs over them.
    private let rxBuffer: UnsafeMutableRawPointer
    private let txBuffer: UnsafeMutableRawPointer
    private let rxIOV: UnsafeMutablePointer<iovec>
    private let txIOV: UnsafeMutablePointer<iovec>
    /// Length of a frame read from the port but not yet in the ring (0: none).
    private var staged = 0

    public init(base: UInt16 = 0x300, mac: [UInt8], port: any FramePort, line: InterruptLine) {
        precondition(mac.count == 6, "a MAC is 6 bytes")
        self.base = base
        self.mac = mac
        self.port = port
        self.line = line
        var logical = mac + [UInt8](repeating: 0, count: 10)
        logical[14] = 0x57
        logical[15] = 0x57
        prom = logical.flatMap { [$0, $0] }
        let rxBytes = Self.headerSize + Self.maximumFrame + 1  // one spare byte: longer frames show as such
        rxBuffer = .allocate(byteCount: rxBytes, alignment: 16)
        txBuffer = .allocate(byteCount: Self.headerSize + Self.maximumFrame, alignment: 16)
        txBuffer.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerSize + Self.maximumFrame)
        rxIOV = .allocate(capacity: 2)
        rxIOV[0] = iovec(iov_base: rxBuffer, iov_len: Self.headerSize)
        rxIOV[1] = iovec(iov_base: rxBuffer + Self.headerSize, iov_len: Self.maximumFrame + 1)
        txIOV = .allocate(capacity: 2)
        txIOV[0] = iovec(iov_base: txBuffer, iov_len: Self.headerSize)
        txIOV[1] = iovec(iov_base: txBuffer + Self.headerSize, iov_len: 0)
        port.setOffload(0)  // whole, checksummed frames only: the card has no offloads
        reset()
    }

    deinit {
        rxBuffer.deallocate()
        txBuffer.deallocate()
        rxIOV.deallocate()
        txIOV.deallocate()
    }

    public var portRanges: [ClosedRange<UInt16>] { [base...(base + 0x1F)] }

    /// The port's descriptor, readable when frames wait; the host loop watches it and calls `pollReceive`.
    public var descriptor: Int32 { port.descriptor }

    /// Whether `pollReceive` would read the port now: started, not monitoring, no frame waiting
    /// for ring space. When false, stop watching the descriptor; it becomes true again only
    /// through a guest access to the card (which pulls by itself where it frees room).
    public var acceptsFrames: Bool { running && rcr & NE2000Bits.monitor == 0 && staged == 0 }

    private var running: Bool { cr & NE2000Command.start != 0 }

    /// Power-on state: memory and registers cleared, chip in reset.
    public func reset() {
        for i in ram.indices { ram[i] = 0 }
        pstart = 0; pstop = 0; bnry = 0; tpsr = 0; curr = 0
        tbcr = 0; rsar = 0; rbcr = 0
        rcr = 0; tsr = 0; rsr = 0
        for i in par.indices { par[i] = 0 }
        for i in mar.indices { mar[i] = 0 }
        localAddress = 0
        staged = 0
        chipReset()
        updateLine()
    }

    /// What the reset port does to the DP8390: stopped, remote DMA aborted, interrupts masked,
    /// loopback, byte-wide transfers; ISR.RST. Ring pointers and memory keep their contents.
    private func chipReset() {
        cr = NE2000Command.noDMA | NE2000Command.stop
        isr = NE2000Interrupt.reset
        imr = 0
        dcr = NE2000Bits.longAddress
        tcr = NE2000Bits.internalLoopback
    }

    private func updateLine() { line.set(isr & imr & 0x7F != 0) }

    // MARK: Ports

    public func read(port: UInt16, size: Int) -> UInt32 {
        defer { updateLine() }
        let size = min(max(size, 1), 4)
        let offset = port &- base
        if (0x10...0x17).contains(offset) { return dataRead(size: size) }
        var value: UInt32 = 0
        for i in 0..<size { value |= UInt32(readByte(offset &+ UInt16(i))) << (8 * UInt32(i)) }
        return value
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        defer { updateLine() }
        let size = min(max(size, 1), 4)
        let offset = port &- base
        if (0x10...0x17).contains(offset) { return dataWrite(size: size, value: value) }
        for i in 0..<size { writeByte(offset &+ UInt16(i), UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))) }
    }

    private func readByte(_ offset: UInt16) -> UInt8 {
        switch offset {
        case 0x00...0x0F: return readRegister(Int(offset))
        case 0x10...0x17: return UInt8(truncatingIfNeeded: dataRead(size: 1))
        case 0x18...0x1F:
            chipReset()
            return 0xFF
        default: return 0xFF  // past the card
        }
    }

    private func writeByte(_ offset: UInt16, _ value: UInt8) {
        switch offset {
        case 0x00...0x0F: writeRegister(Int(offset), value)
        case 0x10...0x17: dataWrite(size: 1, value: UInt32(value))
        default: break  // a write to the reset port ends the reset pulse: nothing to do here
        }
    }

    // MARK: Registers

    private func readRegister(_ r: Int) -> UInt8 {
        if r == 0 { return cr }
        switch (cr >> 6, r) {
        case (0, 0x01): return UInt8(truncatingIfNeeded: localAddress)
        case (0, 0x02): return UInt8(truncatingIfNeeded: localAddress >> 8)
        case (0, 0x03): return bnry
        case (0, 0x04): return tsr
        case (0, 0x05), (0, 0x06): return 0  // NCR: no collisions; FIFO: empty
        case (0, 0x07): return isr
        case (0, 0x08): return UInt8(truncatingIfNeeded: rsar)
        case (0, 0x09): return UInt8(truncatingIfNeeded: rsar >> 8)
        case (0, 0x0C): return rsr
        case (0, 0x0D...0x0F): return 0  // tally counters: no CRC, alignment or missed-packet errors
        case (1, 0x01...0x06): return par[r - 1]
        case (1, 0x07): return curr
        case (1, 0x08...0x0F): return mar[r - 8]
        case (2, 0x01): return pstart
        case (2, 0x02): return pstop
        case (2, 0x04): return tpsr
        case (2, 0x05): return curr  // local next packet pointer
        case (2, 0x0C): return rcr
        case (2, 0x0D): return tcr
        case (2, 0x0E): return dcr
        case (2, 0x0F): return imr
        default: return 0xFF
        }
    }

    private func writeRegister(_ r: Int, _ v: UInt8) {
        if r == 0 { return writeCommand(v) }
        switch (cr >> 6, r) {
        case (0, 0x01): pstart = v
        case (0, 0x02): pstop = v
        case (0, 0x03):
            bnry = v
            pull()
        case (0, 0x04): tpsr = v
        case (0, 0x05): tbcr = tbcr & 0xFF00 | UInt16(v)
        case (0, 0x06): tbcr = tbcr & 0x00FF | UInt16(v) << 8
        case (0, 0x07): isr &= ~(v & 0x7F)  // RST clears only when the card starts
        case (0, 0x08): rsar = rsar & 0xFF00 | UInt16(v)
        case (0, 0x09): rsar = rsar & 0x00FF | UInt16(v) << 8
        case (0, 0x0A): rbcr = rbcr & 0xFF00 | UInt16(v)
        case (0, 0x0B): rbcr = rbcr & 0x00FF | UInt16(v) << 8
        case (0, 0x0C):
            rcr = v & 0x3F
            pull()
        case (0, 0x0D): tcr = v & 0x1F
        case (0, 0x0E): dcr = v & 0x7F
        case (0, 0x0F): imr = v & 0x7F
        case (1, 0x01...0x06): par[r - 1] = v
        case (1, 0x07): curr = v
        case (1, 0x08...0x0F): mar[r - 8] = v
        default: break
        }
    }

    private func writeCommand(_ value: UInt8) {
        let wasRunning = running
        // STP wins over STA; neither keeps the current state (lib8390 writes CR without either).
        var runBits = cr & (NE2000Command.start | NE2000Command.stop)
        if value & NE2000Command.stop != 0 {
            runBits = NE2000Command.stop
            isr |= NE2000Interrupt.reset
        } else if value & NE2000Command.start != 0 {
            runBits = NE2000Command.start
            isr &= ~NE2000Interrupt.reset
        }
        // RD = 000 is undefined: taken as abort. Send packet is not implemented: also an abort.
        var dma = value & 0x38
        if dma == 0 { dma = NE2000Command.noDMA }
        cr = value & 0xC0 | dma | runBits
        if (dma == NE2000Command.remoteRead || dma == NE2000Command.remoteWrite) && rbcr == 0 {
            isr |= NE2000Interrupt.remoteDMAComplete  // a zero-length transfer is complete at once
        }
        if value & NE2000Command.transmit != 0 && running { transmit() }
        if running && !wasRunning { pull() }
    }

    // MARK: Card memory and remote DMA

    private func cardRead(_ address: UInt16) -> UInt8 {
        let a = Int(address)
        if a < prom.count { return prom[a] }
        if a >= Self.memoryStart && a < Self.memoryStart + Self.memorySize { return ram[a - Self.memoryStart] }
        return 0xFF
    }

    private func cardWrite(_ address: UInt16, _ value: UInt8) {
        let a = Int(address)
        if a >= Self.memoryStart && a < Self.memoryStart + Self.memorySize { ram[a - Self.memoryStart] = value }
    }

    private var remoteDMA: UInt8 { cr & 0x38 }
    private var wordMode: Bool { dcr & NE2000Bits.wordTransfer != 0 }

    /// Bytes one data-port access of `size` moves.
    private func transferWidth(_ size: Int) -> Int { wordMode ? max(size, 2) : size }

    /// Advances the remote DMA by one byte: the address wraps from PSTOP to PSTART like the chip's.
    private func stepRemote() {
        rsar &+= 1
        if pstart < pstop && rsar == UInt16(pstop) << 8 { rsar = UInt16(pstart) << 8 }
        if rbcr > 0 {
            rbcr -= 1
            if rbcr == 0 { isr |= NE2000Interrupt.remoteDMAComplete }
        }
    }

    /// Swaps the bytes of each 16-bit half (DCR.BOS in word mode).
    private func swapWords(_ v: UInt32) -> UInt32 { (v & 0x00FF_00FF) << 8 | (v >> 8) & 0x00FF_00FF }

    private func dataRead(size: Int) -> UInt32 {
        guard remoteDMA == NE2000Command.remoteRead, rbcr > 0 else { return UInt32.max }
        var value: UInt32 = 0
        for i in 0..<transferWidth(size) {
            value |= UInt32(cardRead(rsar)) << (8 * UInt32(i))
            stepRemote()
        }
        return wordMode && dcr & NE2000Bits.byteOrderSwap != 0 ? swapWords(value) : value
    }

    private func dataWrite(size: Int, value: UInt32) {
        guard remoteDMA == NE2000Command.remoteWrite, rbcr > 0 else { return }
        let v = wordMode && dcr & NE2000Bits.byteOrderSwap != 0 ? swapWords(value) : value
        for i in 0..<transferWidth(size) {
            cardWrite(rsar, UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))))
            stepRemote()
        }
    }

    // MARK: Transmit

    private func transmit() {
        let length = Int(tbcr)
        guard length > 0, length <= Self.maximumFrame else {
            tsr = NE2000Bits.transmitAborted
            isr |= NE2000Interrupt.transmitError
            txAborts &+= 1
            return
        }
        var address = UInt16(tpsr) << 8
        if tcr & NE2000Bits.loopbackMask == 0 {
            let frame = txBuffer + Self.headerSize
            for i in 0..<length {
                frame.storeBytes(of: cardRead(address), toByteOffset: i, as: UInt8.self)
                address &+= 1
            }
            txIOV[1].iov_len = length
            if port.send(UnsafeBufferPointer(start: txIOV, count: 2)) { txFrames &+= 1 } else { txDrops &+= 1 }
        } else {
            address &+= UInt16(length)  // loopback: the frame never leaves the card
        }
        localAddress = address
        tsr = NE2000Bits.transmitOK
        isr |= NE2000Interrupt.transmitted
    }

    // MARK: Receive

    /// Reads frames from the port into the receive ring while the card takes them. Returns true
    /// when the port ran dry (the card could take more), false when the card stopped reading
    /// (stopped, monitoring, or ring full with a frame waiting); then call again after the guest
    /// next touches the card, or watch `acceptsFrames`.
    @discardableResult
    public func pollReceive() -> Bool {
        defer { updateLine() }
        while running && rcr & NE2000Bits.monitor == 0 {
            if staged == 0 {
                guard let n = port.receive(UnsafeBufferPointer(start: rxIOV, count: 2)) else { return true }
                let length = n - Self.headerSize
                guard length >= 14, length <= Self.maximumFrame else {
                    rxDrops &+= 1
                    continue
                }
                staged = length
            }
            guard accepts(rxBuffer + Self.headerSize) else {
                rxFiltered &+= 1
                staged = 0
                continue
            }
            switch store(length: staged) {
            case .stored:
                rxFrames &+= 1
                staged = 0
            case .neverFits:
                rxDrops &+= 1
                staged = 0
            case .full:
                return false
            }
        }
        return false
    }

    /// Pulls from the port if the card is receiving (after the guest changed what it can take).
    private func pull() {
        if running && rcr & NE2000Bits.monitor == 0 { pollReceive() }
    }

    /// The DP8390 address filter: PAR for unicast, RCR.AB for broadcast, RCR.AM and the MAR hash
    /// (top 6 bits of the Ethernet CRC of the destination) for multicast; RCR.PRO takes everything.
    private func accepts(_ destination: UnsafeRawPointer) -> Bool {
        if rcr & NE2000Bits.promiscuous != 0 { return true }
        let d = UnsafeRawBufferPointer(start: destination, count: 6)
        if d[0] & 1 == 0 { return d.elementsEqual(par) }
        if d.allSatisfy({ $0 == 0xFF }) { return rcr & NE2000Bits.acceptBroadcast != 0 }
        guard rcr & NE2000Bits.acceptMulticast != 0 else { return false }
        let index = Int(Self.etherCRC(d) >> 26)
        return mar[index >> 3] & (1 << (index & 7)) != 0
    }

    /// The CRC-32 of `bytes` as the DP8390's hash logic computes it (bits LSB first, not inverted).
    static func etherCRC(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            var b = byte
            for _ in 0..<8 {
                let feedback = (crc >> 31) ^ UInt32(b & 1)
                crc = crc << 1 ^ (feedback != 0 ? 0x04C1_1DB7 : 0)
                b >>= 1
            }
        }
        return crc
    }

    private enum StoreResult { case stored, full, neverFits }

    /// Writes the staged frame (`length` bytes) and its header to the ring at CURR.
    private func store(length: Int) -> StoreResult {
        let start = Int(pstart), stop = Int(pstop)
        guard start < stop else { return .full }  // no ring: nothing is received until there is one
        let ringPages = stop - start
        let padded = max(length, Self.minimumFrame)
        let pages = (4 + padded + 4 + 255) >> 8  // header + frame + the FCS the chip would store
        guard pages < ringPages else { return .neverFits }
        let page = (start..<stop).contains(Int(curr)) ? Int(curr) : start
        let boundary = (start..<stop).contains(Int(bnry)) ? Int(bnry) : stop - 1
        // Pages from CURR up to (not including) BNRY are free; CURR == BNRY is a full ring.
        guard pages <= (boundary - page + ringPages) % ringPages else { return .full }
        var next = page + pages
        if next >= stop { next -= ringPages }
        let frame = rxBuffer + Self.headerSize
        let status = NE2000Bits.receiveOK | (frame.load(as: UInt8.self) & 1 != 0 ? NE2000Bits.receivedMulticast : 0)
        let count = padded + 4
        var address = page << 8
        func put(_ v: UInt8) {
            cardWrite(UInt16(address), v)
            address += 1
            if address == stop << 8 { address = start << 8 }
        }
        put(status)
        put(UInt8(next))
        put(UInt8(truncatingIfNeeded: count))
        put(UInt8(truncatingIfNeeded: count >> 8))
        for i in 0..<padded { put(i < length ? frame.load(fromByteOffset: i, as: UInt8.self) : 0) }
        localAddress = UInt16(address)
        curr = UInt8(next)
        rsr = status
        isr |= NE2000Interrupt.received
        return .stored
    }
}
