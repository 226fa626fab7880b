// The per-VP register block in shared memory through which a trapping instruction reaches the host.

/// Layout of one VP's 64-byte block in the VP-block memory (VP n at n × 64): what a VM exit
/// carries in registers. The guest fills it, rings the doorbell and waits on the completion.
public enum VPBlock {
    public static let size = 64
    public static let memorySize = 4096
    public static let maximumVPs = memorySize / size

    public static let kind = 0
    public static let msr = 4
    public static let control = 8
    public static let input = 16
    public static let output = 24
    public static let value = 32
    public static let result = 40
    /// The guest's number for this exit (it counts up per VP); the host copies it to `completed`
    /// before it completes, so a completion that is not this exit's (stale, spurious, hostile) is
    /// recognised and waited past instead of being taken for the answer.
    public static let sequence = 48
    public static let completed = 56

    /// The host side of the sequence rule: marks the exit in `block` as answered.
    @inline(__always)
    public static func markCompleted(_ block: UnsafeMutableRawPointer) {
        block.storeBytes(of: block.load(fromByteOffset: sequence, as: UInt64.self), toByteOffset: completed, as: UInt64.self)
    }

    /// What trapped.
    public enum Kind: UInt32, Sendable {
        case hypercall = 1
        case writeMSR = 2
        case readMSR = 3
        /// IN from an I/O port: port in `msr`, size (1, 2, 4) in `control`; the value comes back in `result`.
        case portIn = 4
        /// OUT to an I/O port: port in `msr`, size in `control`, value in `value`.
        case portOut = 5
    }

    /// MSR access outcome in `result`.
    public static let msrOK: UInt64 = 0
    public static let msrRefused: UInt64 = 1
}
