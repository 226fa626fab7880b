// The guest side's shareable memory: pages mapped contiguously in this process, each with its own guest-physical page number.

/// Pages the guest side may share with its host (rings, SynIC pages, GPADL and GPA-direct
/// buffers). They are contiguous in this process's address space, but their guest-physical
/// page numbers need not be: under PartitionLink the pool is the whole partition memory and
/// page n is guest page n; under KernelGlue it is a buffer of pinned guest pages the module
/// allocated and reported one by one. Anything that goes on the wire asks `pfn(ofPage:)`.
public final class GuestBufferPool: @unchecked Sendable {
    /// Page 0 of the pool in this process.
    public let base: UnsafeMutableRawPointer
    public let pageCount: Int
    /// Guest page frame number of each pool page (owned).
    private let pfnTable: UnsafeMutableBufferPointer<UInt64>
    /// Keeps whatever backs `base` mapped for as long as the pool lives.
    private let owner: AnyObject

    /// A pool whose page n is guest page n of `memory` (PartitionLink, loopback tests).
    public convenience init(identity memory: GuestPhysicalMemory) {
        self.init(base: memory.base, pfns: (0..<UInt64(memory.pageCount)).map { $0 }, owner: memory)
    }

    /// A pool over `pfns.count` pages mapped at `base`, page i being guest page `pfns[i]`.
    public init(base: UnsafeMutableRawPointer, pfns: [UInt64], owner: AnyObject) {
        self.base = base
        pageCount = pfns.count
        pfnTable = .allocate(capacity: pfns.count)
        _ = pfnTable.initialize(from: pfns)
        self.owner = owner
    }

    deinit { pfnTable.deallocate() }

    /// The guest page frame number of pool page `page` (a page this process allocated from the pool).
    @inline(__always)
    public func pfn(ofPage page: UInt64) -> UInt64 { pfnTable[Int(page)] }

    /// The guest-physical address of pool page `page`.
    @inline(__always)
    public func gpa(ofPage page: UInt64) -> UInt64 { pfnTable[Int(page)] << 12 }

    /// The page frame numbers of `count` pool pages from `first`.
    public func pfns(first: UInt64, count: Int) -> [UInt64] {
        (0..<count).map { pfnTable[Int(first) + $0] }
    }

    /// `count` bytes from `offset` within pool page `page` onward, bounds-checked against the pool.
    public func pointer(page: UInt64, offset: Int = 0, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        let size = UInt64(pageCount) << 12
        let start = page << 12 &+ UInt64(offset)
        guard page < UInt64(pageCount), offset >= 0, count >= 0, start <= size, UInt64(count) <= size - start else {
            throw .outOfRange(gpa: start, count: count)
        }
        return base + Int(start)
    }

    /// The same range as a buffer.
    public func buffer(page: UInt64, offset: Int = 0, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: try pointer(page: page, offset: offset, count: count), count: count)
    }
}
