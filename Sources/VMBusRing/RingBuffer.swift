// One ring in shared memory: its control page fields as atomics and wrap-aware copies in its data area.

import Atomics
import VMBusWire

/// A view of one VMBus ring: a 4 KiB control page and a data area of `dataSize` bytes.
/// The view owns nothing; the memory must outlive it. Producer and consumer state live in
/// `RingWriter` and `RingReader`, one of each per ring.
public struct RingBuffer: @unchecked Sendable {
    public let control: UnsafeMutableRawPointer
    public let data: UnsafeMutableRawPointer
    public let dataSize: UInt32

    @usableFromInline let writeIndexAtomic: UnsafeAtomic<UInt32>
    @usableFromInline let readIndexAtomic: UnsafeAtomic<UInt32>
    @usableFromInline let interruptMaskAtomic: UnsafeAtomic<UInt32>
    @usableFromInline let pendingSendSizeAtomic: UnsafeAtomic<UInt32>
    @usableFromInline let featureBitsAtomic: UnsafeAtomic<UInt32>

    /// Largest data area: indices are u32 and packets need room to spare.
    public static let maximumDataSize = 1 << 30

    public init(control: UnsafeMutableRawPointer, data: UnsafeMutableRawPointer, dataSize: Int) throws(RingError) {
        guard dataSize >= 64, dataSize % 8 == 0, dataSize <= Self.maximumDataSize else {
            throw .invalidGeometry(dataSize: dataSize)
        }
        self.control = control
        self.data = data
        self.dataSize = UInt32(dataSize)
        func atomic(_ offset: Int) -> UnsafeAtomic<UInt32> {
            // The control page is 4 KiB and every field offset is below 68, 4-byte aligned.
            UnsafeAtomic(at: (control + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
        }
        writeIndexAtomic = atomic(RingControlPage.writeIndex)
        readIndexAtomic = atomic(RingControlPage.readIndex)
        interruptMaskAtomic = atomic(RingControlPage.interruptMask)
        pendingSendSizeAtomic = atomic(RingControlPage.pendingSendSize)
        featureBitsAtomic = atomic(RingControlPage.featureBits)
    }

    /// A ring laid out contiguously: the control page, then the data area.
    public init(contiguous memory: UnsafeMutableRawBufferPointer) throws(RingError) {
        guard let base = memory.baseAddress, memory.count > RingControlPage.size else {
            throw .invalidGeometry(dataSize: memory.count - RingControlPage.size)
        }
        try self.init(control: base, data: base + RingControlPage.size, dataSize: memory.count - RingControlPage.size)
    }

    /// Zeroes the control page and sets `feature_bits`, as a guest does before OPENCHANNEL.
    public func initializeControlPage(featureBits: UInt32 = RingControlPage.featurePendingSendSize) {
        control.initializeMemory(as: UInt8.self, repeating: 0, count: RingControlPage.size)
        featureBitsAtomic.store(featureBits, ordering: .sequentiallyConsistent)
    }

    // MARK: Shared fields (for status output and tests)

    public var writeIndex: UInt32 { writeIndexAtomic.load(ordering: .acquiring) }
    public var readIndex: UInt32 { readIndexAtomic.load(ordering: .acquiring) }
    public var interruptMask: UInt32 { interruptMaskAtomic.load(ordering: .acquiring) }
    public var pendingSendSize: UInt32 { pendingSendSizeAtomic.load(ordering: .acquiring) }
    public var featureBits: UInt32 { featureBitsAtomic.load(ordering: .acquiring) }

    /// Bytes waiting to be read for indices `w` and `r`.
    @inlinable
    public func bytesToRead(write w: UInt32, read r: UInt32) -> UInt32 { w >= r ? w - r : dataSize - r + w }

    /// Bytes free for indices `w` and `r` (a writer may use strictly less than this).
    @inlinable
    public func bytesFree(write w: UInt32, read r: UInt32) -> UInt32 { w >= r ? dataSize - (w - r) : r - w }

    /// Whether an index read from shared memory is usable.
    @inlinable
    func isValidIndex(_ i: UInt32) -> Bool { i < dataSize && i & 7 == 0 }

    /// Bytes currently waiting, from the shared indices (status output).
    public var fill: UInt32 {
        let w = writeIndex, r = readIndex
        return isValidIndex(w) && isValidIndex(r) ? bytesToRead(write: w, read: r) : 0
    }

    // MARK: Wrap-aware copies. `offset` < dataSize and `count` <= dataSize, checked by callers.

    @inlinable
    func copyIn(at offset: UInt32, from source: UnsafeRawPointer, count: Int) {
        let first = min(count, Int(dataSize - offset))
        (data + Int(offset)).copyMemory(from: source, byteCount: first)
        if count > first { data.copyMemory(from: source + first, byteCount: count - first) }
    }

    @inlinable
    func zero(at offset: UInt32, count: Int) {
        let first = min(count, Int(dataSize - offset))
        (data + Int(offset)).initializeMemory(as: UInt8.self, repeating: 0, count: first)
        if count > first { data.initializeMemory(as: UInt8.self, repeating: 0, count: count - first) }
    }

    @inlinable
    func copyOut(at offset: UInt32, to destination: UnsafeMutableRawPointer, count: Int) {
        let first = min(count, Int(dataSize - offset))
        destination.copyMemory(from: data + Int(offset), byteCount: first)
        if count > first { (destination + first).copyMemory(from: data, byteCount: count - first) }
    }

    @inlinable
    func advance(_ offset: UInt32, by n: Int) -> UInt32 {
        let sum = UInt64(offset) + UInt64(n)
        return UInt32(sum % UInt64(dataSize))
    }
}

extension RingBuffer {
    /// Calls `body` for each well-formed packet between offsets `from` and `to`; stops at the
    /// first malformed descriptor. For tracing and status, never for the data path.
    func walkPackets(from: UInt32, to: UInt32, _ body: (IncomingPacket) -> Void) {
        var at = from
        while at != to {
            let available = bytesToRead(write: to, read: at)
            guard available >= 24 else { return }
            let descriptor = withUnsafeTemporaryAllocation(byteCount: PacketDescriptor.size, alignment: 8) { tmp in
                copyOut(at: at, to: tmp.baseAddress!, count: PacketDescriptor.size)
                return PacketDescriptor(loading: tmp.baseAddress!)
            }
            let length = descriptor.length
            guard length >= 16, descriptor.payloadOffset >= 16, descriptor.payloadOffset <= length,
                length + 8 <= Int(available), descriptor.packetType != nil
            else { return }
            body(IncomingPacket(descriptor: descriptor, ring: self, start: at))
            at = advance(at, by: length + 8)
        }
    }
}

extension RingWriter {
    /// Visits the packets written since the last commit.
    public func forEachUncommitted(_ body: (IncomingPacket) -> Void) {
        ring.walkPackets(from: published, to: next, body)
    }
}

extension RingReader {
    /// Visits the packets read since the last commit.
    public func forEachUncommitted(_ body: (IncomingPacket) -> Void) {
        ring.walkPackets(from: published, to: position, body)
    }
}
