// A partition's guest-physical memory: a memfd, mapped whole, with bounds-checked GPA translation.

import CSystem
import Synchronization
import Glibc
import VMBusWire

/// Why guest memory could not be created, mapped or reached.
public enum GuestMemoryError: Error, Equatable, Sendable {
    /// The size is zero or not a multiple of 4 KiB.
    case invalidSize(Int)
    /// A guest address range lies outside the partition's memory.
    case outOfRange(gpa: UInt64, count: Int)
    /// A page number lies outside the partition's memory.
    case invalidPage(UInt64)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// No free guest pages for an allocation.
    case exhausted(pagesWanted: Int)
    /// Mapping these pages would pass the partition's limit of host mappings (each run of
    /// consecutive pages is one; the process has vm.max_map_count of them for every partition).
    case tooManyMappings(wanted: Int, limit: Int)
}

/// The guest-physical memory of one partition: `size` bytes in a memfd, mapped once. The host
/// translates GPAs through it; a guest in another process maps the same fd.
public final class GuestPhysicalMemory: @unchecked Sendable {
    public static let pageSize = 4096
    /// The memfd (owned: closed on deinit).
    public let fd: Int32
    public let size: Int
    /// The whole mapping: GPA 0 is `base`.
    public let base: UnsafeMutableRawPointer
    /// Host mappings `mapPages` may hold at once for this memory (runs of consecutive pages). A
    /// guest that lists alternating pages in its GPADLs meets this limit, not the process's.
    public static let mappingLimit = 16384
    let mappings = MappingCount()
    /// Host mappings held now by `mapPages` views.
    public var liveMappings: Int { mappings.value.load(ordering: .relaxed) }

    /// Creates zeroed memory of `size` bytes (a multiple of 4 KiB).
    public convenience init(size: Int, name: String = "viridian-guest") throws(GuestMemoryError) {
        guard size > 0, size % Self.pageSize == 0 else { throw .invalidSize(size) }
        // Sealed: the agent it is sent to cannot shrink it under the host.
        let fd = viridian_memfd_create_sealed(name, Int64(size))
        guard fd >= 0 else { throw .system(call: "memfd_create", errno: errno) }
        try self.init(adopting: fd, size: size)
    }

    /// Maps memory that another process created and passed as `fd`. Takes ownership of `fd`.
    public init(adopting fd: Int32, size: Int) throws(GuestMemoryError) {
        guard size > 0, size % Self.pageSize == 0 else { throw .invalidSize(size) }
        guard let p = viridian_mmap_shared(size, fd, 0) else {
            let e = errno
            close(fd)
            throw .system(call: "mmap", errno: e)
        }
        self.fd = fd
        self.size = size
        self.base = p
    }

    deinit {
        munmap(base, size)
        close(fd)
    }

    public var pageCount: Int { size / Self.pageSize }

    /// Gives the host back the memory behind `pfns` (a hole in the memfd; they read as zeros
    /// afterwards): pages a partition deposited into a child leave it this way. Runs of
    /// consecutive pages are one call each; pages outside memory are skipped.
    public func discard(pfns: [UInt64]) {
        var i = 0
        let sorted = pfns.filter { $0 < UInt64(pageCount) }.sorted()
        while i < sorted.count {
            var j = i + 1
            while j < sorted.count && sorted[j] == sorted[j - 1] + 1 { j += 1 }
            _ = viridian_punch_hole(fd, Int64(sorted[i] << 12), Int64(j - i) << 12)
            i = j
        }
    }

    /// Whether all `count` bytes at `gpa` lie inside memory (no overflow for a GPA near 2^64).
    @inlinable
    public func contains(gpa: UInt64, count: Int) -> Bool {
        count >= 0 && gpa <= UInt64(size) && UInt64(count) <= UInt64(size) - gpa
    }

    /// The host address of `count` bytes at `gpa`, or an error if any byte is outside memory.
    @inlinable
    public func pointer(gpa: UInt64, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard contains(gpa: gpa, count: count) else { throw .outOfRange(gpa: gpa, count: count) }
        return base + Int(gpa)
    }

    /// A buffer view of `count` bytes at `gpa` (bounds-checked).
    public func buffer(gpa: UInt64, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: try pointer(gpa: gpa, count: count), count: count)
    }

    /// Maps the listed 4 KiB pages, in order, into one contiguous host view. Runs of consecutive
    /// page numbers become one mapping. Used for GPADLs, whose pages need not be contiguous.
    public func mapPages(_ pfns: [UInt64]) throws(GuestMemoryError) -> PageMapping {
        guard !pfns.isEmpty else { throw .invalidSize(0) }
        for pfn in pfns where pfn >= UInt64(pageCount) { throw .invalidPage(pfn) }
        // Runs of consecutive pages: each is one host mapping (start index, pages).
        var spans: [(start: Int, pages: Int)] = []
        for (i, pfn) in pfns.enumerated() {
            if let last = spans.last, pfns[last.start] &+ UInt64(last.pages) == pfn {
                spans[spans.count - 1].pages += 1
            } else {
                spans.append((i, 1))
            }
        }
        let runs = spans.count
        let (before, _) = mappings.value.wrappingAdd(runs, ordering: .relaxed)
        guard before + runs <= Self.mappingLimit else {
            mappings.value.wrappingSubtract(runs, ordering: .relaxed)
            throw .tooManyMappings(wanted: runs, limit: Self.mappingLimit)
        }
        let length = pfns.count * Self.pageSize
        guard let view = viridian_reserve(length) else {
            let e = errno
            mappings.value.wrappingSubtract(runs, ordering: .relaxed)
            throw .system(call: "mmap(reserve)", errno: e)
        }
        for span in spans {
            let at = view + span.start * Self.pageSize
            guard viridian_mmap_fixed_shared(at, span.pages * Self.pageSize, fd, Int64(pfns[span.start]) * Int64(Self.pageSize)) != nil else {
                let e = errno
                munmap(view, length)
                mappings.value.wrappingSubtract(runs, ordering: .relaxed)
                throw .system(call: "mmap(fixed)", errno: e)
            }
        }
        return PageMapping(base: view, count: length, runs: runs, counter: mappings)
    }
}

/// A contiguous host view of a list of guest pages; unmapped when released.
public final class PageMapping: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let count: Int
    let runs: Int
    let counter: MappingCount

    init(base: UnsafeMutableRawPointer, count: Int, runs: Int, counter: MappingCount) {
        self.base = base
        self.count = count
        self.runs = runs
        self.counter = counter
    }

    deinit {
        munmap(base, count)
        counter.value.wrappingSubtract(runs, ordering: .relaxed)
    }

    public var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: count) }
}

/// The number of host mappings the views of one guest memory hold (shared with the views, which
/// may outlive the memory object).
final class MappingCount: Sendable {
    let value = Atomic<Int>(0)
}
