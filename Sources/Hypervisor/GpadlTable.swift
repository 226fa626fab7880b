// The host's table of GPADLs: assembled from header and body messages, validated, then owned by a channel.

import VMBusWire

/// One GPADL as the host keeps it.
public struct Gpadl: Sendable {
    public let handle: UInt32
    public let relid: UInt32
    public let rangeBufferLength: Int
    public let rangeCount: Int
    var words: [UInt64]
    /// Set once every range byte has arrived and validated.
    public internal(set) var ranges: [GpaRange]?
    public var isComplete: Bool { ranges != nil }
}

/// Why a GPADL was refused.
public enum GpadlError: Error, Equatable, Sendable {
    case zeroHandle
    case duplicateHandle(UInt32)
    case unknownHandle(UInt32)
    case badLength(Int)
    case tooManyWords(handle: UInt32)
    case malformedRanges(WireError)
    case pageOutsideMemory(UInt64)
    case wrongChannel(handle: UInt32, relid: UInt32)
    case notComplete(UInt32)
}

/// GPADLs of one partition, keyed by the guest-chosen handle. Body messages carry no relid, so a
/// handle is unique across all channels while it exists.
public struct GpadlTable: Sendable {
    public private(set) var entries: [UInt32: Gpadl] = [:]
    /// Most GPADLs a partition may hold (a guest cannot exhaust host memory with them).
    public static let limit = 4096

    public init() {}

    /// Range-buffer bytes all GPADLs of a partition of `pageCount` pages may declare together:
    /// every page four times over, plus 1 MiB (the headers of small GPADLs).
    public static func rangeBudget(pageCount: Int) -> Int { pageCount * 8 * 4 + (1 << 20) }

    /// Range-buffer bytes the GPADLs held now declared.
    public var declaredBytes: Int { entries.values.reduce(0) { $0 + $1.rangeBufferLength } }

    /// Starts a GPADL from its header. Returns the GPADL if the header alone completed it.
    public mutating func begin(_ header: GpadlHeader, pageCount: Int) throws(GpadlError) -> Gpadl? {
        guard header.gpadl != 0 else { throw .zeroHandle }
        guard entries[header.gpadl] == nil else { throw .duplicateHandle(header.gpadl) }
        guard entries.count < Self.limit else { throw .badLength(entries.count) }
        let length = Int(header.rangeBufferLength)
        guard length >= 16, length % 8 == 0, header.rangeCount >= 1 else { throw .badLength(length) }
        guard header.words.count * 8 <= length else { throw .tooManyWords(handle: header.gpadl) }
        // What the table stores for a GPADL is at most its declared range buffer: the declared
        // buffers together may describe each guest page a few times over, no more.
        guard length <= Self.rangeBudget(pageCount: pageCount) - declaredBytes else { throw .badLength(length) }
        entries[header.gpadl] = Gpadl(handle: header.gpadl, relid: header.childRelid, rangeBufferLength: length,
                                      rangeCount: Int(header.rangeCount), words: header.words, ranges: nil)
        return try completeIfReady(header.gpadl, pageCount: pageCount)
    }

    /// Adds a body's words. Returns the GPADL once complete.
    public mutating func append(_ body: GpadlBody, pageCount: Int) throws(GpadlError) -> Gpadl? {
        guard var entry = entries[body.gpadl], !entry.isComplete else { throw .unknownHandle(body.gpadl) }
        guard (entry.words.count + body.words.count) * 8 <= entry.rangeBufferLength else {
            entries[body.gpadl] = nil
            throw .tooManyWords(handle: body.gpadl)
        }
        entry.words += body.words
        entries[body.gpadl] = entry
        return try completeIfReady(body.gpadl, pageCount: pageCount)
    }

    private mutating func completeIfReady(_ handle: UInt32, pageCount: Int) throws(GpadlError) -> Gpadl? {
        guard var entry = entries[handle], entry.words.count * 8 == entry.rangeBufferLength else { return nil }
        do {
            let ranges = try GpaRange.parse(words: entry.words, rangeCount: entry.rangeCount)
            for range in ranges { for pfn in range.pfns where pfn >= UInt64(pageCount) { throw GpadlError.pageOutsideMemory(pfn) } }
            entry.ranges = ranges
            entry.words = []
            entries[handle] = entry
            return entry
        } catch let error as GpadlError {
            entries[handle] = nil
            throw error
        } catch let error as WireError {
            entries[handle] = nil
            throw .malformedRanges(error)
        } catch {
            entries[handle] = nil
            throw .badLength(entry.rangeBufferLength)
        }
    }

    /// The complete GPADL `handle` owned by `relid`.
    public func lookup(_ handle: UInt32, relid: UInt32) throws(GpadlError) -> Gpadl {
        guard let entry = entries[handle] else { throw .unknownHandle(handle) }
        guard entry.relid == relid else { throw .wrongChannel(handle: handle, relid: relid) }
        guard entry.isComplete else { throw .notComplete(handle) }
        return entry
    }

    /// Removes one GPADL.
    @discardableResult
    public mutating func remove(_ handle: UInt32) -> Gpadl? { entries.removeValue(forKey: handle) }

    /// Removes every GPADL owned by `relid`; returns their handles.
    public mutating func removeAll(relid: UInt32) -> [UInt32] {
        let handles = entries.values.filter { $0.relid == relid }.map(\.handle)
        for h in handles { entries[h] = nil }
        return handles
    }

    public mutating func removeAll() { entries.removeAll() }
}
