// Reading a fuzz input as a stream of little-endian fields; past the end every field reads as zero.

/// A cursor over one input. Nothing it returns can trap: short reads give zeros (or fewer bytes),
/// so a target decodes any input into some sequence of operations.
struct FuzzReader {
    let bytes: [UInt8]
    private(set) var position = 0

    init(_ raw: UnsafeRawBufferPointer) { bytes = [UInt8](raw) }
    init(bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { position >= bytes.count }
    var remaining: Int { max(bytes.count - position, 0) }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    mutating func bool() -> Bool { u8() & 1 != 0 }

    /// A value in `0..<bound` (0 when `bound` is 0 or less).
    mutating func below(_ bound: Int) -> Int {
        guard bound > 0 else { return 0 }
        return Int(u16()) % bound
    }

    /// Up to `count` bytes (fewer at the end of the input).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(count, 0), remaining)
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }

    /// Exactly `count` bytes: what the input has, then zeros.
    mutating func padded(_ count: Int) -> [UInt8] {
        let n = max(count, 0)
        var out = take(n)
        if out.count < n { out += [UInt8](repeating: 0, count: n - out.count) }
        return out
    }

    /// A byte count read as u16, capped at `limit`, then that many bytes.
    mutating func blob(limit: Int) -> [UInt8] {
        let n = Int(u16()) % (max(limit, 0) + 1)
        return take(n)
    }

    /// Everything not read yet.
    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Fails the run (a finding) when an invariant of the code under test does not hold.
func fuzzCheck(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant violated: \(message())") }
}

/// Keeps values computed from decoded data alive, so the work is not optimised away.
nonisolated(unsafe) var fuzzSink: UInt64 = 0

/// Folds `bytes` into `fuzzSink` (touching every byte, which also lets a sanitizer check them).
func fuzzConsume(_ bytes: UnsafeRawBufferPointer) {
    var h = fuzzSink
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    fuzzSink = h
}

func fuzzConsume(_ bytes: [UInt8]) { bytes.withUnsafeBytes { fuzzConsume($0) } }

func fuzzConsume(_ value: UInt64) { fuzzSink = (fuzzSink ^ value) &* 0x100_0000_01B3 }

func fuzzConsume(_ text: String) { fuzzConsume(UInt64(truncatingIfNeeded: text.utf8.count)) }
