// PartitionLink frames: exact layout, round trips, and hostile bytes refused with typed errors.

import PartitionLink
import Testing
import VMBusWire

@Suite("PartitionLink frames")
struct LinkFrameTests {
    @Test("Header layout and round trips")
    func layout() throws {
        let welcome = LinkFrame.welcome(.init(partitionID: 3, vpCount: 4, memoryBytes: 64 << 20, cpuMask: 0b11, name: "guest1"))
        let bytes = welcome.encode()
        #expect(bytes.le(UInt32.self, at: 0) == 0x4B4E_4C56 && bytes.le(UInt16.self, at: 4) == 1 && bytes.le(UInt16.self, at: 6) == 2)
        #expect(bytes.le(UInt32.self, at: 8) == UInt32(bytes.count - 16))
        for frame: LinkFrame in [welcome, .hello(.init(pid: 42, flags: 1)), .refuse(code: 1, reason: "busy"), .eventFD(connectionID: 0x2001),
                                 .revokeEventFD(connectionID: 2), .shutdown(reason: 0)] {
            #expect(try LinkFrame(decoding: frame.encode()) == frame)
        }
        if case .welcome(let w) = welcome { #expect(w.descriptorCount == 2 + 3 * 4) }
    }

    @Test("Truncated, oversized and random frames are refused")
    func hostile() {
        let good = LinkFrame.welcome(.init(partitionID: 1, vpCount: 2, memoryBytes: 1 << 20, cpuMask: 0, name: "x")).encode()
        for cut in 0..<good.count { #expect(throws: LinkError.self) { try LinkFrame(decoding: Array(good[0..<cut])) } }
        var wrongVersion = good
        wrongVersion.putLE(UInt16(9), at: 4)
        #expect(throws: LinkError.versionMismatch(9)) { try LinkFrame(decoding: wrongVersion) }
        var zeroVPs = good
        zeroVPs.putLE(UInt32(0), at: 20)
        #expect(throws: LinkError.self) { try LinkFrame(decoding: zeroVPs) }
        var state: UInt64 = 5
        var accepted = 0
        for _ in 0..<100_000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            var bytes = (0..<Int(state >> 58)).map { i in UInt8(truncatingIfNeeded: state >> UInt64(i % 56)) }
            if bytes.count >= 16 && state & 1 == 0 {
                bytes.putLE(LinkFrame.magic, at: 0)
                bytes.putLE(UInt16(1), at: 4)
                bytes.putLE(UInt16(state >> 20 & 7), at: 6)
                bytes.putLE(UInt32(bytes.count - 16), at: 8)
            }
            if (try? LinkFrame(decoding: bytes)) != nil { accepted += 1 }
        }
        #expect(accepted > 0)
    }
}
