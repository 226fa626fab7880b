// Hypercall dispatch: status codes for every kind of bad input, and routing by connection id.

import GuestMemory
import Hypervisor
import Testing
import VMBusWire

final class RecordingPort: MessagePort {
    var received: [(payload: [UInt8], connection: UInt32, vp: UInt32)] = []
    func receiveMessage(_ payload: [UInt8], connectionID: UInt32, fromVP vp: UInt32) -> HvStatus {
        received.append((payload, connectionID, vp))
        return .success
    }
}

@Suite("Hypercall dispatch")
struct HypercallTests {
    let memory: GuestPhysicalMemory
    let partition: Partition
    let port = RecordingPort()
    let recorder = InterruptRecorder()

    init() throws {
        memory = try GuestPhysicalMemory(size: 1 << 20)
        partition = Partition(id: 7, name: "test", memory: memory, vpCount: 2, interrupts: recorder)
        partition.registerMessagePort(connectionID: 1, port)
    }

    func post(_ input: PostMessageInput, at gpa: UInt64 = 0x2000, vp: UInt32 = 0) throws -> HvStatus {
        let bytes = try input.encode()
        try memory.buffer(gpa: gpa, count: 256).copyBytes(from: bytes)
        return partition.hypercall(vp: vp, control: HypercallControl(.postMessage).rawValue, input: gpa, output: 0).status
    }

    @Test("HvPostMessage reaches the port registered for its connection id")
    func routing() throws {
        #expect(try post(PostMessageInput(connectionID: 1, payload: [3, 0, 0, 0, 0, 0, 0, 0]), vp: 1) == .success)
        #expect(port.received.count == 1 && port.received[0].vp == 1 && port.received[0].payload.count == 8)
        #expect(try post(PostMessageInput(connectionID: 9, payload: [])) == .invalidConnectionID)
    }

    @Test("Bad hypercalls get the status a hypervisor returns")
    func badInput() throws {
        func call(_ control: UInt64, _ input: UInt64, vp: UInt32 = 0) -> HvStatus {
            partition.hypercall(vp: vp, control: control, input: input, output: 0).status
        }
        #expect(call(0x9999, 0) == .invalidHypercallCode)
        #expect(call(HypercallControl(.postMessage).rawValue, 0x2004) == .invalidAlignment)
        #expect(call(HypercallControl(.postMessage).rawValue, UInt64(memory.size) - 8) == .invalidParameter)
        #expect(call(HypercallControl(.postMessage, fast: true).rawValue, 0x2000) == .invalidHypercallInput)
        #expect(call(HypercallControl(code: 0x5C, repCount: 1).rawValue, 0x2000) == .invalidHypercallInput)
        #expect(call(HypercallControl(.postMessage).rawValue | 1 << 27, 0x2000) == .invalidHypercallInput)
        #expect(call(HypercallControl(.postMessage).rawValue, 0x2000, vp: 5) == .invalidVPIndex)
        // Payload size over 240 in the input block.
        let block = try memory.buffer(gpa: 0x3000, count: 256)
        block.initializeMemory(as: UInt8.self, repeating: 0)
        block.storeBytes(of: UInt32(1), toByteOffset: 0, as: UInt32.self)
        block.storeBytes(of: UInt32(1), toByteOffset: 8, as: UInt32.self)
        block.storeBytes(of: UInt32(241), toByteOffset: 12, as: UInt32.self)
        #expect(call(HypercallControl(.postMessage).rawValue, 0x3000) == .invalidParameter)
        // Message type other than 1, and reserved connection-id bits.
        #expect(try post(PostMessageInput(connectionID: 1, messageType: 2, payload: [])) == .invalidParameter)
        #expect(try post(PostMessageInput(connectionID: 0x0100_0001, payload: [])) == .invalidParameter)
        #expect(port.received.isEmpty)
    }

    @Test("HvSignalEvent in fast and memory forms reaches the event port")
    func signalEvent() throws {
        var flags: [UInt16] = []
        partition.registerEventPort(connectionID: 0x2003) { flags.append($0) }
        let fast = HypercallControl(.signalEvent, fast: true).rawValue
        #expect(partition.hypercall(vp: 0, control: fast, input: SignalEventInput(connectionID: 0x2003).fastInput, output: 0).status == .success)
        try memory.buffer(gpa: 0x4000, count: 8).storeBytes(of: SignalEventInput(connectionID: 0x2003, flagNumber: 5).fastInput, as: UInt64.self)
        #expect(partition.hypercall(vp: 0, control: HypercallControl(.signalEvent).rawValue, input: 0x4000, output: 0).status == .success)
        #expect(flags == [0, 5])
        #expect(partition.hypercall(vp: 0, control: fast, input: 0x9999, output: 0).status == .invalidConnectionID)
        partition.unregisterEventPort(connectionID: 0x2003)
        #expect(partition.hypercall(vp: 0, control: fast, input: 0x2003, output: 0).status == .invalidConnectionID)
    }
}
