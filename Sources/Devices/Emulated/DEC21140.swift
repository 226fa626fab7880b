// An emulated DEC 21140A Fast Ethernet controller (Hyper-V's "legacy network adapter"): CSRs through
// port I/O, transmit and receive descriptor rings in guest memory, frames to and from a FramePort.

import CSystem
import Glibc
import GuestMemory
import SyntheticNetwork

/// The 21140A's register file and its two DMA processes. The guest reaches the chip through 16
/// CSRs at 8-byte steps of BAR 0 (one trap each); everything else — descriptors and buffers —
/// lives in guest memory and costs no trap, which is the point of the device.
///
/// - **Transmit.** A write to CSR1 (poll demand), or ST turning on in CSR6, runs the transmit
///   process: from the current descriptor, every descriptor the chip owns is taken. A setup
///   frame (TDES1.SET, 192 bytes) loads the address filter; other descriptors gather buffer 1
///   and buffer 2 (or buffer 1 and the chained next descriptor) from FS to LS into one frame,
///   padded to 60 bytes unless TDES1.DPD, sent with a zero virtio header. The last descriptor gets its status (OWN clear) and, with
///   TDES1.IC, CSR5.TI. The process suspends at the first descriptor the guest owns (CSR5.TU).
/// - **Receive.** With SR on, frames from the port that pass the filter (perfect, inverse, hash
///   with one perfect address, hash only; PR and PM as CSR6 says) are padded to 60 bytes, given
///   their FCS and written across as many owned descriptors as they need, FS on the first, LS and
///   the frame length (FCS included) on the last; then CSR5.RI. With no owned descriptor the
///   process suspends (CSR5.RU) and the frame waits in the chip; a receive poll demand (CSR2) or
///   any other register access lets it retry, and the port is read no further meanwhile.
/// - **Interrupts.** CSR5's summary bits NIS and AIS gather the enabled normal and abnormal
///   events; the line is high while an enabled summary is set. As on the chip, events that come
///   while the line is already high raise no new edge — the guest's handler takes them all in one
///   pass (the chip's own mitigation; the 21140A has no mitigation timer, that came with the
///   21143's CSR11), and transmit interrupts come only from descriptors with IC.
/// - **Serial ROM.** CSR9 bit-bangs a 93C46 holding the DEC-format SROM with the MAC.
///
/// Hostile descriptor rings are bounded, never followed blindly: a descriptor or buffer outside
/// guest memory, or a PCI command register without bus mastering, is a fatal bus error (CSR5.FBE,
/// both processes stopped) as on a real PCI master abort; one poll demand takes at most
/// `walkLimit` descriptors (a ring that points at itself ends there); a frame over 1518 bytes
/// ends with TDES0.ES|TO and CSR5.TJT; a frame that would need more than `descriptorsPerFrame`
/// receive descriptors is dropped. Not thread-safe: the partition thread calls everything.
public final class DEC21140: PCIIORegion, LegacyNICDevice {
    public static let registerBytes = 128
    public static let maximumFrame = 1518
    public static let walkLimit = 4096
    public static let descriptorsPerFrame = 16
    static let headerSize = VirtioNetHeader.size
    static let minimumFrame = 60

    public private(set) var base: UInt16 = 0
    public let mac: [UInt8]
    public let port: any FramePort
    public let line: InterruptLine
    /// Guest memory, while a guest is attached.
    public var memory: GuestPhysicalMemory?
    /// Whether the PCI command register lets the chip master the bus.
    var masterEnabled: () -> Bool = { true }

    public private(set) var txFrames: UInt64 = 0
    public private(set) var rxFrames: UInt64 = 0
    public private(set) var txDrops: UInt64 = 0
    public private(set) var rxDrops: UInt64 = 0
    public private(set) var rxFiltered: UInt64 = 0
    public private(set) var setupFrames: UInt64 = 0
    public private(set) var busErrors: UInt64 = 0

    private var srom: SerialROM93C46
    private var busMode = TulipBusMode.resetValue
    private var receiveList: UInt32 = 0, transmitList: UInt32 = 0
    private var receiveCurrent: UInt32 = 0, transmitCurrent: UInt32 = 0
    private var status: UInt32 = 0
    private var mode: UInt32 = TulipMode.mustBeOne
    private var enable: UInt32 = 0
    private var missed: UInt32 = 0
    private var serial: UInt32 = 0
    private var timer: UInt32 = 0, generalPort: UInt32 = 0, watchdog: UInt32 = 0
    private var receiveState = TulipStatus.stateStopped
    private var transmitState = TulipStatus.stateStopped
    /// The address filter: 16 perfect addresses, or the hash table (64 bytes) and one address.
    private var perfect = [UInt8](repeating: 0, count: 96)
    private var hash = [UInt8](repeating: 0, count: 64)

    private let rxBuffer: UnsafeMutableRawPointer
    private let rxIOV: UnsafeMutablePointer<iovec>
    private let txHeader: UnsafeMutableRawPointer
    private let txIOV: UnsafeMutablePointer<iovec>
    /// Zeros the chip pads short frames with.
    private let txPad: UnsafeMutableRawPointer
    static let txSegments = 2 * descriptorsPerFrame
    /// Length of a frame read from the port that waits for receive descriptors (0: none).
    private var staged = 0
    /// The receive descriptors a frame goes to (kept to avoid an allocation per frame).
    private var chain: [Descriptor] = []
    /// The frame being gathered from transmit descriptors: buffers in `txIOV[1...]`, bytes, and
    /// whether it grew past the maximum. It survives a poll demand that ends before its LS
    /// descriptor, as on the chip.
    private var txSegmentCount = 0, txLength = 0, txOversize = false

    public init(mac: [UInt8], port: any FramePort, line: InterruptLine) {
        precondition(mac.count == 6, "a MAC is 6 bytes")
        self.mac = mac
        self.port = port
        self.line = line
        srom = SerialROM93C46(contents: SerialROM93C46.tulipSROM(mac: mac))
        // A frame, one byte to see a longer one, and the FCS the chip appends.
        rxBuffer = .allocate(byteCount: Self.headerSize + Self.maximumFrame + 8, alignment: 16)
        chain.reserveCapacity(Self.descriptorsPerFrame)
        rxIOV = .allocate(capacity: 2)
        rxIOV[0] = iovec(iov_base: rxBuffer, iov_len: Self.headerSize)
        rxIOV[1] = iovec(iov_base: rxBuffer + Self.headerSize, iov_len: Self.maximumFrame + 1)
        txHeader = .allocate(byteCount: Self.headerSize, alignment: 16)
        txHeader.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerSize)
        txIOV = .allocate(capacity: 2 + Self.txSegments)
        txPad = .allocate(byteCount: Self.minimumFrame, alignment: 16)
        txPad.initializeMemory(as: UInt8.self, repeating: 0, count: Self.minimumFrame)
        port.setOffload(0)  // whole, checksummed frames: the chip has no offloads
        reset()
    }

    deinit {
        rxBuffer.deallocate()
        rxIOV.deallocate()
        txHeader.deallocate()
        txIOV.deallocate()
        txPad.deallocate()
    }

    /// Moved by the PCI bus (BAR 0).
    public var portRanges: [ClosedRange<UInt16>] { [] }
    public func relocate(_ base: UInt16) { self.base = base }

    /// The port's descriptor, readable when frames wait.
    public var descriptor: Int32 { port.descriptor }

    /// Whether `pollReceive` would take frames now.
    public var acceptsFrames: Bool { receiveState == TulipStatus.receiveWaiting && staged == 0 }

    public func reset() {
        softwareReset()
        perfect = [UInt8](repeating: 0, count: 96)
        hash = [UInt8](repeating: 0, count: 64)
        staged = 0
    }

    /// CSR0.SWR: every register to its reset value, both processes stopped.
    private func softwareReset() {
        busMode = TulipBusMode.resetValue
        receiveList = 0; transmitList = 0; receiveCurrent = 0; transmitCurrent = 0
        status = 0
        mode = TulipMode.mustBeOne
        enable = 0
        missed = 0
        serial = 0
        timer = 0; generalPort = 0; watchdog = 0
        receiveState = TulipStatus.stateStopped
        transmitState = TulipStatus.stateStopped
        txSegmentCount = 0
        txLength = 0
        txOversize = false
        updateLine()
    }

    // MARK: Registers

    public func read(port: UInt16, size: Int) -> UInt32 {
        let offset = Int(port &- base)
        guard offset >= 0, offset < Self.registerBytes else { return 0xFFFF_FFFF }
        defer { retry() }
        let value = csr(offset >> 3)
        // Narrow accesses see the bytes of the CSR at their offset.
        return value >> (8 * UInt32(offset & 7 < 4 ? offset & 3 : 0)) | (offset & 7 >= 4 ? 0xFFFF_FFFF : 0)
    }

    private func csr(_ n: Int) -> UInt32 {
        switch n {
        case TulipCSR.busMode: return busMode
        case TulipCSR.transmitPoll, TulipCSR.receivePoll: return 0xFFFF_FFFF
        case TulipCSR.receiveList: return receiveList
        case TulipCSR.transmitList: return transmitList
        case TulipCSR.status:
            return status | receiveState << TulipStatus.receiveStateShift | transmitState << TulipStatus.transmitStateShift
        case TulipCSR.operationMode: return mode
        case TulipCSR.interruptEnable: return enable
        case TulipCSR.missedFrames:
            defer { missed = 0 }
            return missed
        case TulipCSR.serialROM:
            return serial & ~TulipSerialROM.dataOut | (srom.dataOut ? TulipSerialROM.dataOut : 0) | 0x0008_0000  // MDI idle high
        case TulipCSR.timer: return timer
        case TulipCSR.generalPort: return generalPort
        case TulipCSR.watchdog: return watchdog
        default: return 0xFFFF_FFFF
        }
    }

    public func write(port: UInt16, size: Int, value: UInt32) {
        let offset = Int(port &- base)
        guard offset >= 0, offset < Self.registerBytes, offset & 7 == 0 else { return }  // CSRs take longword writes
        let v = size == 4 ? value : value & (size == 2 ? 0xFFFF : 0xFF)
        switch offset >> 3 {
        case TulipCSR.busMode:
            if v & TulipBusMode.softwareReset != 0 { return softwareReset() }
            busMode = v
        case TulipCSR.transmitPoll:
            if transmitState != TulipStatus.stateStopped { transmit() }
        case TulipCSR.receivePoll:
            if receiveState != TulipStatus.stateStopped { pollReceive() }
        case TulipCSR.receiveList:
            receiveList = v & ~3
            if receiveState == TulipStatus.stateStopped { receiveCurrent = receiveList }
        case TulipCSR.transmitList:
            transmitList = v & ~3
            if transmitState == TulipStatus.stateStopped { transmitCurrent = transmitList }
        case TulipCSR.status:
            status &= ~(v & TulipStatus.clearable)
        case TulipCSR.operationMode:
            let was = mode
            mode = v & ~TulipMode.filterBits | mode & TulipMode.filterBits | TulipMode.mustBeOne
            if mode & TulipMode.startTransmit != 0 && was & TulipMode.startTransmit == 0 {
                transmitState = TulipStatus.transmitSuspended
                transmit()
            } else if mode & TulipMode.startTransmit == 0 && was & TulipMode.startTransmit != 0 {
                transmitState = TulipStatus.stateStopped
                transmitCurrent = transmitList
                status |= TulipStatus.transmitStopped
            }
            if mode & TulipMode.startReceive != 0 && was & TulipMode.startReceive == 0 {
                receiveState = TulipStatus.receiveWaiting
                _ = pollReceive()
            } else if mode & TulipMode.startReceive == 0 && was & TulipMode.startReceive != 0 {
                receiveState = TulipStatus.stateStopped
                receiveCurrent = receiveList
                status |= TulipStatus.receiveStopped
            }
        case TulipCSR.interruptEnable: enable = v & TulipStatus.clearable
        case TulipCSR.serialROM:
            serial = v
            srom.write(chipSelect: v & TulipSerialROM.select != 0 && v & TulipSerialROM.chipSelect != 0,
                       clock: v & TulipSerialROM.clock != 0, dataIn: v & TulipSerialROM.dataIn != 0)
        case TulipCSR.timer: timer = v & 0x0001_FFFF
        case TulipCSR.generalPort: generalPort = v & 0x1FF
        case TulipCSR.watchdog: watchdog = v
        default: break
        }
        retry()
        updateLine()
    }

    private func updateLine() {
        let normal = status & TulipStatus.normal & enable
        let abnormal = status & TulipStatus.abnormal & enable
        status = status & ~(TulipStatus.normalSummary | TulipStatus.abnormalSummary)
            | (normal != 0 ? TulipStatus.normalSummary : 0) | (abnormal != 0 ? TulipStatus.abnormalSummary : 0)
        line.set(status & enable & (TulipStatus.normalSummary | TulipStatus.abnormalSummary) != 0)
    }

    /// A register access while a frame waits for descriptors: the chip looks again (staying
    /// suspended, RU not raised again, if there is still none).
    private func retry() {
        if staged != 0 && receiveState == TulipStatus.receiveSuspended { pollReceive() }
    }

    /// PCI master abort: FBE, and both processes stop until the driver resets the chip.
    private func busError() {
        busErrors &+= 1
        status |= TulipStatus.fatalBusError
        receiveState = TulipStatus.stateStopped
        transmitState = TulipStatus.stateStopped
        staged = 0
        updateLine()
    }

    // MARK: Descriptors

    private struct Descriptor {
        var address: UInt32
        var status: UInt32
        var control: UInt32
        var buffer1: UInt32
        var buffer2: UInt32
        var size1: Int { Int(control & TulipDescriptor.sizeMask) }
        var size2: Int { Int(control >> TulipDescriptor.size2Shift & TulipDescriptor.sizeMask) }
    }

    private func load(_ address: UInt32) -> Descriptor? {
        guard masterEnabled(), let p = try? memory?.pointer(gpa: UInt64(address), count: 16) else { return nil }
        func word(_ i: Int) -> UInt32 { UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
        // The status word first, with acquire: what the guest wrote before handing the descriptor over is visible.
        let status = UInt32(littleEndian: viridian_load_acquire_u32(p))
        return Descriptor(address: address, status: status, control: word(1), buffer1: word(2), buffer2: word(3))
    }

    private func storeStatus(_ d: Descriptor, _ value: UInt32) {
        guard let p = try? memory?.pointer(gpa: UInt64(d.address), count: 4) else { return }
        viridian_store_release_u32(p, value.littleEndian)  // after the data the descriptor describes
    }

    /// The descriptor after `d` in the list at `list`: the ring's next (with the skip length),
    /// the chained one, or the list's start after an end-of-ring mark.
    private func next(_ d: Descriptor, list: UInt32) -> UInt32 {
        if d.control & TulipDescriptor.endOfRing != 0 { return list }
        if d.control & TulipDescriptor.chained != 0 { return d.buffer2 & ~3 }
        let skip = (busMode >> TulipBusMode.skipShift & TulipBusMode.skipMask) * 4
        return d.address &+ 16 &+ skip
    }

    // MARK: Transmit

    private func transmit() {
        var walked = 0
        transmitState = TulipStatus.transmitSuspended
        while walked < Self.walkLimit {
            walked += 1
            guard let d = load(transmitCurrent) else { return busError() }
            guard d.status & TulipDescriptor.own != 0 else {
                status |= TulipStatus.transmitUnavailable
                break
            }
            if d.control & TulipDescriptor.setupPacket != 0 {
                guard setup(d) else { return busError() }
                storeStatus(d, 0)
                if d.control & TulipDescriptor.interruptOnCompletion != 0 { status |= TulipStatus.transmitInterrupt }
                transmitCurrent = next(d, list: transmitList)
                continue
            }
            if d.control & TulipDescriptor.firstSegment != 0 {
                txSegmentCount = 0
                txLength = 0
                txOversize = false
            }
            /// Adds one buffer to the frame; false on a bus error.
            func gather(_ address: UInt32, _ size: Int) -> Bool {
                guard size > 0 else { return true }
                if txLength + size > Self.maximumFrame || txSegmentCount == Self.txSegments {
                    txOversize = true
                    return true
                }
                guard masterEnabled(), let p = try? memory?.pointer(gpa: UInt64(address), count: size) else { return false }
                txSegmentCount += 1
                txIOV[txSegmentCount] = iovec(iov_base: p, iov_len: size)
                txLength += size
                return true
            }
            guard gather(d.buffer1, d.size1), d.control & TulipDescriptor.chained != 0 || gather(d.buffer2, d.size2) else { return busError() }
            var result: UInt32 = 0
            if d.control & TulipDescriptor.lastSegment != 0 {
                if txOversize {
                    result = TulipDescriptor.errorSummary | TulipDescriptor.jabberTimeout
                    status |= TulipStatus.transmitJabber
                    txDrops &+= 1
                } else if txLength > 0 {
                    txIOV[0] = iovec(iov_base: txHeader, iov_len: Self.headerSize)
                    var count = txSegmentCount + 1
                    if txLength < Self.minimumFrame && d.control & TulipDescriptor.disablePadding == 0 {
                        txIOV[count] = iovec(iov_base: txPad, iov_len: Self.minimumFrame - txLength)
                        count += 1
                    }
                    if port.send(UnsafeBufferPointer(start: txIOV, count: count)) { txFrames &+= 1 } else { txDrops &+= 1 }
                }
                txSegmentCount = 0
                txLength = 0
                txOversize = false
                if d.control & TulipDescriptor.interruptOnCompletion != 0 { status |= TulipStatus.transmitInterrupt }
            }
            storeStatus(d, result)
            transmitCurrent = next(d, list: transmitList)
        }
        updateLine()
    }

    /// Loads the filter from a setup frame; false if its buffer is outside memory.
    private func setup(_ d: Descriptor) -> Bool {
        guard d.size1 == TulipDescriptor.setupFrameSize else { return true }  // not a setup frame the chip takes: ignored
        guard masterEnabled(), let p = try? memory?.pointer(gpa: UInt64(d.buffer1), count: d.size1) else { return false }
        setupFrames &+= 1
        // Each longword carries two filter bytes in its low half.
        func pair(_ longword: Int) -> (UInt8, UInt8) { (p.load(fromByteOffset: 4 * longword, as: UInt8.self), p.load(fromByteOffset: 4 * longword + 1, as: UInt8.self)) }
        let type = (d.control & TulipDescriptor.filterType1 != 0 ? 2 : 0) | (d.control & TulipDescriptor.filterType0 != 0 ? 1 : 0)
        mode &= ~TulipMode.filterBits
        switch type {
        case 0, 2:  // perfect, inverse perfect: 16 addresses of three longwords
            for i in 0..<48 {
                let (a, b) = pair(i)
                perfect[2 * i] = a
                perfect[2 * i + 1] = b
            }
            if type == 2 { mode |= TulipMode.inverseFilter }
        default:  // hash (with one perfect address in longwords 39–41), hash only
            for i in 0..<32 {
                let (a, b) = pair(i)
                hash[2 * i] = a
                hash[2 * i + 1] = b
            }
            for i in 0..<3 {
                let (a, b) = pair(39 + i)
                perfect[2 * i] = a
                perfect[2 * i + 1] = b
            }
            mode |= type == 3 ? TulipMode.hashOnly | TulipMode.hashPerfect : TulipMode.hashPerfect
        }
        return true
    }

    // MARK: Receive

    /// Whether the filter takes a frame for `destination`.
    private func accepts(_ destination: UnsafeRawPointer) -> Bool {
        if mode & TulipMode.promiscuous != 0 { return true }
        let d = UnsafeRawBufferPointer(start: destination, count: 6)
        let multicast = d[0] & 1 != 0
        if multicast && mode & TulipMode.passMulticast != 0 { return true }
        func matches(_ entry: Int) -> Bool { (0..<6).allSatisfy { perfect[6 * entry + $0] == d[$0] } }
        if mode & TulipMode.hashPerfect != 0 {
            if !multicast && mode & TulipMode.hashOnly == 0 { return matches(0) }
            let index = Int(Self.crcLE(d) & 0x1FF)
            return hash[index >> 3] & (1 << (index & 7)) != 0
        }
        let hit = (0..<16).contains { matches($0) }
        return mode & TulipMode.inverseFilter != 0 ? !hit : hit
    }

    /// Takes frames from the port into the receive ring while it has room; false when the chip
    /// stopped taking them (stopped, suspended with a frame waiting): stop watching the port until
    /// a register access.
    @discardableResult
    public func pollReceive() -> Bool {
        defer { updateLine() }
        var budget = 256
        while receiveState != TulipStatus.stateStopped && budget > 0 {
            budget -= 1
            if staged == 0 {
                guard receiveState == TulipStatus.receiveWaiting else { break }
                guard let n = port.receive(UnsafeBufferPointer(start: rxIOV, count: 2)) else { return true }
                let length = n - Self.headerSize
                guard length >= 14, length <= Self.maximumFrame else {
                    rxDrops &+= 1
                    continue
                }
                guard accepts(rxBuffer + Self.headerSize) else {
                    rxFiltered &+= 1
                    continue
                }
                staged = length
            }
            switch store(length: staged) {
            case .stored:
                rxFrames &+= 1
                staged = 0
                receiveState = TulipStatus.receiveWaiting
            case .dropped:
                rxDrops &+= 1
                staged = 0
                receiveState = TulipStatus.receiveWaiting
            case .noDescriptor:
                if receiveState != TulipStatus.receiveSuspended {
                    receiveState = TulipStatus.receiveSuspended
                    status |= TulipStatus.receiveUnavailable
                }
                return false
            case .busError:
                busError()
                return false
            }
        }
        return receiveState == TulipStatus.receiveWaiting
    }

    private enum StoreResult { case stored, dropped, noDescriptor, busError }

    /// Writes the staged frame, padded and with its FCS, across owned descriptors from the current one.
    private func store(length: Int) -> StoreResult {
        let frame = rxBuffer + Self.headerSize
        let padded = max(length, Self.minimumFrame)
        if padded > length { (frame + length).initializeMemory(as: UInt8.self, repeating: 0, count: padded - length) }
        let fcs = Self.crcLE(UnsafeRawBufferPointer(start: frame, count: padded)) ^ 0xFFFF_FFFF
        (frame + padded).storeBytes(of: fcs.littleEndian, as: UInt32.self)  // rxBuffer has room: maximumFrame + 1 + header
        let total = padded + 4
        // Find enough owned descriptors before writing any (the chip would otherwise truncate).
        chain.removeAll(keepingCapacity: true)
        var capacity = 0
        var address = receiveCurrent
        while capacity < total {
            guard chain.count < Self.descriptorsPerFrame else { return .dropped }
            guard let d = load(address) else { return .busError }
            guard d.status & TulipDescriptor.own != 0 else { return .noDescriptor }
            chain.append(d)
            capacity += d.size1 + (d.control & TulipDescriptor.chained != 0 ? 0 : d.size2)
            address = next(d, list: receiveList)
        }
        var at = 0
        /// Copies the next part of the frame into one buffer; false on a bus error.
        func fill(_ buffer: UInt32, _ size: Int) -> Bool {
            guard size > 0, at < total else { return true }
            let n = min(size, total - at)
            guard masterEnabled(), let p = try? memory?.pointer(gpa: UInt64(buffer), count: n) else { return false }
            p.copyMemory(from: frame + at, byteCount: n)
            at += n
            return true
        }
        for i in chain.indices {
            let d = chain[i]
            guard fill(d.buffer1, d.size1), d.control & TulipDescriptor.chained != 0 || fill(d.buffer2, d.size2) else { return .busError }
            var value: UInt32 = i == 0 ? TulipDescriptor.firstDescriptor : 0
            if i == chain.count - 1 {
                value |= TulipDescriptor.lastDescriptor | UInt32(total) << TulipDescriptor.frameLengthShift
                if frame.load(as: UInt8.self) & 1 != 0 { value |= TulipDescriptor.multicastFrame }
                let type = UInt16(frame.load(fromByteOffset: 12, as: UInt8.self)) << 8 | UInt16(frame.load(fromByteOffset: 13, as: UInt8.self))
                if type >= 0x0600 { value |= TulipDescriptor.frameType }
            }
            storeStatus(d, value)
        }
        receiveCurrent = address
        status |= TulipStatus.receiveInterrupt
        return .stored
    }

    /// The Ethernet CRC-32 of `bytes`, reflected and not inverted at the end (Linux's ether_crc_le).
    public static func crcLE(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ crc >> 8 }
        return crc
    }

    static let crcTable: [UInt32] = (0..<256).map { i in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ c >> 1 : c >> 1 }
        return c
    }
}

/// The 21140A's PCI function (1011:0009, revision 0x22, class 02 00 00): BAR 0 the CSRs (128
/// I/O ports), interrupt pin A routed to the line firmware wrote in the interrupt line register.
public final class DEC21140Function: PCIFunction {
    public static let vendor: UInt16 = 0x1011, device: UInt16 = 0x0009
    /// After the PIIX4 bus-master block (0xC040–0xC04F): 0xC000 overlapped it, so with both one did not decode.
    public static let defaultBase: UInt16 = 0xC080
    public let config: PCIConfigSpace
    public let chip: DEC21140

    public init(chip: DEC21140, base: UInt16 = defaultBase) {
        self.chip = chip
        config = PCIConfigSpace(vendor: Self.vendor, device: Self.device, revision: 0x22, classCode: 0x02, subclass: 0x00, progIF: 0)
        config.ioBar(0, size: DEC21140.registerBytes, at: base)
        config.set(PCIConfig.command, UInt8(PCIConfig.ioSpace))
        config.set(PCIConfig.interruptPin, 1)
        config.set(PCIConfig.interruptLine, UInt8(truncatingIfNeeded: chip.line.irq))
        config.set(PCIConfig.subsystemVendorID, 0x14)
        config.set(PCIConfig.subsystemVendorID + 1, 0x14)
        let config = config
        chip.masterEnabled = { config.command & PCIConfig.busMaster != 0 }
    }

    public var ioRegions: [Int: any PCIIORegion] { [0: chip] }

    public func resetFunction() { chip.reset() }
}
