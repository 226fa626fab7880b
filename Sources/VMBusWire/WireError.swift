// Typed errors for every decoder in VMBusWire: what the other side sent and why it was refused.

/// Why bytes from the other side could not be decoded. Every decoder throws only this.
public enum WireError: Error, Equatable, Sendable {
    /// Fewer bytes than the structure needs.
    case truncated(needed: Int, got: Int)
    /// More bytes than the structure or carrier allows.
    case oversized(limit: Int, got: Int)
    /// A message type number outside the known range.
    case unknownMessageType(UInt32)
    /// A field holds a value the protocol forbids (name of the field, value seen).
    case invalidField(String, UInt64)
    /// A reserved field or bit is non-zero where it must be zero.
    case reservedNonZero(String)
    /// A variable-length tail is not a whole number of its units.
    case misalignedLength(Int)
    /// Text that is not a GUID.
    case malformedGUID(String)
}
