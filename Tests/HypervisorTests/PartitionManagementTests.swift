// The partition-management hypercalls: a parent creates, feeds and deletes children; everything else is refused with Hyper-V's status.

import GuestMemory
import Hypervisor
import Testing
import VMBusClient
import VMBusWire

/// A partition as its guest reaches it: hypercalls with their blocks in its own memory.
final class PartitionCaller: GuestHypervisor {
    let partition: Partition
    init(_ partition: Partition) { self.partition = partition }
    func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        partition.hypercall(vp: vp, control: control, input: input, output: output).rawValue
    }
    func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { (try? partition.writeMSR(vp: vp, msr, value)) != nil }
    func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { try? partition.readMSR(vp: vp, msr) }
}

/// Two sibling partitions (ids 1 and 2, 1 MiB unless said and 2 VPs each) under one hypervisor, each with its children.
struct TreeRig {
    let memories: [GuestPhysicalMemory]
    let partitions: [Partition]
    let clients: [PartitionManagementClient]
    let recorder = InterruptRecorder()
    /// Pages each partition gave away, as the hypervisor reported them.
    let given = Box<[UInt32: [UInt64]]>([:])

    final class Box<T> {
        var value: T
        init(_ value: T) { self.value = value }
    }

    init(memoryBytes: Int = 1 << 20) throws {
        var memories: [GuestPhysicalMemory] = []
        var partitions: [Partition] = []
        var clients: [PartitionManagementClient] = []
        for id in [UInt32(1), 2] {
            let memory = try GuestPhysicalMemory(size: memoryBytes)
            let partition = Partition(id: id, name: "p\(id)", memory: memory, vpCount: 2, interrupts: recorder)
            let children = ChildPartitions(ownerID: UInt64(id), ownerPages: UInt64(memory.pageCount), ownerVPs: 2)
            let given = self.given
            children.onPagesGiven = { pfns in
                given.value[id, default: []] += pfns
                memory.discard(pfns: pfns)
            }
            children.onPagesReturned = { pfns in given.value[id] = given.value[id, default: []].filter { !pfns.contains($0) } }
            partition.children = children
            // Pages 1 and 2 are the client's input and output pages.
            clients.append(PartitionManagementClient(hypervisor: PartitionCaller(partition), input: try memory.pointer(gpa: 0x1000, count: 4096),
                                                     inputGPA: 0x1000, output: try memory.pointer(gpa: 0x2000, count: 4096), outputGPA: 0x2000))
            memories.append(memory)
            partitions.append(partition)
        }
        self.memories = memories
        self.partitions = partitions
        self.clients = clients
    }

    /// A child of partition `index` with pages 16… of its memory and VP 0.
    func child(of index: Int, pages: Int = 16) throws -> UInt64 {
        let m = clients[index]
        let id = try m.createPartition()
        try m.deposit(into: id, pfns: (0..<UInt64(pages)).map { 16 + $0 })
        try m.initialize(id)
        try m.createVP(id, index: 0)
        return id
    }
}

/// The status a management call failed with, or success.
func status(_ body: () throws -> Void) -> HvStatus {
    do {
        try body()
        return .success
    } catch let error as ManagementError {
        return error.status
    } catch {
        return .operationFailed
    }
}

@Suite("Partition management hypercalls")
struct PartitionManagementTests {
    @Test("Create, deposit, initialize, create VPs, finalize, withdraw, delete: the memory leaves the parent and comes back")
    func lifecycle() throws {
        let rig = try TreeRig(memoryBytes: 4 << 20)
        let m = rig.clients[0]
        #expect(try m.partitionID() == 1)
        // The parent's page 20 holds data; once deposited it is the child's and the parent's view of it is gone.
        try rig.memories[0].buffer(gpa: 20 << 12, count: 4).copyBytes(from: [1, 2, 3, 4])
        let id = try m.createPartition()
        #expect(id == 0x101)
        #expect(try m.createPartition() == 0x102)
        // More pages than one input page holds (511 per call): the client continues the rep loop.
        let pfns = (16..<UInt64(16 + 600)).map { $0 }
        try m.deposit(into: id, pfns: pfns)
        #expect(rig.given.value[1, default: []].count == 600)
        #expect(Array(try rig.memories[0].buffer(gpa: 20 << 12, count: 4)) == [0, 0, 0, 0])
        try m.initialize(id)
        try m.createVP(id, index: 0)
        try m.createVP(id, index: 1)
        let children = try #require(rig.partitions[0].children)
        // (Unwrapped first: an optional scalar in #expect trips a false stack-buffer-overflow report under ASan.)
        let made = try #require(children.children[id])
        #expect(made.state == .initialized && made.vps == [0, 1])
        #expect(made.memoryBytes == 600 * 4096)
        // Running: its memory stays; finalized: it comes back.
        #expect(status { _ = try m.withdraw(from: id, count: 10) } == .invalidPartitionState)
        try m.finalize(id)
        let back = try m.withdraw(from: id, count: 100)
        #expect(back.count == 100 && Set(back).isSubset(of: Set(pfns)))
        try m.delete(id)
        #expect(children.children[id] == nil && children.pagesGiven == 0 && rig.given.value[1, default: [0]].isEmpty)
        // The freed number is reused; 0x102 still exists.
        #expect(try m.createPartition() == 0x101)
        #expect(children.children.count == 2)
    }

    @Test("A partition touches only its own children: a sibling's child, its sibling, its parent and itself are ACCESS_DENIED")
    func onlyOwnChildren() throws {
        let rig = try TreeRig()
        let sibling = try rig.child(of: 1)  // 0x201, partition 2's
        let own = try rig.child(of: 0)      // 0x101
        let m = rig.clients[0]
        for target in [sibling, 2, 0, 1, hvPartitionIDSelf, 0x10101] {
            #expect(status { try m.initialize(target) } == .accessDenied, "initialize \(target)")
            #expect(status { try m.createVP(target, index: 1) } == .accessDenied, "create VP in \(target)")
            #expect(status { try m.deposit(into: target, pfns: [200]) } == .accessDenied, "deposit into \(target)")
            #expect(status { _ = try m.withdraw(from: target, count: 1) } == .accessDenied, "withdraw from \(target)")
            #expect(status { try m.finalize(target) } == .accessDenied, "finalize \(target)")
            #expect(status { try m.delete(target) } == .accessDenied, "delete \(target)")
            // Messages and events straight into another partition's SynIC.
            let post = m.raw(.postMessageDirect, PostMessageDirectInput(partitionID: target, vpIndex: 0, sint: 2, message: [UInt8](repeating: 1, count: 256)).encode())
            #expect(post.status == .accessDenied, "post to \(target)")
            let signal = m.raw(.signalEventDirect, SignalEventDirectInput(partitionID: target, vpIndex: 0, sint: 2, flagNumber: 1).encode())
            #expect(signal.status == .accessDenied, "signal \(target)")
        }
        // One of its own that does not exist is named as such.
        #expect(status { try m.initialize(0x1FF) } == .invalidPartitionID)
        // Its own child's SynIC is kept by itself (the parent hosts it), not by this hypervisor.
        #expect(m.raw(.postMessageDirect, PostMessageDirectInput(partitionID: own, vpIndex: 0, sint: 2, message: []).encode()).status == .invalidPartitionState)
        // Nothing was harmed: the sibling's child and partition 2's memory are as they were.
        let theirs = try #require(rig.partitions[1].children?.children[sibling])
        #expect(theirs.state == .initialized && theirs.pages.count == 16 && theirs.vps == [0])
        #expect(try #require(rig.partitions[0].children).children.keys.sorted() == [own])
        #expect(try rig.clients[1].partitionID() == 2)
    }

    @Test("More memory than it has, VPs it does not have, calls out of order: INSUFFICIENT_MEMORY, INVALID_VP_INDEX, INVALID_PARTITION_STATE")
    func limits() throws {
        let rig = try TreeRig()
        let m = rig.clients[0]
        let id = try m.createPartition()
        // 1 MiB = 256 pages: page 256 is not the partition's. The reps before it are deposited; the result says how many.
        let result = m.raw(.depositMemory, PartitionIDBlock(partitionID: id).encode() + [250, 251, 256].flatMap { PartitionIDBlock(partitionID: $0).encode() },
                           repCount: 3)
        #expect(result.status == .insufficientMemory && result.repsCompleted == 2)
        // A page already given, to this child or another.
        #expect(status { try m.deposit(into: id, pfns: [250]) } == .insufficientMemory)
        let other = try m.createPartition()
        #expect(status { try m.deposit(into: other, pfns: [251]) } == .insufficientMemory)
        // All of its memory and one page more.
        #expect(status { try m.deposit(into: other, pfns: (0..<257).map { $0 }.filter { $0 != 250 && $0 != 251 }) } == .insufficientMemory)
        #expect(status { try m.initialize(0x103) } == .invalidPartitionID)
        // VPs: none before initialization, only indexes the parent has, each once.
        #expect(status { try m.createVP(id, index: 0) } == .invalidPartitionState)
        try m.initialize(id)
        #expect(status { try m.initialize(id) } == .invalidPartitionState)
        #expect(status { try m.deposit(into: id, pfns: [3]) } == .invalidPartitionState)
        #expect(status { try m.createVP(id, index: 2) } == .invalidVPIndex)
        try m.createVP(id, index: 1)
        #expect(status { try m.createVP(id, index: 1) } == .invalidVPState)
        // A child without memory cannot be initialized.
        let empty = try m.createPartition()
        #expect(status { try m.initialize(empty) } == .insufficientMemory)
        let refusals = try #require(rig.partitions[0].children?.refusals)
        #expect(refusals[.insufficientMemory, default: 0] >= 4 && refusals[.invalidVPIndex, default: 0] == 1)
    }

    @Test("Malformed calls: alignment, page crossing, memory bounds, rep fields, fast form, isolation, no privilege")
    func malformed() throws {
        let rig = try TreeRig()
        let p = rig.partitions[0]
        func call(_ control: HypercallControl, input: UInt64 = 0x1000, output: UInt64 = 0x2000) -> HypercallResult {
            p.hypercall(vp: 0, control: control.rawValue, input: input, output: output)
        }
        let create = HypercallControl(.createPartition)
        #expect(call(create, input: 0x1004).status == .invalidAlignment)
        #expect(call(create, input: 0x1FF0).status == .invalidHypercallInput)  // 56 bytes across a page boundary
        #expect(call(create, input: UInt64(rig.memories[0].size)).status == .invalidParameter)
        #expect(call(create, output: 0x2004).status == .invalidAlignment)
        #expect(call(create, output: 1 << 40).status == .invalidParameter)
        #expect(try #require(p.children).children.isEmpty, "no child is made whose id cannot be returned")
        #expect(call(HypercallControl(code: 0x40, repCount: 1)).status == .invalidHypercallInput)
        #expect(call(HypercallControl(code: 0x48)).status == .invalidHypercallInput)  // a rep call with no reps
        #expect(call(HypercallControl(code: 0x48, repCount: 2, repStartIndex: 2)).status == .invalidHypercallInput)
        #expect(call(HypercallControl(code: 0x48, repCount: 600)).status == .invalidHypercallInput)  // 8 + 4800 bytes: more than a page
        #expect(call(HypercallControl(.createPartition, fast: true)).status == .invalidHypercallInput)
        #expect(p.hypercall(vp: 9, control: create.rawValue, input: 0x1000, output: 0x2000).status == .invalidVPIndex)
        // Isolated partitions are not served.
        try rig.memories[0].buffer(gpa: 0x1000, count: 56).copyBytes(from: CreatePartitionInput(isolationType: 2).encode())
        #expect(call(create).status == .invalidParameter)
        // CreateVp's padding is reserved.
        var vp = CreateVPInput(partitionID: 0x101, vpIndex: 0).encode()
        vp[13] = 1
        try rig.memories[0].buffer(gpa: 0x1000, count: 40).copyBytes(from: vp)
        #expect(call(HypercallControl(.createVp)).status == .invalidParameter)
        // A partition given no ChildPartitions may not manage any.
        let plain = Partition(id: 3, name: "plain", memory: try GuestPhysicalMemory(size: 1 << 16), vpCount: 1, interrupts: rig.recorder)
        #expect(plain.hypercall(vp: 0, control: create.rawValue, input: 0x1000, output: 0x2000).status == .accessDenied)
        // Random bytes under every management code: a status each time, never a trap, and no child left half made.
        var generator = SystemRandomNumberGenerator()
        let codes = HypercallCode.allCases.filter(\.isPartitionManagement)
        let page = try rig.memories[0].buffer(gpa: 0x1000, count: 4096)
        for _ in 0..<3000 {
            let code = codes.randomElement(using: &generator)!
            for i in stride(from: 0, to: 4096, by: 8) { page.storeBytes(of: generator.next(), toByteOffset: i, as: UInt64.self) }
            // Small ids often, so some calls name real children.
            if Bool.random(using: &generator) { page.storeBytes(of: UInt64(0x101 + Int.random(in: 0...2, using: &generator)), toByteOffset: 0, as: UInt64.self) }
            let control = HypercallControl(code: code.rawValue, repCount: UInt16.random(in: 0...3, using: &generator),
                                           repStartIndex: UInt16.random(in: 0...1, using: &generator))
            _ = call(control, input: 0x1000 + UInt64.random(in: 0...8, using: &generator) * 8)
        }
        for child in p.children?.children.values ?? [:].values { #expect(child.id >> 8 == 1) }
    }

    @Test("Wire layouts: CreatePartition 56 bytes, CreateVp 40, DeleteVp 16, PostMessageDirect 280, SignalEventDirect 16")
    func layouts() throws {
        let create = CreatePartitionInput(flags: 0x2000, compatibilityVersion: 0x609, isolationType: 0).encode()
        #expect(create.count == 56 && create[1] == 0x20 && create[16] == 0x09 && create[17] == 0x06)
        let vp = CreateVPInput(partitionID: 0x0102_0304_0506_0708, vpIndex: 3, flags: 1).encode()
        #expect(vp.count == 40 && vp[0] == 8 && vp[7] == 1 && vp[8] == 3 && vp[32] == 1)
        #expect(try vp.withUnsafeBytes { try CreateVPInput(decoding: $0) } == CreateVPInput(partitionID: 0x0102_0304_0506_0708, vpIndex: 3, flags: 1))
        #expect(DeleteVPInput(partitionID: 1, vpIndex: 2).encode() == [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
        let post = PostMessageDirectInput(partitionID: 5, vpIndex: 1, sint: 2, message: [0xAA]).encode()
        #expect(post.count == 280 && post[0] == 5 && post[8] == 1 && post[16] == 2 && post[20] == 0xAA)
        #expect(SignalEventDirectInput(partitionID: 5, vpIndex: 1, sint: 2, flagNumber: 0x0304).encode()
            == [5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 4, 3])
        // The codes Linux's hvgdk_mini.h gives.
        #expect([HypercallCode.createPartition, .initializePartition, .finalizePartition, .deletePartition, .getPartitionID, .depositMemory,
                 .withdrawMemory, .createVp, .deleteVp].map(\.rawValue) == [0x40, 0x41, 0x42, 0x43, 0x46, 0x48, 0x49, 0x4E, 0x4F])
        #expect(HypercallResult(status: .insufficientMemory, repsCompleted: 2).rawValue == 0x2_0000_000B)
    }

    @Test("The guest's client believes no count the hypervisor gives: a withdraw answer of 4095 reps reads only what was asked")
    func hostileCounts() throws {
        /// A hypervisor that says every rep call completed 4095 reps.
        final class Boastful: GuestHypervisor {
            func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
                HypercallResult(status: .success, repsCompleted: 0xFFF).rawValue
            }
            func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool { false }
            func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? { nil }
        }
        let memory = try GuestPhysicalMemory(size: 1 << 16)
        let client = PartitionManagementClient(hypervisor: Boastful(), input: try memory.pointer(gpa: 0x1000, count: 4096), inputGPA: 0x1000,
                                               output: try memory.pointer(gpa: 0x2000, count: 4096), outputGPA: 0x2000)
        #expect(try client.withdraw(from: 0x101, count: 3).count == 3)
        #expect(try client.withdraw(from: 0x101, count: 600).count == 600)
    }

    @Test("Messages stay in their partition: a sibling's connection is not reachable by id")
    func connectionsPerPartition() throws {
        let rig = try TreeRig()
        let port = RecordingPort()
        rig.partitions[1].registerMessagePort(connectionID: 4, port)
        let bytes = try PostMessageInput(connectionID: 4, payload: [1, 0, 0, 0]).encode()
        try rig.memories[0].buffer(gpa: 0x3000, count: 256).copyBytes(from: bytes)
        #expect(rig.partitions[0].hypercall(vp: 0, control: HypercallControl(.postMessage).rawValue, input: 0x3000, output: 0).status == .invalidConnectionID)
        #expect(port.received.isEmpty)
    }
}
