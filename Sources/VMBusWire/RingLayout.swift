// Ring buffer wire layout: the control page, the 16-byte packet descriptor, packet types and extension headers.

/// Offsets in a ring's 4 KiB control page (`hv_ring_buffer`).
public enum RingControlPage {
    public static let size = 4096
    public static let writeIndex = 0
    public static let readIndex = 4
    public static let interruptMask = 8
    public static let pendingSendSize = 12
    public static let featureBits = 64
    /// `feature_bits` bit 0: this side publishes and honours pending_send_sz.
    public static let featurePendingSendSize: UInt32 = 1
}

/// `vmpacket_descriptor.type`.
public enum PacketType: UInt16, Sendable, CaseIterable {
    case invalid = 0x0
    case synch = 0x1
    case addTransferPageSet = 0x2
    case removeTransferPageSet = 0x3
    case establishGPADL = 0x4
    case teardownGPADL = 0x5
    case dataInBand = 0x6
    case dataUsingTransferPages = 0x7
    case dataUsingGPADL = 0x8
    case dataUsingGPADirect = 0x9
    case cancelRequest = 0xA
    case completion = 0xB
    case dataUsingAdditionalPacket = 0xC
    case additionalData = 0xD
}

/// The 16-byte header of every ring packet.
public struct PacketDescriptor: Equatable, Sendable {
    public static let size = 16
    /// Size of the trailer ("previous packet start") after each packet.
    public static let trailerSize = 8
    /// `flags` bit 0.
    public static let flagCompletionRequested: UInt16 = 1

    /// Raw type (the reader validates it against `PacketType`).
    public var type: UInt16
    /// Payload start ÷ 8, from packet start.
    public var offset8: UInt16
    /// Packet length ÷ 8, excluding the trailer.
    public var len8: UInt16
    public var flags: UInt16
    public var transactionID: UInt64

    public init(type: UInt16, offset8: UInt16, len8: UInt16, flags: UInt16, transactionID: UInt64) {
        self.type = type
        self.offset8 = offset8
        self.len8 = len8
        self.flags = flags
        self.transactionID = transactionID
    }

    public var packetType: PacketType? { PacketType(rawValue: type) }
    public var completionRequested: Bool { flags & Self.flagCompletionRequested != 0 }
    /// Bytes from packet start to payload.
    public var payloadOffset: Int { Int(offset8) * 8 }
    /// Bytes of descriptor + extension + payload + padding.
    public var length: Int { Int(len8) * 8 }

    /// Reads a descriptor from 16 bytes.
    public init(loading p: UnsafeRawPointer) {
        type = p.le(at: 0)
        offset8 = p.le(at: 2)
        len8 = p.le(at: 4)
        flags = p.le(at: 6)
        transactionID = p.le(at: 8)
    }

    /// Writes the descriptor as 16 bytes.
    public func store(to p: UnsafeMutableRawPointer) {
        p.putLE(type, at: 0)
        p.putLE(offset8, at: 2)
        p.putLE(len8, at: 4)
        p.putLE(flags, at: 6)
        p.putLE(transactionID, at: 8)
    }

    /// Bytes a packet with this header size and payload occupies in the ring, trailer included.
    @inlinable
    public static func ringSpace(headerSize: Int, payloadSize: Int) -> Int {
        headerSize + (payloadSize + 7) & ~7 + trailerSize
    }

    /// The trailer value: the packet's start offset in the upper 32 bits.
    @inlinable
    public static func trailer(packetStart: UInt32) -> UInt64 { UInt64(packetStart) << 32 }
}

/// Layout of the extension header of a GPA-direct packet (type 0x9): reserved u32, range_count u32, ranges.
public enum GpaDirectHeader {
    public static let reserved = 16
    public static let rangeCount = 20
    public static let ranges = 24

    /// Encodes the extension (everything after the descriptor up to the payload) for `ranges`.
    public static func extensionBytes(for ranges: [GpaRange]) -> [UInt8] {
        let words = ranges.flatMap(\.words)
        var out = [UInt8](repeating: 0, count: 8 + 8 * words.count)
        out.putLE(UInt32(ranges.count), at: 4)
        for (i, w) in words.enumerated() { out.putLE(w, at: 8 + 8 * i) }
        return out
    }

    /// Parses the extension bytes (descriptor excluded) of a GPA-direct packet.
    public static func parse(extension bytes: UnsafeRawBufferPointer) throws(WireError) -> [GpaRange] {
        guard bytes.count >= 8 else { throw .truncated(needed: 8, got: bytes.count) }
        let count = Int(bytes.le(UInt32.self, at: 4))
        guard count > 0 else { throw .invalidField("range_count", 0) }
        let wordCount = (bytes.count - 8) / 8
        guard count <= wordCount else { throw .truncated(needed: 8 + 16 * count, got: bytes.count) }
        let words = (0..<wordCount).map { bytes.le(UInt64.self, at: 8 + 8 * $0) }
        // The extension may be padded beyond the last range; parse only what the ranges claim.
        var used = 0
        var ranges: [GpaRange] = []
        for _ in 0..<count {
            guard used < words.count else { throw .truncated(needed: 8 + 8 * (used + 1), got: bytes.count) }
            let first = words[used]
            let n = GpaRange.pageCount(byteCount: UInt32(truncatingIfNeeded: first),
                                       byteOffset: UInt32(truncatingIfNeeded: first >> 32))
            guard used + 1 + n <= words.count else { throw .truncated(needed: 8 + 8 * (used + 1 + n), got: bytes.count) }
            ranges += try GpaRange.parse(words: Array(words[used..<(used + 1 + n)]), rangeCount: 1)
            used += 1 + n
        }
        return ranges
    }
}

/// Layout of the extension of a transfer-page packet (type 0x7): set id, owner flag, count, {count, offset} ranges.
public enum TransferPageHeader {
    public static let pageSetID = 16
    public static let senderOwnsSet = 18
    public static let rangeCount = 20
    public static let ranges = 24

    /// One `{u32 byte_count, u32 byte_offset}` range inside the transfer page set.
    public struct Range: Equatable, Sendable {
        public var byteCount: UInt32
        public var byteOffset: UInt32
        public init(byteCount: UInt32, byteOffset: UInt32) {
            self.byteCount = byteCount
            self.byteOffset = byteOffset
        }
    }

    /// Encodes the extension for a transfer-page packet.
    public static func extensionBytes(pageSetID: UInt16, senderOwnsSet: Bool = false, ranges: [Range]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 8 + 8 * ranges.count)
        out.putLE(pageSetID, at: 0)
        out[2] = senderOwnsSet ? 1 : 0
        out.putLE(UInt32(ranges.count), at: 4)
        for (i, r) in ranges.enumerated() {
            out.putLE(r.byteCount, at: 8 + 8 * i)
            out.putLE(r.byteOffset, at: 12 + 8 * i)
        }
        return out
    }

    /// Parses the extension bytes (descriptor excluded) of a transfer-page packet.
    public static func parse(extension bytes: UnsafeRawBufferPointer) throws(WireError) -> (pageSetID: UInt16, ranges: [Range]) {
        guard bytes.count >= 8 else { throw .truncated(needed: 8, got: bytes.count) }
        let count = Int(bytes.le(UInt32.self, at: 4))
        guard count <= (bytes.count - 8) / 8 else { throw .truncated(needed: 8 + 8 * count, got: bytes.count) }
        let ranges = (0..<count).map {
            Range(byteCount: bytes.le(at: 8 + 8 * $0), byteOffset: bytes.le(at: 12 + 8 * $0))
        }
        return (bytes.le(UInt16.self, at: 0), ranges)
    }
}
