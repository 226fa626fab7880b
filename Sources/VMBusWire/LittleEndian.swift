// Byte-order helpers: little-endian for VMBus structures, big-endian for SCSI CDBs and NBD.

extension Array where Element == UInt8 {
    /// Reads a little-endian integer at `offset`. The caller has checked `offset + size <= count`.
    @inlinable
    public func le<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count, "wire read out of bounds")
        return withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    /// Writes `value` little-endian at `offset`. The caller has sized the array.
    @inlinable
    public mutating func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count, "wire write out of bounds")
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}

extension UnsafeRawBufferPointer {
    /// Reads a little-endian integer at `offset`; bounds are checked by the caller.
    @inlinable
    public func le<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Writes `value` little-endian at `offset`; bounds are checked by the caller.
    @inlinable
    public func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

extension UnsafeRawPointer {
    /// Reads a little-endian integer at `offset` from this pointer.
    @inlinable
    public func le<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawPointer {
    /// Reads a little-endian integer at `offset` from this pointer.
    @inlinable
    public func le<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Writes `value` little-endian at `offset` from this pointer.
    @inlinable
    public func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

extension Array where Element == UInt8 {
    /// Reads a big-endian integer at `offset`; 0 when it does not fit (callers validate lengths).
    @inlinable
    public func be<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T {
        guard offset >= 0, offset + MemoryLayout<T>.size <= count else { return 0 }
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(self[offset + i]) }
        return v
    }

    /// Writes `value` big-endian at `offset`.
    @inlinable
    public mutating func putBE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for i in 0..<MemoryLayout<T>.size {
            self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * (MemoryLayout<T>.size - 1 - i)))
        }
    }
}
