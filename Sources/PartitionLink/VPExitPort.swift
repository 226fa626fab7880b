// The guest's half of a VM exit: fill the VP's register block, ring its doorbell, wait for the completion.

import Atomics
import VMBusWire

/// Trapped instructions of every VP through their 64-byte register blocks (see `VPBlock`), the
/// same for every carrier; only how a doorbell is rung differs (an eventfd write, a KernelGlue
/// ioctl). Completions arrive on one eventfd per VP. One exit per VP at a time (a lock per VP).
public final class VPExitPort: @unchecked Sendable {
    let blocks: UnsafeMutableRawPointer
    let vpCount: Int
    let ringDoorbell: @Sendable (Int) -> Void
    let completions: [EventFD]
    let locks: [Lock]
    let closed: ManagedAtomic<Bool>
    /// The last exit number per VP (each guarded by that VP's lock).
    let sequences: UnsafeMutablePointer<UInt64>
    public let roundTrips = ManagedAtomic<UInt64>(0)

    /// `blocks` holds `vpCount` blocks of `VPBlock.size` bytes; `closed` turns every exit into a failure.
    public init(blocks: UnsafeMutableRawPointer, vpCount: Int, completions: [EventFD], closed: ManagedAtomic<Bool>,
                ringDoorbell: @escaping @Sendable (Int) -> Void) {
        self.blocks = blocks
        self.vpCount = vpCount
        self.completions = completions
        self.closed = closed
        self.ringDoorbell = ringDoorbell
        locks = (0..<vpCount).map { _ in Lock() }
        sequences = .allocate(capacity: max(vpCount, 1))
        sequences.initialize(repeating: 0, count: max(vpCount, 1))
    }

    deinit { sequences.deallocate() }

    /// Wakes every VP waiting for a completion (the carrier closed).
    public func wakeAll() { for c in completions { c.ring() } }

    /// One trapped call on `vp`: fill the block, ring, wait, read the result. nil if the carrier is gone.
    @inline(__always)
    public func roundTrip(vp: UInt32, kind: VPBlock.Kind, fill: (UnsafeMutableRawPointer) -> Void) -> UInt64? {
        exit(vp: vp, kind: kind, fill: fill) { $0.load(fromByteOffset: VPBlock.result, as: UInt64.self) }
    }

    /// The same, reading what `read` takes from the block after the completion.
    @inline(__always)
    public func exit<T>(vp: UInt32, kind: VPBlock.Kind, fill: (UnsafeMutableRawPointer) -> Void,
                        read: (UnsafeMutableRawPointer) -> T?) -> T? {
        guard Int(vp) < vpCount, !closed.load(ordering: .acquiring) else { return nil }
        return locks[Int(vp)].withLock {
            // VP n's block is the n-th 64 bytes of the block area (n < vpCount, checked above).
            let block = blocks + Int(vp) * VPBlock.size
            let sequence = sequences[Int(vp)] &+ 1
            sequences[Int(vp)] = sequence
            block.storeBytes(of: kind.rawValue, toByteOffset: VPBlock.kind, as: UInt32.self)
            block.storeBytes(of: sequence, toByteOffset: VPBlock.sequence, as: UInt64.self)
            fill(block)
            roundTrips.wrappingIncrement(ordering: .relaxed)
            ringDoorbell(Int(vp))
            // A completion that is not this exit's (a count left over, or rung by a confused host)
            // is waited past: only the host's copy of the sequence number answers this exit.
            repeat {
                completions[Int(vp)].wait()
                guard !closed.load(ordering: .acquiring) else { return nil }
            } while UnsafeAtomic<UInt64>(at: (block + VPBlock.completed).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
                .load(ordering: .acquiring) != sequence
            return read(block)
        }
    }

    public func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        roundTrip(vp: vp, kind: .hypercall) { block in
            block.storeBytes(of: control, toByteOffset: VPBlock.control, as: UInt64.self)
            block.storeBytes(of: input, toByteOffset: VPBlock.input, as: UInt64.self)
            block.storeBytes(of: output, toByteOffset: VPBlock.output, as: UInt64.self)
        } ?? HypercallResult(status: .operationFailed).rawValue
    }

    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool {
        roundTrip(vp: vp, kind: .writeMSR) { block in
            block.storeBytes(of: msr, toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: value, toByteOffset: VPBlock.value, as: UInt64.self)
        } == VPBlock.msrOK
    }

    public func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? {
        exit(vp: vp, kind: .readMSR, fill: { $0.storeBytes(of: msr, toByteOffset: VPBlock.msr, as: UInt32.self) }) { block in
            block.load(fromByteOffset: VPBlock.result, as: UInt64.self) == VPBlock.msrOK
                ? block.load(fromByteOffset: VPBlock.value, as: UInt64.self) : nil
        }
    }

    public func portIn(vp: UInt32, port: UInt16, size: Int) -> UInt32? {
        roundTrip(vp: vp, kind: .portIn) { block in
            block.storeBytes(of: UInt32(port), toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: UInt64(size), toByteOffset: VPBlock.control, as: UInt64.self)
        }.map { UInt32(truncatingIfNeeded: $0) }
    }

    public func portOut(vp: UInt32, port: UInt16, size: Int, value: UInt32) -> Bool {
        roundTrip(vp: vp, kind: .portOut) { block in
            block.storeBytes(of: UInt32(port), toByteOffset: VPBlock.msr, as: UInt32.self)
            block.storeBytes(of: UInt64(size), toByteOffset: VPBlock.control, as: UInt64.self)
            block.storeBytes(of: UInt64(value), toByteOffset: VPBlock.value, as: UInt64.self)
        } != nil
    }
}
