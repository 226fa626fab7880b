// KVP wire layout: operations, pools, the 2572-byte value record, UTF-16 strings with their limits.

import VMBusWire

/// KVP operations.
public enum KVPOperation: UInt8, Sendable {
    case get = 0, set = 1, delete = 2, enumerate = 3, getIPInfo = 4, setIPInfo = 5
}

/// KVP pools.
public enum KVPPool: UInt8, Sendable, CaseIterable, Codable {
    /// Pushed by the host's administrator into the guest.
    case external = 0
    /// Published by the guest for the host.
    case guest = 1
    /// The guest's intrinsic items (host enumerates).
    case auto = 2
    case autoExternal = 3
    case autoInternal = 4
}

/// Sizes and offsets (from the start of the KVP message, after the 28-byte IC header).
public enum KVPLayout {
    public static let maximumKeyBytes = 512
    public static let maximumValueBytes = 2048
    public static let valueRecordSize = 2572
    /// GET and SET: value record at 4.
    public static let getSetSize = 4 + valueRecordSize
    /// DELETE: key_size at 4, key at 8.
    public static let deleteSize = 4 + 4 + maximumKeyBytes
    /// ENUMERATE: index at 4, value record at 8.
    public static let enumerateSize = 8 + valueRecordSize
    public static let regSZ: UInt32 = 1
    public static let regU32: UInt32 = 4
    public static let regU64: UInt32 = 8
}

/// Why a KVP string or message was refused.
public enum KVPError: Error, Equatable, Sendable, CustomStringConvertible {
    case keyTooLong(Int)
    case valueTooLong(Int)
    case emptyKey
    case badUTF16
    case badSize(Int)

    public var description: String {
        switch self {
        case .keyTooLong(let n): "key of \(n) bytes in UTF-16 (with NUL) exceeds 512"
        case .valueTooLong(let n): "value of \(n) bytes in UTF-16 (with NUL) exceeds 2048"
        case .emptyKey: "empty key"
        case .badUTF16: "not valid UTF-16"
        case .badSize(let n): "size field \(n) out of range"
        }
    }
}

/// A key/value record as it sits in a message.
public struct KVPRecord: Equatable, Sendable {
    public var key: String
    public var value: String

    public init(key: String, value: String) {
        self.key = key
        self.value = value
    }

    /// UTF-16LE bytes of `text` with a NUL, refused over `limit`.
    static func utf16(_ text: String, limit: Int, tooLong: (Int) -> KVPError) throws(KVPError) -> [UInt8] {
        var out: [UInt8] = []
        for unit in text.utf16 { out += [UInt8(truncatingIfNeeded: unit), UInt8(truncatingIfNeeded: unit >> 8)] }
        out += [0, 0]
        guard out.count <= limit else { throw tooLong(out.count) }
        return out
    }

    /// Decodes `size` bytes of UTF-16LE at `offset`, dropping the NUL; refuses odd sizes and bad surrogates.
    static func string(_ b: [UInt8], at offset: Int, size: Int, limit: Int) throws(KVPError) -> String {
        guard size >= 0, size <= limit, size % 2 == 0, offset + size <= b.count else { throw .badSize(size) }
        var units = (0..<(size / 2)).map { b.le(UInt16.self, at: offset + 2 * $0) }
        while units.last == 0 { units.removeLast() }
        guard let s = String(validating: units, as: UTF16.self) else { throw .badUTF16 }
        return s
    }

    /// Writes type, sizes, key and value at `at` (the start of a 2572-byte record).
    func write(into b: inout [UInt8], at offset: Int) throws(KVPError) {
        let at = offset
        guard !key.isEmpty else { throw .emptyKey }
        let k = try Self.utf16(key, limit: KVPLayout.maximumKeyBytes, tooLong: KVPError.keyTooLong)
        let v = try Self.utf16(value, limit: KVPLayout.maximumValueBytes, tooLong: KVPError.valueTooLong)
        b.putLE(KVPLayout.regSZ, at: at)
        b.putLE(UInt32(k.count), at: at + 4)
        b.putLE(UInt32(v.count), at: at + 8)
        for i in 0..<KVPLayout.maximumKeyBytes { b[at + 12 + i] = i < k.count ? k[i] : 0 }
        for i in 0..<KVPLayout.maximumValueBytes { b[at + 524 + i] = i < v.count ? v[i] : 0 }
    }

    /// Reads a record at `at`; numbers (REG_U32/U64) become decimal text.
    init(reading b: [UInt8], at offset: Int) throws(KVPError) {
        let at = offset
        guard at + KVPLayout.valueRecordSize <= b.count else { throw .badSize(b.count) }
        let type = b.le(UInt32.self, at: at)
        let keySize = Int(b.le(UInt32.self, at: at + 4)), valueSize = Int(b.le(UInt32.self, at: at + 8))
        key = try Self.string(b, at: at + 12, size: keySize, limit: KVPLayout.maximumKeyBytes)
        switch type {
        case KVPLayout.regU32 where valueSize >= 4: value = String(b.le(UInt32.self, at: at + 524))
        case KVPLayout.regU64 where valueSize >= 8: value = String(b.le(UInt64.self, at: at + 524))
        default: value = try Self.string(b, at: at + 524, size: valueSize, limit: KVPLayout.maximumValueBytes)
        }
    }

    /// Reads just a key of `keySize` bytes at `at` (DELETE).
    static func key(_ b: [UInt8], sizeAt: Int, keyAt: Int) throws(KVPError) -> String {
        guard keyAt + KVPLayout.maximumKeyBytes <= b.count else { throw .badSize(b.count) }
        return try string(b, at: keyAt, size: Int(b.le(UInt32.self, at: sizeAt)), limit: KVPLayout.maximumKeyBytes)
    }
}
