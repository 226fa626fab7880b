// A child partition's disk that is this partition's own disk: served through this partition's storage VSC.

import Foundation
import NBD
import Synchronization
import SyntheticStorage

/// The backing store of a relayed LUN: every read, write, flush and discard of the child's
/// StorageVSP becomes a SCSI command on this partition's own LUN (its storvsc), and so goes to
/// this partition's parent, hop by hop down to the root's image file. Thread-safe: each call
/// takes one of its devices (each has a buffer of its own), so as many commands are in flight
/// as it has devices and the VSP has I/O threads. Counts what it relayed.
final class RelayBlockBackend: BlockBackend, @unchecked Sendable {
    let devices: [any NBDBlockDevice]
    let label: String
    private let free: Mutex<[Int]>
    private let available: DispatchSemaphore
    let requests = Atomic<UInt64>(0)
    let bytesRead = Atomic<UInt64>(0)
    let bytesWritten = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)

    /// `devices`: at least one, all on the same LUN.
    init(devices: [any NBDBlockDevice], label: String) {
        precondition(!devices.isEmpty)
        self.devices = devices
        self.label = label
        free = Mutex(Array(devices.indices))
        available = DispatchSemaphore(value: devices.count)
    }

    var device: any NBDBlockDevice { devices[0] }
    var sizeBytes: UInt64 { device.size }
    var isReadOnly: Bool { device.isReadOnly }

    /// Runs `body` with a device no other call is using.
    private func withDevice<T>(_ body: (any NBDBlockDevice) -> T) -> T {
        available.wait()
        let index = free.withLock { $0.removeLast() }
        defer {
            free.withLock { $0.append(index) }
            available.signal()
        }
        return body(devices[index])
    }

    private func fail(_ call: String, _ code: UInt32) -> BlockError {
        errors.wrappingAdd(1, ordering: .relaxed)
        return .system(call: "\(call) through \(label)", errno: Int32(bitPattern: code))
    }

    private func span(_ offset: UInt64, _ count: Int) throws(BlockError) {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        guard !overflow, end <= device.size else { throw .outOfRange }
    }

    func read(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        try span(offset, segments.reduce(0) { $0 + $1.count })
        let (e, done) = withDevice { device -> (UInt32, UInt64) in
            var at = offset
            for segment in segments where segment.count > 0 {
                let e = device.read(offset: at, into: segment)
                guard e == NBD.Error.ok else { return (e, at - offset) }
                at += UInt64(segment.count)
            }
            return (NBD.Error.ok, at - offset)
        }
        guard e == NBD.Error.ok else { throw fail("read", e) }
        bytesRead.wrappingAdd(done, ordering: .relaxed)
    }

    func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        try span(offset, segments.reduce(0) { $0 + $1.count })
        let (e, done) = withDevice { device -> (UInt32, UInt64) in
            var at = offset
            for segment in segments where segment.count > 0 {
                let e = device.write(offset: at, from: segment, fua: false)
                guard e == NBD.Error.ok else { return (e, at - offset) }
                at += UInt64(segment.count)
            }
            return (NBD.Error.ok, at - offset)
        }
        guard e == NBD.Error.ok else { throw fail("write", e) }
        bytesWritten.wrappingAdd(done, ordering: .relaxed)
    }

    func flush() throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        let e = withDevice { $0.flush() }
        guard e == NBD.Error.ok else { throw fail("flush", e) }
    }

    func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        guard length <= Int.max else { throw .outOfRange }
        try span(offset, Int(length))
        let e = withDevice { $0.trim(offset: offset, length: length) }
        guard e == NBD.Error.ok else { throw fail("discard", e) }
    }
}
