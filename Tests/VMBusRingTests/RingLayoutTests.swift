// Pins the bytes the ring writer produces: descriptor, padding, trailer, indices, and every packet form.

import Testing
import VMBusRing
import VMBusWire

@Suite("Ring layout")
struct RingLayoutTests {
    @Test("Control page offsets and descriptor layout")
    func constants() {
        #expect(RingControlPage.writeIndex == 0 && RingControlPage.readIndex == 4 && RingControlPage.interruptMask == 8)
        #expect(RingControlPage.pendingSendSize == 12 && RingControlPage.featureBits == 64 && RingControlPage.size == 4096)
        #expect(PacketType.dataInBand.rawValue == 6 && PacketType.dataUsingTransferPages.rawValue == 7)
        #expect(PacketType.dataUsingGPADirect.rawValue == 9 && PacketType.completion.rawValue == 0xB)
        // An in-band packet of payload P occupies 16 + roundup8(P) + 8 bytes.
        #expect(RingWriter.space(extensionSize: 0, payloadSize: 5) == 32)
        #expect(RingWriter.space(extensionSize: 0, payloadSize: 64) == 88)
    }

    @Test("An in-band packet is laid out byte for byte")
    func inBandBytes() throws {
        let owned = try OwnedRing(dataSize: 4096)
        var writer = try RingWriter(ring: owned.ring)
        #expect(owned.ring.featureBits == 1)
        do { let check1 = try writer.tryWrite(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested,
                                    transactionID: 0x1122_3344_5566_7788, payload: [0xA1, 0xA2, 0xA3, 0xA4, 0xA5]); #expect(check1) }
        #expect(owned.ring.writeIndex == 0, "nothing is visible before commit")
        do { let check2 = writer.commit(); #expect(check2, "first packet into an empty, unmasked ring signals") }
        #expect(owned.ring.writeIndex == 32)
        let data = UnsafeRawBufferPointer(start: owned.ring.data, count: 64)
        #expect(Array(data[0..<16]) == [6, 0, 2, 0, 3, 0, 1, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(data[16..<24]) == [0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0, 0, 0])
        #expect(data.le(UInt64.self, at: 24) == 0, "trailer of a packet starting at 0")
        do { let check3 = try writer.tryWrite(type: .completion, transactionID: 9, payload: []); #expect(check3) }
        _ = writer.commit()
        #expect(data.le(UInt64.self, at: 24 + 8 + 16) == UInt64(32) << 32, "trailer holds the packet start << 32")
    }

    @Test("GPA-direct and transfer-page packets carry their ranges between descriptor and payload")
    func extensionForms() throws {
        let owned = try OwnedRing(dataSize: 8192)
        var writer = try RingWriter(ring: owned.ring)
        var reader = try RingReader(ring: owned.ring)
        let ranges = [GpaRange(byteCount: 6000, byteOffset: 100, pfns: [0x10, 0x11]), GpaRange(byteCount: 512, byteOffset: 0, pfns: [0x99])]
        let gpaExt = GpaDirectHeader.extensionBytes(for: ranges)
        #expect(gpaExt.count == 8 + 8 * 5)
        do { let check4 = try writer.tryWrite(type: .dataUsingGPADirect, flags: 1, transactionID: 5, extension: gpaExt, payload: [1, 2, 3]); #expect(check4) }
        let xferExt = TransferPageHeader.extensionBytes(pageSetID: 0xCAFE, ranges: [.init(byteCount: 1514, byteOffset: 4096)])
        do { let check5 = try writer.tryWrite(type: .dataUsingTransferPages, transactionID: 6, extension: xferExt, payload: []); #expect(check5) }
        _ = writer.commit()

        let first = try #require(try reader.next())
        #expect(first.type == .dataUsingGPADirect && first.descriptor.offset8 == UInt16((16 + gpaExt.count) / 8))
        #expect(first.extensionLength == gpaExt.count && first.payloadBytes().prefix(3) == [1, 2, 3])
        let parsed = try first.extensionBytes().withUnsafeBytes { try GpaDirectHeader.parse(extension: $0) }
        #expect(parsed == ranges)
        let second = try #require(try reader.next())
        #expect(second.type == .dataUsingTransferPages && second.transactionID == 6)
        let xfer = try second.extensionBytes().withUnsafeBytes { try TransferPageHeader.parse(extension: $0) }
        #expect(xfer.pageSetID == 0xCAFE && xfer.ranges == [.init(byteCount: 1514, byteOffset: 4096)])
        do { let check6 = try reader.next() == nil; #expect(check6) }
    }

    @Test("A packet that can never fit is refused; a full ring returns false and counts it")
    func sizes() throws {
        let owned = try OwnedRing(dataSize: 256)
        var writer = try RingWriter(ring: owned.ring)
        #expect(throws: RingError.self) { _ = try writer.tryWrite(type: .dataInBand, transactionID: 0, payload: [UInt8](repeating: 0, count: 240)) }
        #expect(throws: RingError.invalidExtension(size: 3)) { _ = try writer.tryWrite(type: .dataInBand, transactionID: 0, extension: [1, 2, 3], payload: []) }
        var written = 0
        while try writer.tryWrite(type: .dataInBand, transactionID: 0, payload: [UInt8](repeating: 7, count: 40)) { written += 1 }
        // 64 bytes per packet; free must stay strictly greater than the packet: 3 fit in 256.
        #expect(written == 3 && writer.ringFullEvents == 1)
    }
}
