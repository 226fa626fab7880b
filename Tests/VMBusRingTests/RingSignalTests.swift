// The signalling rules: empty→non-empty with the mask clear, and "space available" on pending_send_sz.

import Testing
import VMBusRing
import VMBusWire

@Suite("Ring signalling rules")
struct RingSignalTests {
    @Test("The writer signals only when the ring was empty and the reader is not masked")
    func writerRule() throws {
        let owned = try OwnedRing(dataSize: 4096)
        var writer = try RingWriter(ring: owned.ring)
        var reader = try RingReader(ring: owned.ring)
        do { let check1 = !writer.commit(); #expect(check1, "nothing written, nothing to signal") }
        for _ in 0..<3 { _ = try writer.tryWrite(type: .dataInBand, transactionID: 1, payload: [1]) }
        do { let check2 = writer.commit(); #expect(check2, "a batch into an empty ring signals once") }
        _ = try writer.tryWrite(type: .dataInBand, transactionID: 2, payload: [2])
        do { let check3 = !writer.commit(); #expect(check3, "writing into a non-empty ring does not signal") }
        while try reader.next() != nil {}
        _ = reader.commit()
        reader.mask()
        _ = try writer.tryWrite(type: .dataInBand, transactionID: 3, payload: [3])
        do { let check4 = !writer.commit(); #expect(check4, "a masked reader is not signalled") }
        do { let check5 = reader.unmask(); #expect(check5, "unmasking reports the data that arrived meanwhile") }
        while try reader.next() != nil {}
        _ = reader.commit()
        do { let check6 = !reader.unmask(); #expect(check6) }
        _ = try writer.tryWrite(type: .dataInBand, transactionID: 4, payload: [4])
        do { let check7 = writer.commit(); #expect(check7, "empty and unmasked again: signal") }
    }

    @Test("The reader signals a blocked writer only when it frees pending_send_sz")
    func readerRule() throws {
        let owned = try OwnedRing(dataSize: 1024)
        var writer = try RingWriter(ring: owned.ring)
        var reader = try RingReader(ring: owned.ring)
        let payload = [UInt8](repeating: 0x5A, count: 100)  // 128 bytes in the ring
        var n = 0
        while try writer.tryWrite(type: .dataInBand, transactionID: UInt64(n), payload: payload) { n += 1 }
        #expect(n == 7)
        _ = writer.commit()
        // Without a request, reading never signals.
        _ = try reader.next()
        do { let check8 = !reader.commit(); #expect(check8) }
        // The writer now needs 3 packets' worth (384 bytes) and says so.
        do { let check9 = !writer.requestSpace(3 * 128); #expect(check9) }
        #expect(owned.ring.pendingSendSize == 384)
        _ = try reader.next()
        do { let check10 = !reader.commit(); #expect(check10, "freeing 256 of the 384 needed does not signal") }
        _ = try reader.next()
        do { let check11 = reader.commit(); #expect(check11, "crossing pending_send_sz signals") }
        _ = try reader.next()
        do { let check12 = !reader.commit(); #expect(check12, "there was already enough room: no second signal") }
        do { let check13 = writer.requestSpace(3 * 128); #expect(check13) }
        writer.clearSpaceRequest()
        #expect(owned.ring.pendingSendSize == 0)
    }

    @Test("No space signal when the writer did not advertise feature bit 0")
    func featureBit() throws {
        let owned = try OwnedRing(dataSize: 1024)
        owned.ring.initializeControlPage(featureBits: 0)
        var writer = try RingWriter(ring: owned.ring, advertisePendingSendSize: false)
        var reader = try RingReader(ring: owned.ring)
        while try writer.tryWrite(type: .dataInBand, transactionID: 0, payload: [UInt8](repeating: 1, count: 100)) {}
        _ = writer.commit()
        _ = writer.requestSpace(128)
        _ = try reader.next()
        do { let check14 = !reader.commit(); #expect(check14) }
    }
}
