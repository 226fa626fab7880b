// Host mappings of guest pages: a guest that fragments its GPADLs meets a per-partition limit.

import GuestMemory
import Testing

@Suite("Guest page mappings")
struct GuestMemoryMappingTests {
    @Test("Alternating pages (one host mapping each) stop at the partition's limit with a typed error; released views give it back")
    func fragmentedPages() throws {
        let limit = GuestPhysicalMemory.mappingLimit
        let memory = try GuestPhysicalMemory(size: (2 * limit + 4) * GuestPhysicalMemory.pageSize)
        // Every other page: no two consecutive, so each page is a mapping of its own (a guest
        // listing such GPADLs used to exhaust vm.max_map_count for the whole host process).
        let alternating = (0..<limit).map { UInt64(2 * $0) }
        var held: PageMapping? = try memory.mapPages(alternating)
        #expect(memory.liveMappings == limit)
        #expect(throws: GuestMemoryError.tooManyMappings(wanted: 1, limit: limit)) { _ = try memory.mapPages([1]) }
        #expect(memory.liveMappings == limit, "a refused request holds nothing")
        // Consecutive pages are one mapping however many there are.
        held = nil
        #expect(memory.liveMappings == 0)
        let contiguous = try memory.mapPages((0..<UInt64(2 * limit)).map { $0 })
        #expect(memory.liveMappings == 1)
        _ = contiguous
        #expect(throws: GuestMemoryError.tooManyMappings(wanted: limit + 1, limit: limit)) {
            _ = try memory.mapPages((0...limit).map { UInt64(2 * $0) })
        }
        _ = held
    }
}
