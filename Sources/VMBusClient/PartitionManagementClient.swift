// The guest's side of the partition-management hypercalls: a parent creating, feeding and deleting its children.

import VMBusWire

/// Why a management hypercall failed: the call and the hypervisor's status.
public struct ManagementError: Error, Equatable, Sendable, CustomStringConvertible {
    public let call: String
    public let status: HvStatus
    public init(call: String, status: HvStatus) {
        self.call = call
        self.status = status
    }
    public var description: String { "\(call): HV_STATUS_\(status)" }
}

/// Issues HvCreatePartition, HvDepositMemory, HvInitializePartition, HvCreateVp,
/// HvFinalizePartition, HvWithdrawMemory, HvDeletePartition and HvGetPartitionId on VP 0,
/// through one input and one output page of the caller's memory. Rep calls are continued from
/// the reps the hypervisor completed, as Linux's rep loop does. Not thread-safe: the caller
/// serialises (the agent holds its bus lock, since VP 0's exits are shared with the bus).
public final class PartitionManagementClient {
    let hypervisor: any GuestHypervisor
    let input: UnsafeMutableRawPointer
    let inputGPA: UInt64
    let output: UnsafeMutableRawPointer
    let outputGPA: UInt64

    /// `input` and `output` are two distinct 4 KiB pages of guest memory and their addresses.
    public init(hypervisor: any GuestHypervisor, input: UnsafeMutableRawPointer, inputGPA: UInt64, output: UnsafeMutableRawPointer,
                outputGPA: UInt64) {
        self.hypervisor = hypervisor
        self.input = input
        self.inputGPA = inputGPA
        self.output = output
        self.outputGPA = outputGPA
    }

    private func call(_ code: HypercallCode, _ bytes: [UInt8], repCount: UInt16 = 0, repStart: UInt16 = 0) -> HypercallResult {
        input.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
        bytes.withUnsafeBytes { b in
            if let base = b.baseAddress { input.copyMemory(from: base, byteCount: min(b.count, 4096)) }
        }
        let control = HypercallControl(code: code.rawValue, repCount: repCount, repStartIndex: repStart)
        return HypercallResult(rawValue: hypervisor.hypercall(vp: 0, control: control.rawValue, input: inputGPA, output: outputGPA))
    }

    private func check(_ name: String, _ result: HypercallResult) throws(ManagementError) {
        guard result.status == .success else { throw ManagementError(call: name, status: result.status) }
    }

    private var outputID: UInt64 { output.loadUnaligned(as: UInt64.self).littleEndian }

    /// This partition's id.
    public func partitionID() throws(ManagementError) -> UInt64 {
        try check("HvGetPartitionId", call(.getPartitionID, []))
        return outputID
    }

    /// A new child; returns its id.
    public func createPartition(_ request: CreatePartitionInput = CreatePartitionInput()) throws(ManagementError) -> UInt64 {
        try check("HvCreatePartition", call(.createPartition, request.encode()))
        return outputID
    }

    /// Deposits `pfns` (this partition's pages) into child `id`, as many calls as the list needs.
    public func deposit(into id: UInt64, pfns: [UInt64]) throws(ManagementError) {
        var at = 0
        while at < pfns.count {
            let chunk = Array(pfns[at..<min(at + DepositMemoryLayout.maximumReps, pfns.count)])
            var block = PartitionIDBlock(partitionID: id).encode()
            for pfn in chunk { block += PartitionIDBlock(partitionID: pfn).encode() }
            var start: UInt16 = 0
            while Int(start) < chunk.count {
                let result = call(.depositMemory, block, repCount: UInt16(chunk.count), repStart: start)
                try check("HvDepositMemory", result)
                guard result.repsCompleted > start else { throw ManagementError(call: "HvDepositMemory", status: .operationFailed) }
                start = result.repsCompleted
            }
            at += chunk.count
        }
    }

    /// Takes up to `count` pages back from child `id` (not running); returns the pages.
    public func withdraw(from id: UInt64, count: Int) throws(ManagementError) -> [UInt64] {
        var back: [UInt64] = []
        while back.count < count {
            let reps = UInt16(min(count - back.count, WithdrawMemoryLayout.maximumReps))
            let result = call(.withdrawMemory, PartitionIDBlock(partitionID: id).encode() + [UInt8](repeating: 0, count: 8), repCount: reps)
            try check("HvWithdrawMemory", result)
            // Never more than asked for: the output page holds `reps` numbers.
            let n = min(Int(result.repsCompleted), Int(reps))
            for i in 0..<n { back.append(output.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian) }
            if n < Int(reps) { break }
        }
        return back
    }

    public func initialize(_ id: UInt64) throws(ManagementError) {
        try check("HvInitializePartition", call(.initializePartition, PartitionIDBlock(partitionID: id).encode()))
    }

    public func createVP(_ id: UInt64, index: UInt32) throws(ManagementError) {
        try check("HvCreateVp", call(.createVp, CreateVPInput(partitionID: id, vpIndex: index).encode()))
    }

    public func finalize(_ id: UInt64) throws(ManagementError) {
        try check("HvFinalizePartition", call(.finalizePartition, PartitionIDBlock(partitionID: id).encode()))
    }

    public func delete(_ id: UInt64) throws(ManagementError) {
        try check("HvDeletePartition", call(.deletePartition, PartitionIDBlock(partitionID: id).encode()))
    }

    /// Issues any management call with raw input bytes (diagnostics and negative tests); returns the result.
    public func raw(_ code: HypercallCode, _ bytes: [UInt8], repCount: UInt16 = 0, repStart: UInt16 = 0) -> HypercallResult {
        call(code, bytes, repCount: repCount, repStart: repStart)
    }
}
