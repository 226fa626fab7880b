// Fixed-size UTF-16LE text fields as IC messages carry them (KVP IP lists, FCOPY names).

import VMBusWire

/// Why a fixed UTF-16 field was refused.
public enum UTF16FieldError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The field has no NUL inside its size.
    case unterminated(String)
    /// Something other than NUL follows the terminating NUL.
    case embeddedNUL(String)
    /// A lone surrogate.
    case invalid(String)
    /// The text (with its NUL) does not fit.
    case tooLong(String, limit: Int)

    public var description: String {
        switch self {
        case .unterminated(let f): "\(f): not NUL-terminated within its field"
        case .embeddedNUL(let f): "\(f): text after an embedded NUL"
        case .invalid(let f): "\(f): not valid UTF-16"
        case .tooLong(let f, let limit): "\(f): longer than \(limit - 1) UTF-16 units"
        }
    }
}

/// A field of `units` UTF-16LE code units at a fixed offset, NUL-terminated inside the field.
public struct UTF16Field: Sendable {
    public let name: String
    public let offset: Int
    public let units: Int

    public init(_ name: String, offset: Int, units: Int) {
        self.name = name
        self.offset = offset
        self.units = units
    }

    public var byteCount: Int { 2 * units }
    public var end: Int { offset + byteCount }

    /// Decodes the field of `b` (which the caller has checked holds `end` bytes).
    public func read(_ b: [UInt8]) throws(UTF16FieldError) -> String {
        var text: [UInt16] = []
        var terminated = false
        for i in 0..<units {
            let unit = b.le(UInt16.self, at: offset + 2 * i)
            if terminated {
                guard unit == 0 else { throw .embeddedNUL(name) }
            } else if unit == 0 {
                terminated = true
            } else {
                text.append(unit)
            }
        }
        guard terminated else { throw .unterminated(name) }
        guard let s = String(validating: text, as: UTF16.self) else { throw .invalid(name) }
        return s
    }

    /// Writes `text` and its NUL, zero-filling the rest of the field.
    public func write(_ text: String, into b: inout [UInt8]) throws(UTF16FieldError) {
        let encoded = Array(text.utf16)
        guard encoded.count < units else { throw .tooLong(name, limit: units) }
        guard !encoded.contains(0) else { throw .embeddedNUL(name) }
        for i in 0..<units { b.putLE(i < encoded.count ? encoded[i] : 0, at: offset + 2 * i) }
    }
}
