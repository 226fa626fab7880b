// Typed errors of the ring layer: a corrupt peer, or a packet that can never fit.

/// Why a ring operation failed. Corruption errors mean the peer broke the ring protocol;
/// the channel owning the ring should be closed.
public enum RingError: Error, Equatable, Sendable {
    /// The ring geometry is unusable (data size not a positive multiple of 8, or too large).
    case invalidGeometry(dataSize: Int)
    /// A shared index written by the peer is out of range or unaligned.
    case corruptIndex(name: String, value: UInt32)
    /// A packet descriptor in the ring is malformed.
    case corruptPacket(String)
    /// The packet can never fit into this ring.
    case packetTooLarge(size: Int, limit: Int)
    /// The extension header is not a multiple of 8 bytes, or makes the header too long.
    case invalidExtension(size: Int)
}
