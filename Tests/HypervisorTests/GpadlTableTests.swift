// The host's GPADL table: assembly across messages and refusal of every inconsistent input.

import Hypervisor
import Testing
import VMBusWire

@Suite("GPADL table")
struct GpadlTableTests {
    @Test("A GPADL completes when range_buflen bytes have arrived")
    func assembly() throws {
        var table = GpadlTable()
        let range = GpaRange(byteCount: 40 * 4096, byteOffset: 0, pfns: (0..<40).map { UInt64($0 + 10) })
        let messages = try GpadlMessages.split(childRelid: 1, gpadl: 77, ranges: [range])
        guard case .gpadlHeader(let header) = messages[0], case .gpadlBody(let body) = messages[1] else {
            Issue.record("expected header then body")
            return
        }
        #expect(try table.begin(header, pageCount: 256) == nil)
        let done = try #require(try table.append(body, pageCount: 256))
        #expect(done.ranges == [range] && done.relid == 1)
        #expect(try table.lookup(77, relid: 1).isComplete)
        #expect(throws: GpadlError.wrongChannel(handle: 77, relid: 2)) { try table.lookup(77, relid: 2) }
    }

    @Test("Declared range buffers are bounded by the partition's size: GPADLs that are never finished are refused once the budget is spent (4096 of 64 KiB each held 256 MiB)")
    func rangeBudget() throws {
        var table = GpadlTable()
        let pages = 256
        let budget = GpadlTable.rangeBudget(pageCount: pages)
        // Unfinished GPADLs of the largest range_buflen (header only): the budget holds budget / 65528 of them.
        var handle: UInt32 = 10, held = 0
        while true {
            do {
                _ = try table.begin(GpadlHeader(childRelid: 1, gpadl: handle, rangeBufferLength: 65528, rangeCount: 1, words: [4096, 3]), pageCount: pages)
                held += 1
                handle += 1
            } catch { break }
        }
        #expect(held == budget / 65528 && held < GpadlTable.limit && table.declaredBytes <= budget, "\(held) held, \(table.declaredBytes) bytes declared")
    }

    @Test("Duplicate handles, overruns, bad ranges and pages outside memory are refused")
    func refusals() throws {
        var table = GpadlTable()
        let one = GpadlHeader(childRelid: 1, gpadl: 5, rangeBufferLength: 16, rangeCount: 1, words: [4096, 3])
        _ = try table.begin(one, pageCount: 16)
        #expect(throws: GpadlError.duplicateHandle(5)) { try table.begin(one, pageCount: 16) }
        #expect(throws: GpadlError.zeroHandle) {
            try table.begin(GpadlHeader(childRelid: 1, gpadl: 0, rangeBufferLength: 16, rangeCount: 1, words: [4096, 3]), pageCount: 16)
        }
        #expect(throws: GpadlError.pageOutsideMemory(99)) {
            try table.begin(GpadlHeader(childRelid: 1, gpadl: 6, rangeBufferLength: 16, rangeCount: 1, words: [4096, 99]), pageCount: 16)
        }
        #expect(throws: GpadlError.tooManyWords(handle: 7)) {
            try table.begin(GpadlHeader(childRelid: 1, gpadl: 7, rangeBufferLength: 16, rangeCount: 1, words: [4096, 3, 4]), pageCount: 16)
        }
        #expect(throws: GpadlError.badLength(12)) {
            try table.begin(GpadlHeader(childRelid: 1, gpadl: 8, rangeBufferLength: 12, rangeCount: 1, words: []), pageCount: 16)
        }
        // A range claiming two pages with one PFN supplied.
        #expect(throws: GpadlError.self) {
            try table.begin(GpadlHeader(childRelid: 1, gpadl: 9, rangeBufferLength: 16, rangeCount: 1, words: [8192, 3]), pageCount: 16)
        }
        _ = try table.begin(GpadlHeader(childRelid: 1, gpadl: 10, rangeBufferLength: 24, rangeCount: 1, words: [8192]), pageCount: 16)
        #expect(throws: GpadlError.tooManyWords(handle: 10)) { try table.append(GpadlBody(gpadl: 10, words: [1, 2, 3]), pageCount: 16) }
        #expect(table.entries[10] == nil, "an overrun drops the GPADL")
        #expect(throws: GpadlError.unknownHandle(11)) { try table.append(GpadlBody(gpadl: 11, words: [1]), pageCount: 16) }
        #expect(table.removeAll(relid: 1) == [5])
    }
}
