// One partition-management hypercall read from guest memory, checked, run against the caller's children, answered.

import GuestMemory
import VMBusWire

/// Decodes and runs the management hypercalls for a calling partition: the input block (8-byte
/// aligned, within one 4 KiB page, inside the caller's memory), the rep list of rep calls
/// (HvDepositMemory, HvWithdrawMemory: from the rep start index, reps-completed in the result,
/// as Linux's rep loop expects), and the output block. Anything malformed is a status, never a trap.
enum PartitionManagementCall {
    static func run(_ code: HypercallCode, control: HypercallControl, input: UInt64, output: UInt64, memory: GuestPhysicalMemory,
                    selfID: UInt64, children: ChildPartitions) -> HypercallResult {
        let isRep = code == .depositMemory || code == .withdrawMemory
        guard isRep ? control.repCount > 0 && control.repStartIndex < control.repCount : control.repCount == 0 && control.repStartIndex == 0
        else { return HypercallResult(status: .invalidHypercallInput) }

        /// `count` bytes at `gpa`, or the status that refuses them.
        func block(_ gpa: UInt64, _ count: Int) -> Result<UnsafeMutableRawBufferPointer, HvStatus> {
            guard gpa & 7 == 0 else { return .failure(.invalidAlignment) }
            guard (gpa & 0xFFF) + UInt64(count) <= 4096 else { return .failure(.invalidHypercallInput) }
            guard let b = try? memory.buffer(gpa: gpa, count: count) else { return .failure(.invalidParameter) }
            return .success(b)
        }
        func read<T>(_ size: Int, _ decode: (UnsafeRawBufferPointer) throws(WireError) -> T) -> Result<T, HvStatus> {
            switch block(input, size) {
            case .failure(let s): return .failure(s)
            case .success(let b):
                do { return .success(try decode(UnsafeRawBufferPointer(b))) } catch { return .failure(.invalidParameter) }
            }
        }
        func answer(_ id: UInt64) -> HvStatus {
            switch block(output, PartitionIDBlock.size) {
            case .failure(let s): return s
            case .success(let b):
                b.putLE(id, at: 0)
                return .success
            }
        }
        func target(_ id: UInt64) -> UInt64 { id == hvPartitionIDSelf ? selfID : id }
        func status(_ s: HvStatus) -> HypercallResult { HypercallResult(status: s) }

        switch code {
        case .getPartitionID:
            return status(answer(selfID))
        case .createPartition:
            switch read(CreatePartitionInput.size, CreatePartitionInput.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(let request):
                // The output page is checked first: a child is never made that its creator cannot be told of.
                if case .failure(let s) = block(output, PartitionIDBlock.size) { return status(s) }
                switch children.create(request) {
                case .failure(let s): return status(s)
                case .success(let id): return status(answer(id))
                }
            }
        case .initializePartition, .finalizePartition, .deletePartition:
            switch read(PartitionIDBlock.size, PartitionIDBlock.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(let request):
                let id = target(request.partitionID)
                switch code {
                case .initializePartition: return status(children.initialize(id))
                case .finalizePartition: return status(children.finalize(id))
                default: return status(children.delete(id))
                }
            }
        case .createVp:
            switch read(CreateVPInput.size, CreateVPInput.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(var request):
                request.partitionID = target(request.partitionID)
                return status(children.createVP(request))
            }
        case .deleteVp:
            switch read(DeleteVPInput.size, DeleteVPInput.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(var request):
                request.partitionID = target(request.partitionID)
                return status(children.deleteVP(request))
            }
        case .depositMemory:
            let reps = Int(control.repCount), start = Int(control.repStartIndex)
            switch block(input, DepositMemoryLayout.headerSize + reps * DepositMemoryLayout.elementSize) {
            case .failure(let s): return status(s)
            case .success(let b):
                let raw = UnsafeRawBufferPointer(b)
                let id = target(raw.le(UInt64.self, at: 0))
                let pfns = (start..<reps).map { raw.le(UInt64.self, at: DepositMemoryLayout.headerSize + $0 * DepositMemoryLayout.elementSize) }
                let (s, done) = children.deposit(into: id, pfns: pfns)
                return HypercallResult(status: s, repsCompleted: UInt16(start + done))
            }
        case .withdrawMemory:
            let reps = Int(control.repCount), start = Int(control.repStartIndex)
            // The id, then proximity information that is not used.
            let request: PartitionIDBlock
            switch read(WithdrawMemoryLayout.inputSize, PartitionIDBlock.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(let r): request = r
            }
            switch block(output, reps * WithdrawMemoryLayout.elementSize) {
            case .failure(let s): return status(s)
            case .success(let out):
                switch children.withdraw(from: target(request.partitionID), count: reps - start) {
                case .failure(let s): return status(s)
                case .success(let pfns):
                    for (i, pfn) in pfns.enumerated() { out.putLE(pfn, at: (start + i) * WithdrawMemoryLayout.elementSize) }
                    return HypercallResult(status: .success, repsCompleted: UInt16(start + pfns.count))
                }
            }
        case .postMessageDirect:
            switch read(PostMessageDirectInput.size, PostMessageDirectInput.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(let request): return status(children.direct(to: request.partitionID))
            }
        case .signalEventDirect:
            switch read(SignalEventDirectInput.size, SignalEventDirectInput.init(decoding:)) {
            case .failure(let s): return status(s)
            case .success(let request): return status(children.direct(to: request.partitionID))
            }
        case .postMessage, .signalEvent, .getVpRegisters, .setVpRegisters:
            return status(.invalidHypercallCode)
        }
    }
}

extension HypercallCode {
    /// The calls a parent issues for its children (served by `PartitionManagementCall`).
    public var isPartitionManagement: Bool {
        switch self {
        case .createPartition, .initializePartition, .finalizePartition, .deletePartition, .getPartitionID, .depositMemory,
             .withdrawMemory, .createVp, .deleteVp, .postMessageDirect, .signalEventDirect: true
        case .postMessage, .signalEvent, .getVpRegisters, .setVpRegisters: false
        }
    }
}
