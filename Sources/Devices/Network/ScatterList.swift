// Pieces of memory read as one byte stream: a send-buffer section followed by GPA-direct pages.

import Glibc

/// A reusable list of (pointer, length) pieces that together form one byte stream, with bounded
/// copies out of it and iovec gathering over it. Allocated once; no allocation per packet.
public final class ScatterList {
    public let capacity: Int
    private let bases: UnsafeMutablePointer<UnsafeRawPointer?>
    private let lengths: UnsafeMutablePointer<Int>
    public private(set) var count = 0
    /// Bytes in the whole stream.
    public private(set) var total = 0

    public init(capacity: Int = 72) {
        self.capacity = capacity
        bases = .allocate(capacity: capacity)
        lengths = .allocate(capacity: capacity)
    }

    deinit {
        bases.deallocate()
        lengths.deallocate()
    }

    public func reset() {
        count = 0
        total = 0
    }

    /// Appends a piece; false when the list is full.
    @discardableResult
    public func append(_ base: UnsafeRawPointer, _ length: Int) -> Bool {
        guard length > 0 else { return true }
        guard count < capacity else { return false }
        bases[count] = base
        lengths[count] = length
        count += 1
        total += length
        return true
    }

    /// Copies `length` bytes at stream offset `offset` to `destination`; false if out of range.
    public func copy(at offset: Int, length: Int, into destination: UnsafeMutableRawPointer) -> Bool {
        guard offset >= 0, length >= 0, offset <= total, length <= total - offset else { return false }
        var skip = offset, done = 0, i = 0
        while done < length {
            let n = lengths[i]
            if skip >= n {
                skip -= n
            } else {
                let take = min(n - skip, length - done)
                (destination + done).copyMemory(from: bases[i]! + skip, byteCount: take)
                done += take
                skip = 0
            }
            i += 1
        }
        return true
    }

    /// Fills `iov` from index `first` with the pieces covering [offset, offset + length). Returns the
    /// index after the last iovec written, or nil when the range is outside the stream or `iov` is too short.
    public func gather(at offset: Int, length: Int, into iov: UnsafeMutableBufferPointer<iovec>, first: Int) -> Int? {
        guard offset >= 0, length >= 0, offset <= total, length <= total - offset else { return nil }
        var skip = offset, done = 0, i = 0, out = first
        while done < length {
            let n = lengths[i]
            if skip >= n {
                skip -= n
            } else {
                guard out < iov.count else { return nil }
                let take = min(n - skip, length - done)
                iov[out] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bases[i]! + skip), iov_len: take)
                out += 1
                done += take
                skip = 0
            }
            i += 1
        }
        return out
    }
}
