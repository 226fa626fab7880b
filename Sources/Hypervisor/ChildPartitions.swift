// The partitions one partition created with the management hypercalls: their state, memory and VPs, and the checks on every call.

import VMBusWire

/// The children of one partition (its "owner"), as the hypervisor keeps them: what
/// HvCreatePartition, HvDepositMemory, HvInitializePartition, HvCreateVp, HvFinalizePartition,
/// HvWithdrawMemory and HvDeletePartition did. A partition names only its own children; any
/// other id is refused with HV_STATUS_ACCESS_DENIED, whether or not it exists, so a partition
/// cannot probe for its siblings or its parent. A child's memory is pages of the owner's own
/// memory that the owner deposited: they leave the owner (`onPagesGiven`) and come back when
/// the owner withdraws them or deletes the child (`onPagesReturned`).
///
/// Each hop keeps its own: the root's hypervisor keeps the children of each partition it
/// serves, a parent-mode agent keeps the children of each partition it hosts.
public final class ChildPartitions {
    /// HvInitializePartition makes a child runnable; HvFinalizePartition stops it before deletion.
    public enum State: String, Sendable, Codable { case created, initialized, finalized }

    /// One child.
    public struct Child: Sendable, Equatable {
        public let id: UInt64
        public internal(set) var state: State
        /// The owner's page numbers deposited into the child, in deposit order: its memory.
        public internal(set) var pages: [UInt64]
        public internal(set) var vps: Set<UInt32>
        public var memoryBytes: UInt64 { UInt64(pages.count) << 12 }
    }

    /// The owner's partition id; children get `ownerID << 8 | n`, n = 1 … 255.
    public let ownerID: UInt64
    /// The owner's memory, in pages, and its VP count: what it can give.
    public let ownerPages: UInt64
    public let ownerVPs: Int
    public private(set) var children: [UInt64: Child] = [:]
    /// The owner's pages now deposited into some child.
    private var given: Set<UInt64> = []
    /// Calls refused, by status, for status output.
    public private(set) var refusals: [HvStatus: UInt64] = [:]

    /// Pages that left the owner for a child.
    public var onPagesGiven: (([UInt64]) -> Void)?
    /// Pages that came back to the owner.
    public var onPagesReturned: (([UInt64]) -> Void)?
    /// A child was finalized or deleted: whoever runs it must stop it.
    public var onChildStopped: ((UInt64) -> Void)?

    public static let maximumChildren = 255
    /// Ids are 8 bits per level and fit 32 bits (the carriers' partition id): owners whose ids use
    /// more than 24 bits cannot have children.
    public static let deepestOwner: UInt64 = 1 << 24

    public init(ownerID: UInt64, ownerPages: UInt64, ownerVPs: Int) {
        self.ownerID = ownerID
        self.ownerPages = ownerPages
        self.ownerVPs = ownerVPs
    }

    /// The owner's pages now deposited into children.
    public var pagesGiven: Int { given.count }

    /// A partition id as status output shows it (hex: each byte is a level of the tree).
    public static func format(_ id: UInt64) -> String { "0x" + String(id, radix: 16) }

    @discardableResult
    private func refuse(_ status: HvStatus) -> HvStatus {
        refusals[status, default: 0] &+= 1
        return status
    }

    /// The child `id` names, or why the owner may not touch it.
    private func owned(_ id: UInt64) -> Result<Child, HvStatus> {
        if let child = children[id] { return .success(child) }
        // One of ours by its number, but gone or never made: say so; anything else is not ours.
        if id != hvPartitionIDSelf, id != ownerID, id >> 8 == ownerID, id & 0xFF != 0 { return .failure(refuse(.invalidPartitionID)) }
        return .failure(refuse(.accessDenied))
    }

    // MARK: The calls

    /// HvCreatePartition: a new child with no memory and no VPs.
    public func create(_ input: CreatePartitionInput) -> Result<UInt64, HvStatus> {
        guard input.isolationType == 0 else { return .failure(refuse(.invalidParameter)) }
        guard ownerID < Self.deepestOwner else { return .failure(refuse(.noResources)) }
        guard let n = (1...UInt64(Self.maximumChildren)).first(where: { children[ownerID << 8 | $0] == nil }) else {
            return .failure(refuse(.noResources))
        }
        let id = ownerID << 8 | n
        children[id] = Child(id: id, state: .created, pages: [], vps: [])
        return .success(id)
    }

    /// HvDepositMemory: the owner's pages `pfns` become the child's, in order, until one cannot
    /// (outside the owner's memory or already given: HV_STATUS_INSUFFICIENT_MEMORY). Returns the
    /// status and how many were deposited. Memory is fixed once the child is initialized.
    public func deposit(into id: UInt64, pfns: [UInt64]) -> (HvStatus, Int) {
        let child: Child
        switch owned(id) {
        case .failure(let status): return (status, 0)
        case .success(let c): child = c
        }
        guard child.state == .created else { return (refuse(.invalidPartitionState), 0) }
        var taken: [UInt64] = []
        var status = HvStatus.success
        for pfn in pfns {
            guard pfn < ownerPages, !given.contains(pfn) else {
                status = refuse(.insufficientMemory)
                break
            }
            given.insert(pfn)
            taken.append(pfn)
        }
        children[id]?.pages.append(contentsOf: taken)
        if !taken.isEmpty { onPagesGiven?(taken) }
        return (status, taken.count)
    }

    /// HvWithdrawMemory: up to `count` of the child's pages back to the owner, while it does not
    /// run (before initialization, or finalized).
    public func withdraw(from id: UInt64, count: Int) -> Result<[UInt64], HvStatus> {
        let child: Child
        switch owned(id) {
        case .failure(let status): return .failure(status)
        case .success(let c): child = c
        }
        guard child.state != .initialized else { return .failure(refuse(.invalidPartitionState)) }
        let back = Array(child.pages.suffix(max(0, count)))
        children[id]?.pages.removeLast(back.count)
        for pfn in back { given.remove(pfn) }
        if !back.isEmpty { onPagesReturned?(back) }
        return .success(back)
    }

    /// HvInitializePartition: the child, with the memory it has, may now get VPs and run.
    public func initialize(_ id: UInt64) -> HvStatus {
        switch owned(id) {
        case .failure(let status): return status
        case .success(let child):
            guard child.state == .created else { return refuse(.invalidPartitionState) }
            guard !child.pages.isEmpty else { return refuse(.insufficientMemory) }
            children[id]?.state = .initialized
            return .success
        }
    }

    /// HvCreateVp: VP `index` of an initialized child. A child has at most as many VPs as its
    /// owner: an index the owner does not have is HV_STATUS_INVALID_VP_INDEX.
    public func createVP(_ input: CreateVPInput) -> HvStatus {
        switch owned(input.partitionID) {
        case .failure(let status): return status
        case .success(let child):
            guard child.state == .initialized else { return refuse(.invalidPartitionState) }
            guard input.vpIndex < UInt32(ownerVPs) else { return refuse(.invalidVPIndex) }
            guard !child.vps.contains(input.vpIndex) else { return refuse(.invalidVPState) }
            children[input.partitionID]?.vps.insert(input.vpIndex)
            return .success
        }
    }

    /// HvDeleteVp.
    public func deleteVP(_ input: DeleteVPInput) -> HvStatus {
        switch owned(input.partitionID) {
        case .failure(let status): return status
        case .success(let child):
            guard child.vps.contains(input.vpIndex) else { return refuse(.invalidVPIndex) }
            children[input.partitionID]?.vps.remove(input.vpIndex)
            return .success
        }
    }

    /// HvFinalizePartition: the child stops for good; its memory may be withdrawn, then it is deleted.
    public func finalize(_ id: UInt64) -> HvStatus {
        switch owned(id) {
        case .failure(let status): return status
        case .success(let child):
            guard child.state != .finalized else { return refuse(.invalidPartitionState) }
            children[id]?.state = .finalized
            onChildStopped?(id)
            return .success
        }
    }

    /// HvDeletePartition: the child goes, with its VPs; its memory returns to the owner.
    public func delete(_ id: UInt64) -> HvStatus {
        switch owned(id) {
        case .failure(let status): return status
        case .success(let child):
            remove(child)
            return .success
        }
    }

    /// Every child goes (the owner was deleted, killed or left): what a partition's teardown does to its subtree.
    public func removeAll() {
        for child in children.values.sorted(by: { $0.id < $1.id }) { remove(child) }
    }

    private func remove(_ child: Child) {
        children[child.id] = nil
        for pfn in child.pages { given.remove(pfn) }
        if child.state != .finalized { onChildStopped?(child.id) }
        if !child.pages.isEmpty { onPagesReturned?(child.pages) }
    }

    /// HvPostMessageDirect / HvSignalEventDirect: only into the owner's own children, and the
    /// SynIC of a child is kept by the parent that hosts it (the owner itself), not here: refused
    /// with HV_STATUS_ACCESS_DENIED for anyone else's partition and HV_STATUS_INVALID_PARTITION_STATE
    /// for the owner's own.
    public func direct(to id: UInt64) -> HvStatus {
        switch owned(id) {
        case .failure(let status): return status
        case .success: return refuse(.invalidPartitionState)
        }
    }
}
