// Fixtures shared by the targets: a silent logger, guest memory made once, an in-memory disk,
// heap pages for rings, a frame port fed from the input and an interrupt sink.

import Glibc
import GuestMemory
import Hypervisor
import Logging
import SyntheticNetwork
import SyntheticStorage

/// A logger that drops everything (the code under test logs every refusal).
let fuzzLogger = Logger(label: "viridian.fuzz", factory: { (_: String) -> any LogHandler in SwiftLogNoOpLogHandler() })

/// Guest-physical memory in a memfd, created once per process and zeroed before each input.
final class FuzzGuestMemory: @unchecked Sendable {
    let memory: GuestPhysicalMemory

    init(pages: Int) {
        do {
            memory = try GuestPhysicalMemory(size: pages * GuestPhysicalMemory.pageSize, name: "viridian-fuzz")
        } catch {
            fatalError("viridian-fuzz: cannot create guest memory: \(error)")
        }
    }

    var pageCount: Int { memory.pageCount }

    func reset() { memory.base.initializeMemory(as: UInt8.self, repeating: 0, count: memory.size) }

    /// Copies `bytes` to `gpa`, as far as they fit in memory.
    func poke(gpa: UInt64, _ bytes: [UInt8]) {
        guard gpa < UInt64(memory.size), !bytes.isEmpty else { return }
        let n = min(bytes.count, memory.size - Int(gpa))
        bytes.withUnsafeBytes { (memory.base + Int(gpa)).copyMemory(from: $0.baseAddress!, byteCount: n) }
    }
}

/// The guest memory of every target that needs one: 128 pages (512 KiB).
let fuzzMemory = FuzzGuestMemory(pages: 128)

/// Page-aligned heap memory (rings that are not in guest memory).
final class FuzzPages: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let count: Int

    init(bytes: Int) {
        count = bytes
        base = .allocate(byteCount: bytes, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    }

    deinit { base.deallocate() }

    func zero() { base.initializeMemory(as: UInt8.self, repeating: 0, count: count) }
}

/// A disk in memory for SCSIDisk and the ATA controller. Only the bytes written since the last
/// `reset` are cleared again, so a large disk costs little per input. Failures can be injected.
final class FuzzBlockBackend: BlockBackend, @unchecked Sendable {
    let storage: UnsafeMutableRawPointer
    let capacity: Int
    let sizeBytes: UInt64
    let isReadOnly: Bool
    /// Injected failures for the next operations (set per input).
    var failReads = false
    var failWrites = false
    var failFlush = false
    /// Whether `readWithoutBlocking` serves reads (a page cache that holds everything).
    var cached = false
    private var dirtyLow = Int.max
    private var dirtyHigh = 0

    /// `size` bytes (any count, not only whole blocks).
    init(size: Int, readOnly: Bool) {
        let capacity = max(size, 1)
        let storage = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 4096)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
        self.capacity = capacity
        self.storage = storage
        sizeBytes = UInt64(max(size, 0))
        isReadOnly = readOnly
    }

    deinit { storage.deallocate() }

    /// Back to all zeros, no injected failures.
    func reset() {
        if dirtyLow < dirtyHigh { (storage + dirtyLow).initializeMemory(as: UInt8.self, repeating: 0, count: dirtyHigh - dirtyLow) }
        dirtyLow = Int.max
        dirtyHigh = 0
        failReads = false
        failWrites = false
        failFlush = false
        cached = false
    }

    /// The byte offset of a range of `length` bytes at `offset`, if it lies inside the disk.
    private func range(_ offset: UInt64, _ length: Int) -> Int? {
        guard length >= 0, offset <= sizeBytes, UInt64(length) <= sizeBytes - offset else { return nil }
        return Int(offset)
    }

    func read(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws(BlockError) {
        if failReads { throw .system(call: "pread", errno: EIO) }
        let total = segments.reduce(0) { $0 + $1.count }
        guard var at = range(offset, total) else { throw .outOfRange }
        for s in segments where s.count > 0 {
            s.baseAddress!.copyMemory(from: storage + at, byteCount: s.count)
            at += s.count
        }
    }

    func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError) {
        if isReadOnly { throw .system(call: "pwrite", errno: EBADF) }
        if failWrites { throw .system(call: "pwrite", errno: ENOSPC) }
        let total = segments.reduce(0) { $0 + $1.count }
        guard var at = range(offset, total) else { throw .outOfRange }
        dirtyLow = min(dirtyLow, at)
        dirtyHigh = max(dirtyHigh, at + total)
        for s in segments where s.count > 0 {
            (storage + at).copyMemory(from: s.baseAddress!, byteCount: s.count)
            at += s.count
        }
    }

    func flush() throws(BlockError) {
        if failFlush { throw .system(call: "fsync", errno: EIO) }
    }

    func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        if isReadOnly { throw .system(call: "fallocate", errno: EBADF) }
        guard length <= UInt64(Int.max), let at = range(offset, Int(length)) else { throw .outOfRange }
        let n = Int(length)
        guard n > 0 else { return }
        dirtyLow = min(dirtyLow, at)
        dirtyHigh = max(dirtyHigh, at + n)
        (storage + at).initializeMemory(as: UInt8.self, repeating: 0, count: n)
    }

    func readWithoutBlocking(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) -> Bool {
        guard cached else { return false }
        return (try? read(offset: offset, into: segments)) != nil
    }
}

/// A frame port whose inbound frames come from the input; sent frames are read through (so a
/// sanitizer checks every byte the device hands over) and dropped.
final class FuzzFramePort: FramePort {
    let descriptor: Int32 = -1
    /// Frames waiting to be received, each with its 10-byte virtio header first.
    var inbound: [[UInt8]] = []
    var acceptSends = true
    private(set) var sent = 0
    private(set) var offload: UInt32 = 0
    private(set) var carrier = true

    func reset() {
        inbound.removeAll()
        acceptSends = true
        sent = 0
        offload = 0
        carrier = true
    }

    func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool {
        for v in iov {
            guard v.iov_len > 0, let base = v.iov_base else { continue }
            fuzzConsume(UnsafeRawBufferPointer(start: base, count: v.iov_len))
        }
        sent += 1
        return acceptSends
    }

    func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? {
        guard !inbound.isEmpty else { return nil }
        let frame = inbound.removeFirst()
        var at = 0
        for v in iov where at < frame.count {
            guard v.iov_len > 0, let base = v.iov_base else { continue }
            let n = min(v.iov_len, frame.count - at)
            frame.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
            at += n
        }
        return at
    }

    func setOffload(_ flags: UInt32) { offload = flags }
    func setCarrier(_ on: Bool) { carrier = on }
}

/// Counts the SynIC interrupts a partition raises.
final class FuzzInterruptSink: InterruptSink {
    private(set) var raised = 0
    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) { raised += 1 }
}

/// A counter a closure can share (signals, completions).
final class FuzzCounter {
    var value = 0
}

/// A monotonic clock that moves only when the input says so.
final class FuzzClock {
    var ns: UInt64 = 1_000_000_000
    func now() -> UInt64 { ns }
    func advance(_ delta: UInt64) { ns &+= delta }
}
