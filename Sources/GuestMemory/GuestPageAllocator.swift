// The guest's own page allocator: hands out runs of free 4 KiB pages of its physical memory.

/// First-fit allocator over a partition's guest pages, used by the guest side for SynIC pages,
/// rings and buffers. Page 0 is never handed out, so GPA 0 keeps meaning "none".
public struct GuestPageAllocator: Sendable {
    private var free: [Bool]
    public private(set) var freePages: Int

    public init(pageCount: Int) {
        free = [Bool](repeating: true, count: pageCount)
        if pageCount > 0 { free[0] = false }
        freePages = max(pageCount - 1, 0)
    }

    /// Allocates `count` contiguous pages; returns the first page number.
    public mutating func allocate(pages count: Int) throws(GuestMemoryError) -> UInt64 {
        guard count > 0 else { throw .invalidSize(0) }
        var runStart = 0, runLength = 0
        for i in free.indices {
            if free[i] {
                if runLength == 0 { runStart = i }
                runLength += 1
                if runLength == count {
                    for j in runStart..<(runStart + count) { free[j] = false }
                    freePages -= count
                    return UInt64(runStart)
                }
            } else {
                runLength = 0
            }
        }
        throw .exhausted(pagesWanted: count)
    }

    /// Returns pages to the pool.
    public mutating func release(firstPage: UInt64, pages count: Int) {
        for j in Int(firstPage)..<(Int(firstPage) + count) where j < free.count && !free[j] {
            free[j] = true
            freePages += 1
        }
    }
}
