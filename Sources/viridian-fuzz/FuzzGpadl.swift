// Target "gpadl": the host's GPADL table built from guest messages, the guest's split of a GPADL
// into messages (which must reassemble to the same ranges), and mapping GPADL pages.

import GuestMemory
import Hypervisor
import VMBusWire

let gpadlTarget = FuzzTarget(
    name: "gpadl",
    summary: "GpadlTable.begin/append/lookup/remove from GPADL_HEADER/BODY bytes, GpadlMessages.split round trip, GuestPhysicalMemory.mapPages"
) { data in
    var r = FuzzReader(data)
    GpadlFuzz.run(&r)
}

enum GpadlFuzz {
    static func run(_ r: inout FuzzReader) {
        var table = GpadlTable()
        let pageCount = Int(r.u16())
        var handles: [UInt32] = [0]
        var steps = 0
        while steps < 256 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 8 {
            case 0:
                // GPADL_HEADER as the guest sent it (type forced, the rest from the input).
                var bytes = r.blob(limit: 240)
                if bytes.count >= 4 { bytes.putLE(ChannelMessageType.gpadlHeader.rawValue, at: 0) }
                guard let header = try? GpadlHeader(decoding: bytes) else { continue }
                handles.append(header.gpadl)
                if let g = try? table.begin(header, pageCount: pageCount) { completed(g, pageCount: pageCount) }
            case 1:
                var bytes = r.blob(limit: 240)
                if bytes.count >= 4 { bytes.putLE(ChannelMessageType.gpadlBody.rawValue, at: 0) }
                if bytes.count >= 16 && op & 0x80 != 0 { bytes.putLE(handles[r.below(handles.count)], at: 12) }
                guard let body = try? GpadlBody(decoding: bytes) else { continue }
                if let g = try? table.append(body, pageCount: pageCount) { completed(g, pageCount: pageCount) }
            case 2:
                let handle = handles[r.below(handles.count)]
                if let g = try? table.lookup(handle, relid: r.u32() % 4) { fuzzCheck(g.isComplete, "lookup returned an incomplete GPADL") }
            case 3:
                table.remove(handles[r.below(handles.count)])
            case 4:
                let gone = table.removeAll(relid: r.u32() % 4)
                for h in gone { fuzzCheck(table.entries[h] == nil, "GPADL \(h) survived removeAll") }
            case 5:
                roundTrip(&r)
            case 6:
                mapPages(&r)
            default:
                if op & 0x80 != 0 { table.removeAll() }
            }
            fuzzCheck(table.entries.count <= GpadlTable.limit, "\(table.entries.count) GPADLs held")
        }
    }

    /// A complete GPADL: its ranges parsed, every page inside memory.
    static func completed(_ g: Gpadl, pageCount: Int) {
        fuzzCheck(g.isComplete, "a GPADL was returned before it was complete")
        for range in g.ranges ?? [] {
            fuzzCheck(range.pfns.count == GpaRange.pageCount(byteCount: range.byteCount, byteOffset: range.byteOffset),
                      "range with \(range.pfns.count) PFNs")
            for pfn in range.pfns { fuzzCheck(pfn < UInt64(pageCount), "PFN \(pfn) outside \(pageCount) pages") }
        }
    }

    /// Ranges the guest describes, split into messages, encoded, decoded and assembled: the same ranges.
    static func roundTrip(_ r: inout FuzzReader) {
        let count = 1 + r.below(4)
        var ranges: [GpaRange] = []
        for _ in 0..<count {
            let offset = UInt32(r.u16() % 4096)
            let length = max(1, UInt32(r.u16()) << UInt32(r.u8() % 5))
            let n = min(GpaRange.pageCount(byteCount: length, byteOffset: offset), 2048)
            let byteCount = min(length, UInt32(n * 4096) - offset)
            let pages = GpaRange.pageCount(byteCount: byteCount, byteOffset: offset)
            let first = UInt64(r.u32())
            let scattered = r.bool()
            var pfns: [UInt64] = []
            for i in 0..<pages { pfns.append(scattered ? UInt64(r.u32()) : first &+ UInt64(i)) }
            ranges.append(GpaRange(byteCount: byteCount, byteOffset: offset, pfns: pfns))
        }
        let handle = r.u32() | 1
        let relid = r.u32()
        guard let messages = try? GpadlMessages.split(childRelid: relid, gpadl: handle, ranges: ranges) else { return }
        let maxPFN = ranges.flatMap(\.pfns).max() ?? 0
        let pageCount = Int(maxPFN) + 1
        var table = GpadlTable()
        var result: Gpadl?
        for (i, message) in messages.enumerated() {
            let bytes = message.encode()
            fuzzCheck(bytes.count <= HvMessage.payloadCapacity, "a GPADL message of \(bytes.count) bytes")
            guard let decoded = try? ChannelMessage(decoding: bytes) else {
                fuzzCheck(false, "GPADL message \(i) does not decode")
                return
            }
            fuzzCheck(result == nil, "the GPADL completed before its last message")
            do {
                switch decoded {
                case .gpadlHeader(let h): result = try table.begin(h, pageCount: pageCount)
                case .gpadlBody(let b): result = try table.append(b, pageCount: pageCount)
                default: fuzzCheck(false, "split produced \(decoded.type)")
                }
            } catch {
                fuzzCheck(false, "the host refused the guest's own split: \(error)")
            }
        }
        fuzzCheck(result?.ranges == ranges, "reassembled ranges differ from the split ones")
        fuzzCheck((try? table.lookup(handle, relid: relid))?.ranges == ranges, "lookup of the reassembled GPADL differs")
    }

    /// Maps listed pages as one view: page i of the view must be guest page pfns[i].
    static func mapPages(_ r: inout FuzzReader) {
        let memory = fuzzMemory.memory
        fuzzMemory.reset()
        let count = r.below(33)
        var pfns: [UInt64] = []
        for _ in 0..<count {
            let v = r.u8()
            pfns.append(v == 0xFF ? r.u64() : UInt64(v) % UInt64(memory.pageCount + 2))
        }
        let gpa = r.u64()
        let length = Int(r.u16())
        fuzzConsume(UInt64(memory.contains(gpa: gpa, count: length) ? 1 : 0))
        if let b = try? memory.buffer(gpa: gpa, count: length) { fuzzCheck(b.count == length, "short buffer") }
        guard let mapping = try? memory.mapPages(pfns) else { return }
        fuzzCheck(mapping.count == pfns.count * GuestPhysicalMemory.pageSize, "mapping of \(mapping.count) bytes")
        for (i, pfn) in pfns.enumerated() {
            fuzzCheck(pfn < UInt64(memory.pageCount), "page \(pfn) outside memory was mapped")
            mapping.base.storeBytes(of: UInt32(i + 1), toByteOffset: i * GuestPhysicalMemory.pageSize, as: UInt32.self)
        }
        for (i, pfn) in pfns.enumerated() {
            let last = pfns.lastIndex(of: pfn) ?? i
            let seen = memory.base.load(fromByteOffset: Int(pfn) * GuestPhysicalMemory.pageSize, as: UInt32.self)
            fuzzCheck(seen == UInt32(last + 1), "view page \(i) is not guest page \(pfn)")
        }
    }
}
