// The producer side of a ring: packets in, one index publish per batch, Linux's signalling rule.

import Atomics
import VMBusWire

/// The only writer of a ring. Write any number of packets, then `commit()` once; signal the
/// reader only when `commit()` says so (the ring went from empty to non-empty and the reader
/// has not masked interrupts). Never allocates.
public struct RingWriter: ~Copyable {
    public let ring: RingBuffer
    /// Next write offset (private until committed).
    @usableFromInline var next: UInt32
    /// Write index the reader can see.
    @usableFromInline var published: UInt32
    /// Last read index seen; only reloaded when space runs short.
    @usableFromInline var cachedRead: UInt32
    /// Packets and bytes written since creation (counters for status output).
    @usableFromInline var writtenCount: UInt64 = 0
    @usableFromInline var fullCount: UInt64 = 0
    /// Packets written since creation.
    public var packetsWritten: UInt64 { writtenCount }
    /// Times a packet did not fit (ring-full events).
    public var ringFullEvents: UInt64 { fullCount }

    /// Takes over the producer side. `advertisePendingSendSize` sets feature bit 0 (this writer
    /// publishes pending_send_sz when blocked).
    public init(ring: RingBuffer, advertisePendingSendSize: Bool = true) throws(RingError) {
        self.ring = ring
        let w = ring.writeIndexAtomic.load(ordering: .acquiring)
        let r = ring.readIndexAtomic.load(ordering: .acquiring)
        guard ring.isValidIndex(w) else { throw .corruptIndex(name: "write_index", value: w) }
        guard ring.isValidIndex(r) else { throw .corruptIndex(name: "read_index", value: r) }
        next = w
        published = w
        cachedRead = r
        if advertisePendingSendSize {
            _ = ring.featureBitsAtomic.loadThenBitwiseOr(with: RingControlPage.featurePendingSendSize, ordering: .sequentiallyConsistent)
        }
    }

    /// Largest header + payload this ring can ever carry.
    public var maximumPacketSpace: Int { Int(ring.dataSize) - 8 }

    /// Bytes a packet occupies in the ring (descriptor, extension, padded payload, trailer).
    @inlinable
    public static func space(extensionSize: Int, payloadSize: Int) -> Int {
        PacketDescriptor.ringSpace(headerSize: PacketDescriptor.size + extensionSize, payloadSize: payloadSize)
    }

    /// Appends one packet if it fits. Returns false when the ring is full (nothing written).
    /// `extension` (GPA ranges, transfer-page ranges) must be a multiple of 8 bytes.
    @inlinable
    public mutating func tryWrite(
        type: PacketType, flags: UInt16 = 0, transactionID: UInt64,
        extension ext: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        payload: UnsafeRawBufferPointer
    ) throws(RingError) -> Bool {
        guard ext.count & 7 == 0, ext.count <= 0xFFF0 else { throw .invalidExtension(size: ext.count) }
        let headerSize = PacketDescriptor.size + ext.count
        let paddedPayload = (payload.count + 7) & ~7
        let length = headerSize + paddedPayload
        let total = length + PacketDescriptor.trailerSize
        guard total < maximumPacketSpace, length <= Int(UInt16.max) * 8 else {
            throw .packetTooLarge(size: total, limit: min(maximumPacketSpace, Int(UInt16.max) * 8))
        }
        if Int(ring.bytesFree(write: next, read: cachedRead)) <= total {
            let r = ring.readIndexAtomic.load(ordering: .acquiring)
            guard ring.isValidIndex(r) else { throw .corruptIndex(name: "read_index", value: r) }
            cachedRead = r
            guard Int(ring.bytesFree(write: next, read: r)) > total else {
                fullCount &+= 1
                return false
            }
        }
        let start = next
        let descriptor = PacketDescriptor(
            type: type.rawValue, offset8: UInt16(headerSize / 8), len8: UInt16(length / 8), flags: flags,
            transactionID: transactionID)
        if Int(start) + total <= Int(ring.dataSize) {
            // Fast path: the whole packet lies before the end of the data area.
            let p = ring.data + Int(start)
            descriptor.store(to: p)
            if ext.count > 0 { (p + PacketDescriptor.size).copyMemory(from: ext.baseAddress!, byteCount: ext.count) }
            if payload.count > 0 { (p + headerSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
            if paddedPayload > payload.count {
                (p + headerSize + payload.count).initializeMemory(as: UInt8.self, repeating: 0, count: paddedPayload - payload.count)
            }
            (p + length).putLE(PacketDescriptor.trailer(packetStart: start), at: 0)
        } else {
            withUnsafeTemporaryAllocation(byteCount: PacketDescriptor.size, alignment: 8) { tmp in
                descriptor.store(to: tmp.baseAddress!)
                ring.copyIn(at: start, from: tmp.baseAddress!, count: PacketDescriptor.size)
            }
            var at = ring.advance(start, by: PacketDescriptor.size)
            if ext.count > 0 { ring.copyIn(at: at, from: ext.baseAddress!, count: ext.count) }
            at = ring.advance(at, by: ext.count)
            if payload.count > 0 { ring.copyIn(at: at, from: payload.baseAddress!, count: payload.count) }
            at = ring.advance(at, by: payload.count)
            if paddedPayload > payload.count { ring.zero(at: at, count: paddedPayload - payload.count) }
            at = ring.advance(at, by: paddedPayload - payload.count)
            var trailer = PacketDescriptor.trailer(packetStart: start).littleEndian
            withUnsafeBytes(of: &trailer) { ring.copyIn(at: at, from: $0.baseAddress!, count: 8) }
        }
        next = ring.advance(start, by: total)
        writtenCount &+= 1
        return true
    }

    /// `tryWrite` for an array payload.
    @inlinable
    public mutating func tryWrite(type: PacketType, flags: UInt16 = 0, transactionID: UInt64,
                                  extension ext: [UInt8] = [], payload: [UInt8]) throws(RingError) -> Bool {
        let result = ext.withUnsafeBytes { e in
            payload.withUnsafeBytes { p in
                Result { () throws(RingError) -> Bool in
                    try tryWrite(type: type, flags: flags, transactionID: transactionID, extension: e, payload: p)
                }
            }
        }
        return try result.get()
    }

    /// Whether packets are written but not yet published.
    public var hasUncommitted: Bool { next != published }

    /// Publishes everything written since the last commit. Returns true when the reader must be
    /// signalled: the ring was empty before this batch and the reader's interrupt_mask is clear.
    @inlinable
    public mutating func commit() -> Bool {
        guard next != published else { return false }
        let old = published
        ring.writeIndexAtomic.store(next, ordering: .sequentiallyConsistent)
        published = next
        let mask = ring.interruptMaskAtomic.load(ordering: .sequentiallyConsistent)
        let r = ring.readIndexAtomic.load(ordering: .sequentiallyConsistent)
        return mask == 0 && r == old
    }

    /// Declares that the writer is blocked until `bytes` (a packet's `space`) fit; publishes
    /// pending_send_sz. Returns true if that space is already free, so the caller need not wait.
    public mutating func requestSpace(_ bytes: Int) -> Bool {
        ring.pendingSendSizeAtomic.store(UInt32(clamping: (bytes + 7) & ~7), ordering: .sequentiallyConsistent)
        let r = ring.readIndexAtomic.load(ordering: .sequentiallyConsistent)
        guard ring.isValidIndex(r) else { return false }
        cachedRead = r
        return Int(ring.bytesFree(write: next, read: r)) > bytes
    }

    /// Withdraws a space request once the writer can proceed.
    public mutating func clearSpaceRequest() {
        if ring.pendingSendSizeAtomic.load(ordering: .relaxed) != 0 {
            ring.pendingSendSizeAtomic.store(0, ordering: .sequentiallyConsistent)
        }
    }

    /// Bytes free now (with the last seen read index refreshed).
    public mutating func bytesFree() -> Int {
        let r = ring.readIndexAtomic.load(ordering: .acquiring)
        if ring.isValidIndex(r) { cachedRead = r }
        return Int(ring.bytesFree(write: next, read: cachedRead))
    }
}
