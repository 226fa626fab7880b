// The guest's end of one channel for a device under test: two rings, packets in from the input,
// the device's packets out, and a packet script that turns input bytes into ring packets.

import VMBusChannel
import VMBusRing
import VMBusWire

/// One packet read from or written to a ring.
struct FuzzPacket {
    var type: PacketType
    var flags: UInt16
    var transactionID: UInt64
    var ext: [UInt8]
    var payload: [UInt8]
}

/// A channel between the harness (the guest) and a device (the host end): the device gets
/// `endpoint`; the harness writes the guest→host ring and reads the host→guest ring. Whatever the
/// device writes must read back as a well-formed ring (an invariant), unless the input tampered
/// with the host→guest ring's shared fields.
final class FuzzChannel {
    let pages: FuzzPages
    let dataBytes: Int
    let toDevice: RingBuffer
    let fromDevice: RingBuffer
    var writer: RingWriter
    var reader: RingReader
    let endpoint: ChannelEndpoint
    let deviceSignals: FuzzCounter
    /// False once the input wrote into the host→guest ring's control page.
    private(set) var trusted = true

    /// Rings of `dataBytes` (a multiple of 8, at least 64) each, after a control page.
    init(relid: UInt32, dataBytes: Int) throws(RingError) {
        let ringBytes = 4096 + dataBytes
        let pages = FuzzPages(bytes: 2 * ringBytes)
        let toDevice = try RingBuffer(control: pages.base, data: pages.base + 4096, dataSize: dataBytes)
        let fromDevice = try RingBuffer(control: pages.base + ringBytes, data: pages.base + ringBytes + 4096, dataSize: dataBytes)
        toDevice.initializeControlPage()
        fromDevice.initializeControlPage()
        let counter = FuzzCounter()
        self.dataBytes = dataBytes
        self.pages = pages
        self.toDevice = toDevice
        self.fromDevice = fromDevice
        deviceSignals = counter
        writer = try RingWriter(ring: toDevice)
        reader = try RingReader(ring: fromDevice)
        endpoint = try ChannelEndpoint(relid: relid, incoming: toDevice, outgoing: fromDevice) { counter.value += 1 }
    }

    /// Writes one packet to the device's inbound ring and publishes it. False when it did not fit
    /// (or the ring refused it: an extension that is not whole words).
    @discardableResult
    func send(_ p: FuzzPacket) -> Bool {
        let written = (try? writer.tryWrite(type: p.type, flags: p.flags, transactionID: p.transactionID, extension: p.ext,
                                            payload: p.payload)) ?? false
        _ = writer.commit()
        return written
    }

    /// Reads up to `limit` packets the device wrote and frees their space.
    @discardableResult
    func drain(limit: Int = 256) -> [FuzzPacket] {
        var out: [FuzzPacket] = []
        do throws(RingError) {
            while out.count < limit, let p = try reader.next() {
                out.append(FuzzPacket(type: p.type, flags: p.descriptor.flags, transactionID: p.transactionID,
                                      ext: p.extensionBytes(), payload: p.payloadBytes()))
            }
        } catch {
            fuzzCheck(!trusted, "the device wrote a malformed ring: \(error)")
        }
        _ = reader.commit()
        for p in out { fuzzConsume(p.payload) }
        return out
    }

    /// Scribbles one shared field or data byte range, as a hostile guest may at any time.
    func tamper(_ r: inout FuzzReader) {
        let op = r.u8()
        let offsets = [RingControlPage.writeIndex, RingControlPage.readIndex, RingControlPage.interruptMask,
                       RingControlPage.pendingSendSize, RingControlPage.featureBits]
        let field = offsets[Int(op >> 1) % offsets.count]
        let value = r.u32()
        switch op & 0x81 {
        case 0x00:
            // The device's inbound ring: the guest owns the write index, and may lie about all of it.
            toDevice.control.storeBytes(of: value, toByteOffset: field, as: UInt32.self)
        case 0x01:
            // The device's outbound ring: a guest reader that lies about how far it read.
            trusted = false
            fromDevice.control.storeBytes(of: value, toByteOffset: field, as: UInt32.self)
        default:
            // Rewrite bytes of a packet already published (a guest racing the host's reads).
            let bytes = r.take(Int(op >> 2) & 0x1F)
            let at = Int(value % UInt32(dataBytes))
            let n = min(bytes.count, dataBytes - at)
            if n > 0 { bytes.withUnsafeBytes { (toDevice.data + at).copyMemory(from: $0.baseAddress!, byteCount: n) } }
        }
    }
}

/// Turns input bytes into ring packets.
enum FuzzPacketScript {
    static let types: [PacketType] = [
        .dataInBand, .dataUsingGPADirect, .completion, .dataUsingTransferPages, .dataInBand, .dataUsingGPADirect,
        .dataUsingGPADL, .synch, .addTransferPageSet, .removeTransferPageSet, .establishGPADL, .teardownGPADL,
        .cancelRequest, .dataUsingAdditionalPacket, .additionalData, .completion,
    ]

    /// One packet. Header byte: bits 0–3 the type, bit 4 completion requested, bit 5 GPA ranges
    /// built from a description (pages inside `pages` guest pages, mostly), bit 6 a 64-bit
    /// transaction id, bit 7 an extension of raw words.
    static func read(_ r: inout FuzzReader, pages: Int, payloadLimit: Int) -> FuzzPacket {
        let header = r.u8()
        let type = types[Int(header & 0x0F)]
        let flags: UInt16 = header & 0x10 != 0 ? PacketDescriptor.flagCompletionRequested : 0
        let transactionID = header & 0x40 != 0 ? r.u64() : UInt64(r.u16())
        var ext: [UInt8] = []
        if header & 0x20 != 0 {
            ext = GpaDirectHeader.extensionBytes(for: ranges(&r, pages: pages))
        } else if header & 0x80 != 0 {
            let words = Int(r.u8()) % 9
            ext = r.padded(8 * words)
        }
        let payload = r.blob(limit: payloadLimit)
        return FuzzPacket(type: type, flags: flags, transactionID: transactionID, ext: ext, payload: payload)
    }

    /// One to three GPA ranges of at most 64 pages each.
    static func ranges(_ r: inout FuzzReader, pages: Int) -> [GpaRange] {
        let count = 1 + Int(r.u8() % 3)
        var out: [GpaRange] = []
        for _ in 0..<count {
            let mode = r.u8()
            let offset = UInt32(r.u16() % 4096)
            var length = max(1, UInt32(r.u16()) << UInt32(mode & 3))
            if GpaRange.pageCount(byteCount: length, byteOffset: offset) > 64 { length = 64 * 4096 - offset }
            let n = GpaRange.pageCount(byteCount: length, byteOffset: offset)
            var pfns: [UInt64] = []
            let first = UInt64(r.below(max(pages, 1)))
            for i in 0..<n {
                switch (mode >> 2) & 3 {
                case 0: pfns.append(first &+ UInt64(i))  // consecutive (may run past the end)
                case 1: pfns.append(UInt64(r.below(max(pages, 1))))  // scattered inside memory
                case 2: pfns.append(r.u64())  // anything
                default: pfns.append(i == n - 1 ? UInt64(pages) &+ UInt64(r.u8()) : first &+ UInt64(i))  // the last page just outside
                }
            }
            out.append(GpaRange(byteCount: length, byteOffset: offset, pfns: pfns))
        }
        return out
    }
}
