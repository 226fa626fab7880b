// Test helpers: an owned ring in heap memory and a deterministic generator.

import VMBusRing
import VMBusWire

/// SplitMix64: reproducible randomness for ring tests.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A ring (control page + data) in page-aligned heap memory, freed on deinit.
final class OwnedRing: @unchecked Sendable {
    let memory: UnsafeMutableRawBufferPointer
    let ring: RingBuffer

    init(dataSize: Int) throws {
        memory = .allocate(byteCount: 4096 + dataSize, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0)
        ring = try RingBuffer(contiguous: memory)
        ring.initializeControlPage()
    }

    deinit { memory.deallocate() }
}

/// Fills `buffer` with the byte pattern of packet `sequence`.
func fillPattern(_ buffer: UnsafeMutableRawBufferPointer, sequence: UInt64) {
    var x = sequence &* 0x9E37_79B9_7F4A_7C15 | 1
    for i in 0..<buffer.count {
        buffer[i] = UInt8(truncatingIfNeeded: x >> 56)
        x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    }
}
