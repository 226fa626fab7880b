// The consumer side of a ring: validated packets out, one index publish per drain, space signalling.

import Atomics
import VMBusWire

/// A packet still in the ring. Valid until the reader's next `commit()`; the descriptor is a
/// private copy, the bytes are read from shared memory (so a peer can change content, never bounds).
public struct IncomingPacket {
    public let descriptor: PacketDescriptor
    @usableFromInline let ring: RingBuffer
    @usableFromInline let start: UInt32

    @usableFromInline
    init(descriptor: PacketDescriptor, ring: RingBuffer, start: UInt32) {
        self.descriptor = descriptor
        self.ring = ring
        self.start = start
    }

    public var type: PacketType { PacketType(rawValue: descriptor.type)! }
    public var transactionID: UInt64 { descriptor.transactionID }
    /// Bytes from the payload offset to the end of the packet (includes the sender's padding).
    public var payloadLength: Int { descriptor.length - descriptor.payloadOffset }
    /// Bytes between the descriptor and the payload (GPA ranges, transfer-page ranges).
    public var extensionLength: Int { descriptor.payloadOffset - PacketDescriptor.size }

    /// Copies `count` bytes starting `offset` bytes into the packet. Returns false if out of bounds.
    @inlinable
    public func copy(fromPacketOffset offset: Int, count: Int, into destination: UnsafeMutableRawPointer) -> Bool {
        guard offset >= 0, count >= 0, offset + count <= descriptor.length else { return false }
        ring.copyOut(at: ring.advance(start, by: offset), to: destination, count: count)
        return true
    }

    /// Copies up to `destination.count` payload bytes; returns how many were copied.
    @inlinable
    public func copyPayload(into destination: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(destination.count, payloadLength)
        if n > 0 { _ = copy(fromPacketOffset: descriptor.payloadOffset, count: n, into: destination.baseAddress!) }
        return n
    }

    /// The payload as an array (control paths and tests; allocates).
    public func payloadBytes() -> [UInt8] {
        // Capacity 0 would write the count of the shared empty-array storage, which
        // ThreadSanitizer reports as a race between threads that both do it.
        guard payloadLength > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: payloadLength) { buf, n in
            n = copyPayload(into: UnsafeMutableRawBufferPointer(buf))
        }
    }

    /// The extension bytes as an array (allocates).
    public func extensionBytes() -> [UInt8] {
        guard extensionLength > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: extensionLength) { buf, n in
            _ = copy(fromPacketOffset: PacketDescriptor.size, count: extensionLength, into: buf.baseAddress!)
            n = extensionLength
        }
    }

    /// A little-endian integer at `offset` in the payload, or nil if it does not fit.
    @inlinable
    public func loadPayload<T: FixedWidthInteger>(_: T.Type = T.self, at offset: Int) -> T? {
        guard offset >= 0, offset + MemoryLayout<T>.size <= payloadLength else { return nil }
        var value: T = 0
        _ = withUnsafeMutableBytes(of: &value) {
            copy(fromPacketOffset: descriptor.payloadOffset + offset, count: MemoryLayout<T>.size, into: $0.baseAddress!)
        }
        return T(littleEndian: value)
    }
}

/// The only reader of a ring. Take packets with `next()`, then `commit()` once per drain; signal
/// the writer only when `commit()` says so. Everything read from shared memory is validated.
public struct RingReader: ~Copyable {
    public let ring: RingBuffer
    @usableFromInline var position: UInt32
    @usableFromInline var published: UInt32
    @usableFromInline var cachedWrite: UInt32
    @usableFromInline var readCount: UInt64 = 0
    /// Packets read since creation.
    public var packetsRead: UInt64 { readCount }

    public init(ring: RingBuffer) throws(RingError) {
        self.ring = ring
        let r = ring.readIndexAtomic.load(ordering: .acquiring)
        guard ring.isValidIndex(r) else { throw .corruptIndex(name: "read_index", value: r) }
        position = r
        published = r
        cachedWrite = r
    }

    /// The next packet, or nil if the ring is empty. Throws if the writer corrupted the ring.
    @inlinable
    public mutating func next() throws(RingError) -> IncomingPacket? {
        var available = ring.bytesToRead(write: cachedWrite, read: position)
        if available == 0 {
            let w = ring.writeIndexAtomic.load(ordering: .acquiring)
            guard ring.isValidIndex(w) else { throw .corruptIndex(name: "write_index", value: w) }
            // The writer only moves forward: seen from the published read index, its write index
            // is at or past everything read since. One moved back (behind `position`) would make
            // the reader lap the ring, re-reading packets forever past its own uncommitted start.
            guard ring.bytesToRead(write: w, read: published) >= ring.bytesToRead(write: position, read: published) else {
                throw .corruptIndex(name: "write_index", value: w)
            }
            cachedWrite = w
            available = ring.bytesToRead(write: w, read: position)
            if available == 0 { return nil }
        }
        guard available >= UInt32(PacketDescriptor.size + PacketDescriptor.trailerSize) else {
            throw .corruptPacket("only \(available) bytes available")
        }
        let descriptor: PacketDescriptor
        if Int(position) + PacketDescriptor.size <= Int(ring.dataSize) {
            descriptor = PacketDescriptor(loading: ring.data + Int(position))
        } else {
            descriptor = withUnsafeTemporaryAllocation(byteCount: PacketDescriptor.size, alignment: 8) { tmp in
                ring.copyOut(at: position, to: tmp.baseAddress!, count: PacketDescriptor.size)
                return PacketDescriptor(loading: tmp.baseAddress!)
            }
        }
        let length = descriptor.length, offset = descriptor.payloadOffset
        guard length >= PacketDescriptor.size, offset >= PacketDescriptor.size, offset <= length,
            length + PacketDescriptor.trailerSize <= Int(available)
        else { throw .corruptPacket("len8 \(descriptor.len8) offset8 \(descriptor.offset8) with \(available) bytes") }
        guard descriptor.packetType != nil, descriptor.type != 0 else {
            throw .corruptPacket("packet type \(descriptor.type)")
        }
        guard descriptor.flags & ~PacketDescriptor.flagCompletionRequested == 0 else {
            throw .corruptPacket("flags 0x\(String(descriptor.flags, radix: 16))")
        }
        let packet = IncomingPacket(descriptor: descriptor, ring: ring, start: position)
        position = ring.advance(position, by: length + PacketDescriptor.trailerSize)
        readCount &+= 1
        return packet
    }

    /// Publishes the read index. Returns true when the writer must be signalled: it asked for
    /// pending_send_sz bytes (and advertised the feature), and this drain made them free.
    @inlinable
    public mutating func commit() -> Bool {
        guard position != published else { return false }
        let start = published
        ring.readIndexAtomic.store(position, ordering: .sequentiallyConsistent)
        published = position
        guard ring.featureBitsAtomic.load(ordering: .relaxed) & RingControlPage.featurePendingSendSize != 0 else {
            return false
        }
        let pending = ring.pendingSendSizeAtomic.load(ordering: .sequentiallyConsistent)
        guard pending != 0 else { return false }
        let w = ring.writeIndexAtomic.load(ordering: .acquiring)
        guard ring.isValidIndex(w) else { return false }
        let freeNow = ring.bytesFree(write: w, read: position)
        let consumed = ring.bytesToRead(write: position, read: start)
        let freeBefore = freeNow > consumed ? freeNow - consumed : 0
        if freeBefore > pending { return false }
        return freeNow > pending
    }

    /// Sets interrupt_mask: "don't signal me, I am draining".
    public func mask() {
        ring.interruptMaskAtomic.store(1, ordering: .sequentiallyConsistent)
    }

    /// Clears interrupt_mask and re-checks. Returns true if data arrived meanwhile (drain again).
    public mutating func unmask() -> Bool {
        ring.interruptMaskAtomic.store(0, ordering: .sequentiallyConsistent)
        let w = ring.writeIndexAtomic.load(ordering: .sequentiallyConsistent)
        guard ring.isValidIndex(w) else { return true }
        cachedWrite = w
        return w != position
    }

    /// Whether packets are waiting (refreshes the write index).
    public mutating func hasData() -> Bool {
        let w = ring.writeIndexAtomic.load(ordering: .acquiring)
        if ring.isValidIndex(w) { cachedWrite = w }
        return cachedWrite != position
    }
}

extension RingReader {
    /// Returns `packet` (and everything read after it) to the ring, so that the next `next()`
    /// yields it again. Only packets not yet committed can be put back.
    /// Throws (and changes nothing) for a packet of another ring or one already committed.
    public mutating func putBack(_ packet: IncomingPacket) throws(RingError) {
        guard packet.ring.data == ring.data else { throw .corruptPacket("put back: a packet of another ring") }
        let consumedSincePublish = ring.bytesToRead(write: position, read: published)
        let packetOffset = ring.bytesToRead(write: packet.start, read: published)
        guard packetOffset < consumedSincePublish || (packetOffset == 0 && position != published) else {
            throw .corruptPacket("put back: the packet was already committed")
        }
        position = packet.start
        readCount &-= 1
    }
}
