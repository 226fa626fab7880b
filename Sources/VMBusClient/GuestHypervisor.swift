// How guest code reaches its hypervisor: hypercalls and synthetic MSRs, per virtual processor.

/// The guest's view of the hypervisor: what VMCALL and WRMSR/RDMSR do on a real guest. Behind it
/// is an in-process partition (tests), PartitionLink (agent processes) or a kernel shim.
public protocol GuestHypervisor: AnyObject {
    /// Issues a hypercall on `vp`; returns the 64-bit result value.
    func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64
    /// Writes a synthetic MSR on `vp`; false if the hypervisor refused it (#GP).
    func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool
    /// Reads a synthetic MSR on `vp`; nil if the hypervisor refused it.
    func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64?
}
