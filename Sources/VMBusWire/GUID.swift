// GUIDs in Hyper-V's mixed-endian wire order (Data1/2/3 little-endian, Data4 as written).

/// A 128-bit identifier as VMBus carries it: device classes, instances, endpoints, client ids.
///
/// `bytes` is the wire order. `"ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"` is stored as
/// `d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1 dc 7f`.
public struct GUID: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// First 8 wire bytes as a little-endian word.
    public var low: UInt64
    /// Last 8 wire bytes as a little-endian word.
    public var high: UInt64

    public static let zero = GUID(low: 0, high: 0)

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// Builds a GUID from its 16 wire bytes.
    public init(wireBytes b: some Collection<UInt8>) throws(WireError) {
        guard b.count == 16 else { throw .truncated(needed: 16, got: b.count) }
        var lo: UInt64 = 0, hi: UInt64 = 0
        for (i, byte) in b.enumerated() {
            if i < 8 { lo |= UInt64(byte) << (8 * UInt64(i)) } else { hi |= UInt64(byte) << (8 * UInt64(i - 8)) }
        }
        self.init(low: lo, high: hi)
    }

    /// Parses the text form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (case-insensitive, braces allowed).
    public init(_ text: String) throws(WireError) {
        var s = Substring(text)
        if s.hasPrefix("{") && s.hasSuffix("}") { s = s.dropFirst().dropLast() }
        let groups = s.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.count == 5, groups.map(\.count) == [8, 4, 4, 4, 12] else { throw .malformedGUID(text) }
        guard let d1 = UInt32(groups[0], radix: 16), let d2 = UInt16(groups[1], radix: 16),
            let d3 = UInt16(groups[2], radix: 16), let d4 = UInt16(groups[3], radix: 16),
            let d5 = UInt64(groups[4], radix: 16)
        else { throw .malformedGUID(text) }
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.putLE(d1, at: 0)
        bytes.putLE(d2, at: 4)
        bytes.putLE(d3, at: 6)
        bytes.putLE(d4.bigEndian, at: 8)
        for i in 0..<6 { bytes[10 + i] = UInt8(truncatingIfNeeded: d5 >> (8 * UInt64(5 - i))) }
        try self.init(wireBytes: bytes)
    }

    /// Initializer for compile-time constants known to be well formed.
    public init(constant text: StaticString) {
        do { try self.init(text.description) } catch { preconditionFailure("bad GUID constant \(text)") }
    }

    /// The 16 bytes in wire order.
    public var wireBytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        out.putLE(low, at: 0)
        out.putLE(high, at: 8)
        return out
    }

    /// Lower-case text form.
    public var description: String {
        let b = wireBytes
        func hex(_ x: UInt64, _ width: Int) -> String {
            let s = String(x, radix: 16)
            return String(repeating: "0", count: width - s.count) + s
        }
        let d1 = UInt64(b.le(UInt32.self, at: 0)), d2 = UInt64(b.le(UInt16.self, at: 4))
        let d3 = UInt64(b.le(UInt16.self, at: 6))
        let d4 = UInt64(b[8]) << 8 | UInt64(b[9])
        var d5: UInt64 = 0
        for i in 10..<16 { d5 = d5 << 8 | UInt64(b[i]) }
        return "\(hex(d1, 8))-\(hex(d2, 4))-\(hex(d3, 4))-\(hex(d4, 4))-\(hex(d5, 12))"
    }

    public static func < (a: GUID, b: GUID) -> Bool { a.wireBytes.lexicographicallyPrecedes(b.wireBytes) }

    /// Reads 16 wire bytes at `offset` of a message the caller has length-checked.
    @inlinable
    public static func read(_ bytes: [UInt8], at offset: Int) -> GUID {
        GUID(low: bytes.le(UInt64.self, at: offset), high: bytes.le(UInt64.self, at: offset + 8))
    }

    /// Writes the 16 wire bytes at `offset`.
    @inlinable
    public func write(into bytes: inout [UInt8], at offset: Int) {
        bytes.putLE(low, at: offset)
        bytes.putLE(high, at: offset + 8)
    }
}
