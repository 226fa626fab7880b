// A partition as the hypervisor sees it: guest memory, one SynIC per VP, connection ports, hypercall dispatch.

import Glibc
import GuestMemory
import VMBusWire

/// Receives messages posted with HvPostMessage to one connection id.
public protocol MessagePort: AnyObject {
    /// Handles a channel message posted by `vp` on `connectionID`; the returned status is the
    /// hypercall's result.
    func receiveMessage(_ payload: [UInt8], connectionID: UInt32, fromVP vp: UInt32) -> HvStatus
}

/// A child partition: its memory, its virtual processors' SynICs and the ports through which its
/// hypercalls reach the root partition's services.
public final class Partition {
    public let id: UInt32
    public let name: String
    public let memory: GuestPhysicalMemory
    public let synics: [SynIC]
    private var messagePorts: [UInt32: any MessagePort] = [:]
    private var eventPorts: [UInt32: (UInt16) -> Void] = [:]

    // Counters for status output.
    public private(set) var hypercalls: UInt64 = 0
    public private(set) var failedHypercalls: UInt64 = 0

    public init(id: UInt32, name: String, memory: GuestPhysicalMemory, vpCount: Int, interrupts: any InterruptSink) {
        precondition(vpCount >= 1)
        self.id = id
        self.name = name
        self.memory = memory
        self.synics = (0..<vpCount).map { SynIC(vpIndex: UInt32($0), memory: memory, sink: interrupts) }
    }

    public var vpCount: Int { synics.count }

    /// Routes HvPostMessage on `connectionID` to `port`.
    public func registerMessagePort(connectionID: UInt32, _ port: any MessagePort) {
        messagePorts[connectionID] = port
    }

    /// Told when an event port appears (true) or goes (false), so a transport can give the
    /// guest a direct doorbell for it.
    public var eventPortObserver: ((UInt32, Bool) -> Void)?

    /// Routes HvSignalEvent on `connectionID` to `handler` (called with the flag number).
    public func registerEventPort(connectionID: UInt32, _ handler: @escaping (UInt16) -> Void) {
        let isNew = eventPorts[connectionID] == nil
        eventPorts[connectionID] = handler
        if isNew { eventPortObserver?(connectionID, true) }
    }

    public func unregisterEventPort(connectionID: UInt32) {
        if eventPorts.removeValue(forKey: connectionID) != nil { eventPortObserver?(connectionID, false) }
    }

    /// Connection ids with an event port.
    public var eventConnectionIDs: [UInt32] { Array(eventPorts.keys) }

    /// Delivers a guest signal that arrived without a hypercall (a doorbell write): the same
    /// effect as a fast HvSignalEvent with flag 0.
    @discardableResult
    public func deliverSignal(connectionID: UInt32) -> HvStatus {
        guard let handler = eventPorts[connectionID] else { return .invalidConnectionID }
        signalsDelivered &+= 1
        handler(0)
        return .success
    }

    public private(set) var signalsDelivered: UInt64 = 0

    /// Executes one hypercall issued by `vp`: the work a hypervisor does on a VMCALL exit.
    /// `input` and `output` are guest physical addresses (or, for fast calls, the register values).
    public func hypercall(vp: UInt32, control raw: UInt64, input: UInt64, output: UInt64) -> HypercallResult {
        hypercalls &+= 1
        let control = HypercallControl(rawValue: raw)
        let result: HypercallResult
        if let code = HypercallCode(rawValue: control.code), code.isPartitionManagement {
            result = guardedManagement(vp: vp, code: code, control: control, input: input, output: output)
        } else {
            result = HypercallResult(status: dispatch(vp: vp, control: control, input: input))
        }
        if result.status != .success { failedHypercalls &+= 1 }
        return result
    }

    /// The children this partition created with the management hypercalls; nil: it may create none
    /// (every management call is HV_STATUS_ACCESS_DENIED).
    public var children: ChildPartitions?

    private func guardedManagement(vp: UInt32, code: HypercallCode, control: HypercallControl, input: UInt64,
                                   output: UInt64) -> HypercallResult {
        guard Int(vp) < synics.count else { return HypercallResult(status: .invalidVPIndex) }
        guard !control.hasReservedBits, control.variableHeaderSize == 0, !control.isFast else {
            return HypercallResult(status: .invalidHypercallInput)
        }
        guard let children else { return HypercallResult(status: .accessDenied) }
        return PartitionManagementCall.run(code, control: control, input: input, output: output, memory: memory, selfID: UInt64(id),
                                           children: children)
    }

    private func dispatch(vp: UInt32, control: HypercallControl, input: UInt64) -> HvStatus {
        guard Int(vp) < synics.count else { return .invalidVPIndex }
        guard let code = HypercallCode(rawValue: control.code) else { return .invalidHypercallCode }
        guard !control.hasReservedBits, control.repCount == 0, control.variableHeaderSize == 0 else {
            return .invalidHypercallInput
        }
        switch code {
        case .postMessage:
            guard !control.isFast else { return .invalidHypercallInput }
            guard input & 7 == 0 else { return .invalidAlignment }
            guard let block = try? memory.buffer(gpa: input, count: PostMessageInput.size) else {
                return .invalidParameter
            }
            let message: PostMessageInput
            do { message = try PostMessageInput(decoding: UnsafeRawBufferPointer(block)) } catch {
                return .invalidParameter
            }
            guard message.messageType == PostMessageInput.vmbusMessageType else { return .invalidParameter }
            guard let port = messagePorts[message.connectionID] else { return .invalidConnectionID }
            return port.receiveMessage(message.payload, connectionID: message.connectionID, fromVP: vp)
        case .signalEvent:
            let event: SignalEventInput
            if control.isFast {
                guard let e = try? SignalEventInput(fastInput: input) else { return .invalidParameter }
                event = e
            } else {
                guard input & 7 == 0 else { return .invalidAlignment }
                guard let block = try? memory.buffer(gpa: input, count: SignalEventInput.size),
                    let e = try? SignalEventInput(decoding: UnsafeRawBufferPointer(block))
                else { return .invalidParameter }
                event = e
            }
            guard let handler = eventPorts[event.connectionID] else { return .invalidConnectionID }
            signalsDelivered &+= 1
            handler(event.flagNumber)
            return .success
        case .getVpRegisters, .setVpRegisters:
            return .invalidHypercallCode
        case .createPartition, .initializePartition, .finalizePartition, .deletePartition, .getPartitionID, .depositMemory,
             .withdrawMemory, .createVp, .deleteVp, .postMessageDirect, .signalEventDirect:
            return .invalidHypercallCode  // served by guardedManagement
        }
    }

    /// A guest MSR write on `vp`.
    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) throws(SynICError) {
        guard Int(vp) < synics.count else { throw .unknownRegister(msr) }
        try synics[Int(vp)].writeMSR(msr, value)
    }

    /// A guest MSR read on `vp`. HV_X64_MSR_TIME_REF_COUNT is the partition reference counter.
    public func readMSR(vp: UInt32, _ msr: UInt32) throws(SynICError) -> UInt64 {
        guard Int(vp) < synics.count else { throw .unknownRegister(msr) }
        if msr == HvMSR.timeRefCount { return Self.referenceCounter() }
        return try synics[Int(vp)].readMSR(msr)
    }

    /// The partition reference counter, in 100 ns units: the host's CLOCK_MONOTONIC, the clock
    /// time sync pairs its samples with (Linux's hv_utils reads it through the MSR).
    public static func referenceCounter() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return (UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)) / 100
    }
}
