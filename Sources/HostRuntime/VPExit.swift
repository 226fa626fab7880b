// One VM exit read from a VP's register block and served: hypercall, MSR access or port I/O.

import EmulatedDevices
import Hypervisor
import PartitionLink
import VMBusWire

/// The work a hypervisor does on a VM exit, over the 64-byte register block of `VPBlock`: reads
/// the exit once, runs it against the partition (or its port bus) and writes the result back.
/// It does not mark the block completed or wake the VP: the carrier does that.
public enum VPExit {
    /// What was served: the caller counts port exits and runs its after-write work.
    public enum Served: Sendable { case hypercall, msr, portIn, portOut, unknown }

    @discardableResult
    public static func serve(_ block: UnsafeMutableRawPointer, vp: Int, partition: Partition, ports: PortIOBus?) -> Served {
        let kind = block.load(fromByteOffset: VPBlock.kind, as: UInt32.self)
        switch VPBlock.Kind(rawValue: kind) {
        case .hypercall:
            let result = partition.hypercall(
                vp: UInt32(truncatingIfNeeded: vp), control: block.load(fromByteOffset: VPBlock.control, as: UInt64.self),
                input: block.load(fromByteOffset: VPBlock.input, as: UInt64.self),
                output: block.load(fromByteOffset: VPBlock.output, as: UInt64.self))
            block.storeBytes(of: result.rawValue, toByteOffset: VPBlock.result, as: UInt64.self)
            return .hypercall
        case .writeMSR:
            let msr = block.load(fromByteOffset: VPBlock.msr, as: UInt32.self)
            let value = block.load(fromByteOffset: VPBlock.value, as: UInt64.self)
            let ok = (try? partition.writeMSR(vp: UInt32(truncatingIfNeeded: vp), msr, value)) != nil
            block.storeBytes(of: ok ? VPBlock.msrOK : VPBlock.msrRefused, toByteOffset: VPBlock.result, as: UInt64.self)
            return .msr
        case .readMSR:
            let msr = block.load(fromByteOffset: VPBlock.msr, as: UInt32.self)
            if let value = try? partition.readMSR(vp: UInt32(truncatingIfNeeded: vp), msr) {
                block.storeBytes(of: value, toByteOffset: VPBlock.value, as: UInt64.self)
                block.storeBytes(of: VPBlock.msrOK, toByteOffset: VPBlock.result, as: UInt64.self)
            } else {
                block.storeBytes(of: VPBlock.msrRefused, toByteOffset: VPBlock.result, as: UInt64.self)
            }
            return .msr
        case .portIn:
            let port = UInt16(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.msr, as: UInt32.self))
            let size = Int(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.control, as: UInt64.self))
            let value = ports?.read(port: port, size: size) ?? UInt32.max
            block.storeBytes(of: UInt64(value), toByteOffset: VPBlock.result, as: UInt64.self)
            return .portIn
        case .portOut:
            let port = UInt16(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.msr, as: UInt32.self))
            let size = Int(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.control, as: UInt64.self))
            ports?.write(port: port, size: size, value: UInt32(truncatingIfNeeded: block.load(fromByteOffset: VPBlock.value, as: UInt64.self)))
            block.storeBytes(of: UInt64(0), toByteOffset: VPBlock.result, as: UInt64.self)
            return .portOut
        case nil:
            block.storeBytes(of: HypercallResult(status: .invalidHypercallInput).rawValue, toByteOffset: VPBlock.result, as: UInt64.self)
            return .unknown
        }
    }
}
