// A child partition's disk that is this partition's own disk: served through this partition's storage VSC.

import NBD
import Synchronization
import SyntheticStorage

/// The backing store of a relayed LUN: every read, write, flush and discard of the child's
/// StorageVSP becomes a SCSI command on this partition's own LUN (its storvsc), and so goes to
/// this partition's parent, hop by hop down to the root's image file. Thread-safe (the device
/// serialises its commands); counts what it relayed.
final class RelayBlockBackend: BlockBackend, @unchecked Sendable {
    let device: any NBDBlockDevice
    let label: String
    let requests = Atomic<UInt64>(0)
    let bytesRead = Atomic<UInt64>(0)
    let bytesWritten = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)

    init(device: any NBDBlockDevice, label: String) {
        self.device = device
        self.label = label
    }

    var sizeBytes: UInt64 { device.size }
    var isReadOnly: Bool { device.isReadOnly }

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
        var at = offset
        for segment in segments where segment.count > 0 {
            let e = device.read(offset: at, into: segment)
            guard e == NBD.Error.ok else { throw fail("read", e) }
            at += UInt64(segment.count)
        }
        bytesRead.wrappingAdd(at - offset, ordering: .relaxed)
    }

    func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        try span(offset, segments.reduce(0) { $0 + $1.count })
        var at = offset
        for segment in segments where segment.count > 0 {
            let e = device.write(offset: at, from: segment, fua: false)
            guard e == NBD.Error.ok else { throw fail("write", e) }
            at += UInt64(segment.count)
        }
        bytesWritten.wrappingAdd(at - offset, ordering: .relaxed)
    }

    func flush() throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        let e = device.flush()
        guard e == NBD.Error.ok else { throw fail("flush", e) }
    }

    func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        requests.wrappingAdd(1, ordering: .relaxed)
        guard length <= Int.max else { throw .outOfRange }
        try span(offset, Int(length))
        let e = device.trim(offset: offset, length: length)
        guard e == NBD.Error.ok else { throw fail("discard", e) }
    }
}
