// A peer that scribbles over the ring: indices, descriptors and data. Typed errors, never a trap.

import Testing
import VMBusRing
import VMBusWire

@Suite("Hostile ring peers")
struct RingHostileTests {
    @Test("Corrupt indices and descriptors are refused with typed errors")
    func corruptFields() throws {
        let owned = try OwnedRing(dataSize: 4096)
        var writer = try RingWriter(ring: owned.ring)
        _ = try writer.tryWrite(type: .dataInBand, transactionID: 1, payload: [1, 2, 3])
        _ = writer.commit()
        let control = owned.ring.control
        // Unaligned and out-of-range write index.
        for bad: UInt32 in [3, 4096, 0xFFFF_FFF8] {
            control.storeBytes(of: bad, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
            var reader = try RingReader(ring: owned.ring)
            #expect(throws: RingError.corruptIndex(name: "write_index", value: bad)) { _ = try reader.next() }
        }
        control.storeBytes(of: UInt32(32), toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
        // A read index the writer cannot trust.
        control.storeBytes(of: UInt32(12), toByteOffset: RingControlPage.readIndex, as: UInt32.self)
        #expect(throws: RingError.corruptIndex(name: "read_index", value: 12)) { _ = try RingReader(ring: owned.ring) }
        control.storeBytes(of: UInt32(0), toByteOffset: RingControlPage.readIndex, as: UInt32.self)
        // Descriptor lies: len8 beyond the data available, offset8 beyond len8, unknown type, unknown flag.
        let data = owned.ring.data
        for (offset, value) in [(4, UInt16(200)), (2, UInt16(9)), (2, UInt16(1)), (0, UInt16(0x42)), (6, UInt16(0x8))] {
            let saved = data.load(fromByteOffset: offset, as: UInt16.self)
            data.storeBytes(of: value, toByteOffset: offset, as: UInt16.self)
            var reader = try RingReader(ring: owned.ring)
            #expect(throws: RingError.self) { _ = try reader.next() }
            data.storeBytes(of: saved, toByteOffset: offset, as: UInt16.self)
        }
        var reader = try RingReader(ring: owned.ring)
        do { let check1 = try reader.next()?.transactionID == 1; #expect(check1) }
    }

    @Test("A writer that moves write_index back under the reader: a typed error, not a lap of the ring (which re-read packets forever and then trapped in putBack)")
    func writeIndexBackwards() throws {
        let owned = try OwnedRing(dataSize: 4096)
        var writer = try RingWriter(ring: owned.ring)
        for i in 0..<8 { _ = try writer.tryWrite(type: .dataInBand, transactionID: UInt64(i), payload: [UInt8](repeating: 7, count: 100)) }
        _ = writer.commit()
        let control = owned.ring.control
        let end = control.load(fromByteOffset: RingControlPage.writeIndex, as: UInt32.self)
        var reader = try RingReader(ring: owned.ring)
        var first: IncomingPacket?
        var read = 0
        while let p = try reader.next() {
            if first == nil { first = p }
            read += 1
        }
        #expect(read == 8)
        // Nothing committed yet; the writer claims it has only written up to the read index
        // (then a little past it): both lie behind what the reader consumed.
        for back: UInt32 in [0, 136] {
            control.storeBytes(of: back, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
            #expect(throws: RingError.corruptIndex(name: "write_index", value: back)) { _ = try reader.next() }
        }
        // The honest index again: the reader goes on, puts back a packet it still holds, and
        // refuses one it committed.
        control.storeBytes(of: end, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
        #expect(try reader.next() == nil)
        let held = try #require(first)
        try reader.putBack(held)
        #expect(try reader.next()?.transactionID == 0)
        _ = reader.commit()
        #expect(throws: RingError.self) { try reader.putBack(held) }
    }

    @Test("100k rings of random garbage: the reader returns packets within bounds or a typed error")
    func randomGarbage() throws {
        let owned = try OwnedRing(dataSize: 512)
        var rng = SplitMix64(state: 7)
        var packets = 0, errors = 0
        for _ in 0..<100_000 {
            let data = UnsafeMutableRawBufferPointer(start: owned.ring.data, count: 512)
            for i in stride(from: 0, to: 512, by: 8) { data.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }
            // Mostly plausible descriptors at the read index, sometimes pure noise.
            let r = UInt32(rng.next() % 64) * 8
            let w = rng.next() % 4 == 0 ? UInt32(truncatingIfNeeded: rng.next()) : UInt32(rng.next() % 64) * 8
            if rng.next() % 2 == 0 {
                data.storeBytes(of: UInt16(rng.next() % 14), toByteOffset: Int(r), as: UInt16.self)
                data.storeBytes(of: UInt16(rng.next() % 8), toByteOffset: Int(r) + 2, as: UInt16.self)
                data.storeBytes(of: UInt16(rng.next() % 80), toByteOffset: Int(r) + 4, as: UInt16.self)
                data.storeBytes(of: UInt16(rng.next() % 2), toByteOffset: Int(r) + 6, as: UInt16.self)
            }
            owned.ring.control.storeBytes(of: r, toByteOffset: RingControlPage.readIndex, as: UInt32.self)
            owned.ring.control.storeBytes(of: w, toByteOffset: RingControlPage.writeIndex, as: UInt32.self)
            var reader = try RingReader(ring: owned.ring)
            do {
                while let packet = try reader.next() {
                    packets += 1
                    #expect(packet.payloadLength >= 0 && packet.descriptor.length + 8 <= 512)
                    _ = packet.payloadBytes()
                    _ = packet.loadPayload(UInt64.self, at: packet.payloadLength - 4)
                }
            } catch {
                errors += 1
            }
        }
        #expect(packets > 0 && errors > 0)
    }
}
