// Targets "ring-reader" and "ring-writer": one ring whose shared fields and contents come from a
// hostile peer, read (RingReader, ChannelEndpoint.drainInbound) or written (RingWriter).

import VMBusChannel
import VMBusRing
import VMBusWire

let ringReaderTarget = FuzzTarget(
    name: "ring-reader",
    summary: "RingReader.next/putBack/commit/unmask and ChannelEndpoint.drainInbound over indices and packets from the input"
) { data in
    var r = FuzzReader(data)
    RingFuzz.read(&r)
}

let ringWriterTarget = FuzzTarget(
    name: "ring-writer",
    summary: "RingWriter.tryWrite/commit/requestSpace against a reader that lies; honest runs read back exactly what was written"
) { data in
    var r = FuzzReader(data)
    RingFuzz.write(&r)
}

/// Observes committed packets the way the tracer does.
final class FuzzPacketObserver: PacketObserver {
    func observe(relid: UInt32, outgoing: Bool, packet: IncomingPacket) {
        fuzzConsume(UInt64(packet.payloadLength) ^ UInt64(packet.extensionLength) ^ packet.transactionID)
        fuzzConsume(packet.payloadBytes())
    }
}

enum RingFuzz {
    /// Ring A (control page, up to 4 KiB of data) and ring B (the endpoint's outgoing ring).
    static let pages = FuzzPages(bytes: 4 * 4096)
    static let shared = [RingControlPage.writeIndex, RingControlPage.readIndex, RingControlPage.interruptMask,
                         RingControlPage.pendingSendSize, RingControlPage.featureBits]

    /// A data size of 64…4096 bytes (a multiple of 8) and ring A over it.
    static func makeRing(_ r: inout FuzzReader) -> RingBuffer? {
        let dataSize = 8 * (8 + Int(r.u16()) % 505)
        return try? RingBuffer(control: pages.base, data: pages.base + 4096, dataSize: dataSize)
    }

    /// An index for a ring of `size` bytes: mostly valid, sometimes anything.
    static func index(_ r: inout FuzzReader, size: UInt32, raw: Bool) -> UInt32 {
        let v = r.u32()
        return raw ? v : (v % size) & ~7
    }

    static func poke(_ ring: RingBuffer, _ r: inout FuzzReader) {
        let field = shared[Int(r.u8()) % shared.count]
        ring.control.storeBytes(of: r.u32(), toByteOffset: field, as: UInt32.self)
    }

    // MARK: Reader

    static func read(_ r: inout FuzzReader) {
        pages.zero()
        let mode = r.u8()
        guard let ring = makeRing(&r) else { return }
        let size = ring.dataSize
        let raw = mode & 1 != 0
        let read = index(&r, size: size, raw: raw)
        let write = index(&r, size: size, raw: raw)
        ring.control.storeBytes(of: write, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
        ring.control.storeBytes(of: read, toByteOffset: RingControlPage.readIndex, as: UInt32.self)
        ring.control.storeBytes(of: UInt32(r.u8() & 1), toByteOffset: RingControlPage.interruptMask, as: UInt32.self)
        ring.control.storeBytes(of: r.u32(), toByteOffset: RingControlPage.pendingSendSize, as: UInt32.self)
        ring.control.storeBytes(of: UInt32(r.u8() & 1), toByteOffset: RingControlPage.featureBits, as: UInt32.self)
        let contents = r.take(Int(size))
        contents.withUnsafeBytes { if !contents.isEmpty { ring.data.copyMemory(from: $0.baseAddress!, byteCount: contents.count) } }
        fuzzConsume(UInt64(ring.fill) ^ UInt64(ring.writeIndex) ^ UInt64(ring.readIndex))
        if mode & 2 != 0 {
            drainThroughEndpoint(ring, &r)
        } else {
            readDirectly(ring, &r)
        }
    }

    static func readDirectly(_ ring: RingBuffer, _ r: inout FuzzReader) {
        var reader: RingReader
        do { reader = try RingReader(ring: ring) } catch { return }
        var held: IncomingPacket?
        var steps = 0
        loop: while steps < 128 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op & 7 {
            case 0, 1, 2, 3:
                do throws(RingError) {
                    guard let p = try reader.next() else { continue }
                    inspect(p, ring: ring, &r)
                    if held == nil && op & 0x10 != 0 { held = p }
                } catch {
                    if op & 0x20 == 0 { break loop }
                }
            case 4:
                _ = reader.commit()
                held = nil
            case 5:
                if let h = held { _ = try? reader.putBack(h) }
                held = nil
            case 6:
                poke(ring, &r)
            default:
                reader.mask()
                _ = reader.unmask()
                _ = reader.hasData()
                reader.forEachUncommitted { p in fuzzConsume(UInt64(p.payloadLength) ^ p.transactionID) }
            }
        }
        fuzzConsume(reader.packetsRead)
    }

    static func drainThroughEndpoint(_ ring: RingBuffer, _ r: inout FuzzReader) {
        let outBase = pages.base + 2 * 4096
        guard let outgoing = try? RingBuffer(control: outBase, data: outBase + 4096, dataSize: 4096) else { return }
        outgoing.initializeControlPage()
        let signals = FuzzCounter()
        guard let endpoint = try? ChannelEndpoint(relid: 1, incoming: ring, outgoing: outgoing, signal: { signals.value += 1 }) else { return }
        let observer = FuzzPacketObserver()
        endpoint.packetObserver = observer
        let echo = r.bool()
        for _ in 0..<4 {
            let failure = endpoint.drainInbound { p in
                inspect(p, ring: ring, &r)
                // An echo device: every packet back as a completion, as far as the ring has room.
                if echo { _ = try? endpoint.writer.tryWrite(type: .completion, transactionID: p.transactionID, payload: p.payloadBytes()) }
                if r.bool() { endpoint.commitReads() }
            }
            endpoint.commitWrites()
            if failure != nil || r.isAtEnd { break }
            poke(ring, &r)
            endpoint.noteSignalReceived()
        }
        fuzzConsume(endpoint.signalsSent ^ endpoint.signalsReceived)
        withExtendedLifetime(observer) {}
    }

    /// Everything a device may do with a packet it was handed; bounds are the reader's promise.
    static func inspect(_ p: IncomingPacket, ring: RingBuffer, _ r: inout FuzzReader) {
        let d = p.descriptor
        fuzzCheck(d.length >= PacketDescriptor.size && d.payloadOffset >= PacketDescriptor.size && d.payloadOffset <= d.length,
                  "packet with len8 \(d.len8) offset8 \(d.offset8)")
        fuzzCheck(d.length + PacketDescriptor.trailerSize <= Int(ring.dataSize), "packet longer than its ring")
        fuzzCheck(p.payloadLength >= 0 && p.extensionLength >= 0, "negative packet parts")
        _ = p.type
        let payload = p.payloadBytes()
        fuzzCheck(payload.count == p.payloadLength, "payload copy of \(payload.count) bytes for \(p.payloadLength)")
        fuzzConsume(payload)
        let ext = p.extensionBytes()
        ext.withUnsafeBytes { e in
            _ = try? GpaDirectHeader.parse(extension: e)
            _ = try? TransferPageHeader.parse(extension: e)
        }
        let at = Int(r.u16()) - 64
        fuzzConsume(UInt64(p.loadPayload(UInt64.self, at: at) ?? 0))
        fuzzConsume(UInt64(p.loadPayload(UInt16.self, at: p.payloadLength - 1) ?? 0))
        var scratch = [UInt8](repeating: 0, count: 256)
        let count = Int(r.u8())
        let offset = Int(Int16(bitPattern: r.u16()))
        scratch.withUnsafeMutableBytes { buffer in
            _ = p.copy(fromPacketOffset: offset, count: count, into: buffer.baseAddress!)
            let limit = Int(r.u8())
            _ = p.copyPayload(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<limit]))
        }
    }

    // MARK: Writer

    static func write(_ r: inout FuzzReader) {
        pages.zero()
        let mode = r.u8()
        guard let ring = makeRing(&r) else { return }
        let size = ring.dataSize
        // Honest: the ring starts empty (read index = write index) and the reader never lies.
        var honest = mode & 1 == 0
        if honest {
            let start = index(&r, size: size, raw: false)
            ring.control.storeBytes(of: start, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
            ring.control.storeBytes(of: start, toByteOffset: RingControlPage.readIndex, as: UInt32.self)
        } else {
            for field in shared { ring.control.storeBytes(of: r.u32(), toByteOffset: field, as: UInt32.self) }
        }
        var writer: RingWriter
        do { writer = try RingWriter(ring: ring, advertisePendingSendSize: mode & 2 == 0) } catch { return }
        var written: [FuzzPacket] = []
        var visible: [FuzzPacket] = []
        var steps = 0
        while steps < 128 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 10 {
            case 0, 1, 2, 3:
                let type = FuzzPacketScript.types[Int(op >> 4)]
                let rawFlags = r.u16()
                let flags = honest ? rawFlags & PacketDescriptor.flagCompletionRequested : rawFlags
                let transactionID = r.u64()
                let extSize = Int(r.u8()) % 80
                let ext = r.padded(extSize)
                let payloadSize = Int(r.u16()) % (Int(size) + 64)
                let payload = r.padded(payloadSize)
                let fits = try? writer.tryWrite(type: type, flags: flags, transactionID: transactionID, extension: ext, payload: payload)
                if fits == true { written.append(FuzzPacket(type: type, flags: flags, transactionID: transactionID, ext: ext, payload: payload)) }
            case 4:
                _ = writer.commit()
                visible += written
                written.removeAll()
            case 5:
                _ = writer.requestSpace(Int(r.u16()))
                if r.bool() { writer.clearSpaceRequest() }
            case 6:
                fuzzConsume(UInt64(writer.bytesFree()) ^ UInt64(writer.maximumPacketSpace))
                fuzzConsume(UInt64(writer.hasUncommitted ? 1 : 0) ^ writer.packetsWritten ^ writer.ringFullEvents)
            case 7:
                honest = false
                poke(ring, &r)
            case 8:
                writer.forEachUncommitted { p in fuzzConsume(UInt64(p.payloadLength) ^ p.transactionID) }
            default:
                consume(ring, expected: &visible, honest: honest)
            }
        }
    }

    /// An honest reader takes what is published; in an honest run it is exactly what was written.
    static func consume(_ ring: RingBuffer, expected: inout [FuzzPacket], honest: Bool) {
        var reader: RingReader
        do { reader = try RingReader(ring: ring) } catch {
            fuzzCheck(!honest, "the writer left an unusable read index: \(error)")
            return
        }
        var count = 0
        do throws(RingError) {
            while count < 512, let p = try reader.next() {
                count += 1
                guard honest else { continue }
                fuzzCheck(!expected.isEmpty, "the reader found a packet that was never written")
                let want = expected.removeFirst()
                fuzzCheck(p.type == want.type && p.transactionID == want.transactionID && p.descriptor.flags == want.flags,
                          "packet header differs from what was written")
                fuzzCheck(p.extensionBytes() == want.ext, "packet extension differs from what was written")
                let payload = p.payloadBytes()
                fuzzCheck(payload.count == (want.payload.count + 7) & ~7, "payload of \(payload.count) bytes for \(want.payload.count)")
                fuzzCheck(Array(payload.prefix(want.payload.count)) == want.payload, "payload differs from what was written")
                fuzzCheck(payload.dropFirst(want.payload.count).allSatisfy { $0 == 0 }, "payload padding is not zero")
            }
        } catch {
            fuzzCheck(!honest, "the writer produced a malformed ring: \(error)")
        }
        if honest { fuzzCheck(expected.isEmpty || count == 512, "\(expected.count) published packets were not found") }
        _ = reader.commit()
    }
}
