// Moves a million random-sized packets through small rings, across the wrap point, checking every byte.

import Glibc
import Testing
import VMBusRing
import VMBusWire

@Suite("Ring stress")
struct RingStressTests {
    @Test("1M packets of random size cross the wrap point with content checks")
    func millionPackets() throws {
        let owned = try OwnedRing(dataSize: 8192)
        var writer = try RingWriter(ring: owned.ring)
        var reader = try RingReader(ring: owned.ring)
        var rng = SplitMix64(state: 42)
        let total: UInt64 = 1_000_000
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 8)
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 8)
        let got = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 8)
        defer { out.deallocate(); expected.deallocate(); got.deallocate() }
        var sent: UInt64 = 0, received: UInt64 = 0, wraps = 0
        var sizes: [Int] = []  // sizes in flight, FIFO
        var head = 0
        while received < total {
            // Write a random batch.
            let batch = Int(rng.next() % 8) + 1
            for _ in 0..<batch where sent < total {
                let size = Int(rng.next() % 700)
                let payload = UnsafeRawBufferPointer(rebasing: out[0..<size])
                fillPattern(UnsafeMutableRawBufferPointer(rebasing: out[0..<size]), sequence: sent)
                guard try writer.tryWrite(type: .dataInBand, transactionID: sent, payload: payload) else { break }
                sizes.append(size)
                sent += 1
            }
            let w0 = owned.ring.writeIndex
            _ = writer.commit()
            if owned.ring.writeIndex < w0 { wraps += 1 }
            // Read a random number of packets.
            let take = Int(rng.next() % 10) + 1
            for _ in 0..<take {
                guard let packet = try reader.next() else { break }
                let size = sizes[head]
                head += 1
                #expect(packet.transactionID == received && packet.type == .dataInBand)
                #expect(packet.payloadLength == (size + 7) & ~7)
                let n = packet.copyPayload(into: got)
                fillPattern(UnsafeMutableRawBufferPointer(rebasing: expected[0..<size]), sequence: received)
                if n < size || memcmp(got.baseAddress!, expected.baseAddress!, size) != 0 {
                    Issue.record("packet \(received) corrupted")
                    return
                }
                received += 1
            }
            _ = reader.commit()
            if head > 4096 {
                sizes.removeFirst(head)
                head = 0
            }
        }
        #expect(wraps > 1000, "the test must cross the wrap point often (\(wraps))")
        #expect(owned.ring.readIndex == owned.ring.writeIndex)
    }

    @Test("Two threads move 200k packets through one ring, spinning, with content checks")
    func twoThreads() async throws {
        let owned = try OwnedRing(dataSize: 16384)
        let count: UInt64 = 200_000
        let ring = owned.ring
        let producer = Task.detached { () throws -> Void in
            var writer = try RingWriter(ring: ring)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
            defer { buf.deallocate() }
            var seq: UInt64 = 0
            while seq < count {
                let size = Int(seq % 300) + 1
                buf.storeBytes(of: seq, as: UInt64.self)
                if size > 8 { fillPattern(UnsafeMutableRawBufferPointer(rebasing: buf[8..<size]), sequence: seq) }
                if try writer.tryWrite(type: .dataInBand, transactionID: seq, payload: UnsafeRawBufferPointer(rebasing: buf[0..<max(size, 8)])) {
                    seq += 1
                    if seq % 16 == 0 { _ = writer.commit() }
                } else {
                    _ = writer.commit()
                    sched_yield()
                }
            }
            _ = writer.commit()
        }
        var reader = try RingReader(ring: ring)
        let got = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        let expected = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        defer { got.deallocate(); expected.deallocate() }
        var next: UInt64 = 0, bad = 0
        while next < count {
            guard let packet = try reader.next() else {
                _ = reader.commit()
                sched_yield()
                continue
            }
            let size = max(Int(next % 300) + 1, 8)
            _ = packet.copyPayload(into: got)
            fillPattern(UnsafeMutableRawBufferPointer(rebasing: expected[8..<max(size, 8)]), sequence: next)
            if packet.transactionID != next || got.load(as: UInt64.self) != next
                || (size > 8 && memcmp(got.baseAddress! + 8, expected.baseAddress! + 8, size - 8) != 0) {
                bad += 1
            }
            next += 1
        }
        _ = reader.commit()
        try await producer.value
        #expect(bad == 0)
    }
}
