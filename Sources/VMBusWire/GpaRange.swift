// gpa_range: a byte span over a list of 4 KiB guest page numbers, as GPADLs and GPA-direct packets carry it.

/// A guest buffer described by `byte_count`, `byte_offset` (into the first page) and its page numbers.
public struct GpaRange: Equatable, Sendable {
    public static let pageSize = 4096
    public var byteCount: UInt32
    public var byteOffset: UInt32
    public var pfns: [UInt64]

    public init(byteCount: UInt32, byteOffset: UInt32, pfns: [UInt64]) {
        self.byteCount = byteCount
        self.byteOffset = byteOffset
        self.pfns = pfns
    }

    /// Pages a range of this count and offset spans: ceil((offset + count) / 4096).
    public static func pageCount(byteCount: UInt32, byteOffset: UInt32) -> Int {
        (Int(byteOffset) + Int(byteCount) + pageSize - 1) / pageSize
    }

    /// The u64 words this range occupies: one {count, offset} word, then the PFNs.
    public var words: [UInt64] { [UInt64(byteCount) | UInt64(byteOffset) << 32] + pfns }

    /// Parses exactly `rangeCount` ranges from `words`, refusing zero counts, offsets past a page,
    /// missing PFNs and leftover words.
    public static func parse(words: [UInt64], rangeCount: Int) throws(WireError) -> [GpaRange] {
        var ranges: [GpaRange] = []
        var i = 0
        for _ in 0..<rangeCount {
            guard i < words.count else { throw .truncated(needed: (i + 1) * 8, got: words.count * 8) }
            let count = UInt32(truncatingIfNeeded: words[i])
            let offset = UInt32(truncatingIfNeeded: words[i] >> 32)
            guard count != 0 else { throw .invalidField("byte_count", 0) }
            guard offset < UInt32(pageSize) else { throw .invalidField("byte_offset", UInt64(offset)) }
            let n = pageCount(byteCount: count, byteOffset: offset)
            guard words.count - i - 1 >= n else { throw .truncated(needed: (i + 1 + n) * 8, got: words.count * 8) }
            ranges.append(GpaRange(byteCount: count, byteOffset: offset, pfns: Array(words[(i + 1)..<(i + 1 + n)])))
            i += 1 + n
        }
        guard i == words.count else { throw .oversized(limit: i * 8, got: words.count * 8) }
        return ranges
    }
}

/// Splits a GPADL into the GPADL_HEADER and GPADL_BODY messages a guest sends, as Linux does:
/// one header with up to 26 PFNs, then bodies of up to 28 PFNs each.
public enum GpadlMessages {
    /// Largest range data a single GPADL can describe (range_buflen is a u16).
    public static let maximumRangeBufferLength = Int(UInt16.max) & ~7

    public static func split(childRelid: UInt32, gpadl: UInt32, ranges: [GpaRange]) throws(WireError) -> [ChannelMessage] {
        let words = ranges.flatMap(\.words)
        guard !ranges.isEmpty, ranges.count <= Int(UInt16.max) else { throw .invalidField("rangecount", UInt64(ranges.count)) }
        guard words.count * 8 <= maximumRangeBufferLength else {
            throw .oversized(limit: maximumRangeBufferLength, got: words.count * 8)
        }
        let first = min(words.count, GpadlHeader.maximumWords)
        var messages: [ChannelMessage] = [
            .gpadlHeader(GpadlHeader(childRelid: childRelid, gpadl: gpadl, rangeBufferLength: UInt16(words.count * 8),
                                     rangeCount: UInt16(ranges.count), words: Array(words[0..<first])))
        ]
        var at = first
        while at < words.count {
            let n = min(words.count - at, GpadlBody.maximumWords)
            messages.append(.gpadlBody(GpadlBody(gpadl: gpadl, words: Array(words[at..<(at + n)]))))
            at += n
        }
        return messages
    }
}
