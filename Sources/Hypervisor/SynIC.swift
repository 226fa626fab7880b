// The host's model of one virtual processor's SynIC: registers, message slots with EOM hand-off, event flags.

import Atomics
import GuestMemory
import VMBusWire

/// Receives "raise this SINT on this VP" from the SynIC: the interrupt a real hypervisor injects.
public protocol InterruptSink: AnyObject {
    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8)
}

/// Why a SynIC register write was refused (a #GP on real hardware).
public enum SynICError: Error, Equatable, Sendable {
    case unknownRegister(UInt32)
    case invalidValue(register: UInt32, value: UInt64)
    case readOnly(UInt32)
}

/// One VP's synthetic interrupt controller, as the hypervisor keeps it. Messages wait in a FIFO per
/// SINT and are copied into the guest's message page only when the slot is free; a full slot gets
/// its msg_pending flag set so that the guest writes EOM. Event flags are set atomically in the
/// guest's SIEFP page and interrupt only on a 0 → 1 transition.
public final class SynIC {
    public let vpIndex: UInt32
    let memory: GuestPhysicalMemory
    weak var sink: (any InterruptSink)?

    public private(set) var scontrol = SControlRegister(enabled: false)
    public private(set) var simp = SynICPageRegister(rawValue: 0)
    public private(set) var siefp = SynICPageRegister(rawValue: 0)
    public private(set) var sints = [SintRegister](repeating: .reset, count: SynICLayout.sintCount)
    public private(set) var guestOSID = GuestOSID(rawValue: 0)

    /// Messages waiting for a free slot, per SINT.
    private var queues = [[[UInt8]]](repeating: [], count: SynICLayout.sintCount)
    /// Most messages a guest may leave unconsumed per SINT before new ones are dropped.
    public static let queueLimit = 1024

    // Counters for status output.
    public private(set) var messagesDelivered: UInt64 = 0
    public private(set) var messagesDropped: UInt64 = 0
    public private(set) var eventsSignalled: UInt64 = 0
    public private(set) var interruptsRaised: UInt64 = 0
    public private(set) var eomCount: UInt64 = 0

    public init(vpIndex: UInt32, memory: GuestPhysicalMemory, sink: (any InterruptSink)?) {
        self.vpIndex = vpIndex
        self.memory = memory
        self.sink = sink
    }

    /// Messages queued behind a full slot.
    public func queuedMessages(sint: Int) -> Int { queues[sint].count }

    // MARK: Registers

    /// Handles a guest write to a SynIC MSR.
    public func writeMSR(_ msr: UInt32, _ value: UInt64) throws(SynICError) {
        switch msr {
        case HvMSR.guestOSID:
            guestOSID = GuestOSID(rawValue: value)
        case HvMSR.scontrol:
            guard value & ~1 == 0 else { throw .invalidValue(register: msr, value: value) }
            scontrol = SControlRegister(rawValue: value)
            deliverAll()
        case HvMSR.simp:
            let reg = SynICPageRegister(rawValue: value)
            guard !reg.enabled || memory.contains(gpa: reg.gpa, count: SynICLayout.pageSize) else {
                throw .invalidValue(register: msr, value: value)
            }
            simp = reg
            deliverAll()
        case HvMSR.siefp:
            let reg = SynICPageRegister(rawValue: value)
            guard !reg.enabled || memory.contains(gpa: reg.gpa, count: SynICLayout.pageSize) else {
                throw .invalidValue(register: msr, value: value)
            }
            siefp = reg
        case HvMSR.eom:
            eomCount &+= 1
            deliverAll()
        case HvMSR.sint0...(HvMSR.sint0 + 15):
            let reg = SintRegister(rawValue: value)
            guard value >> 21 == 0, reg.masked || reg.hasValidVector else {
                throw .invalidValue(register: msr, value: value)
            }
            sints[Int(msr - HvMSR.sint0)] = reg
            deliver(sint: Int(msr - HvMSR.sint0))
        case HvMSR.vpIndex, HvMSR.sversion:
            throw .readOnly(msr)
        default:
            throw .unknownRegister(msr)
        }
    }

    /// Handles a guest read of a SynIC MSR.
    public func readMSR(_ msr: UInt32) throws(SynICError) -> UInt64 {
        switch msr {
        case HvMSR.guestOSID: guestOSID.rawValue
        case HvMSR.vpIndex: UInt64(vpIndex)
        case HvMSR.sversion: 1
        case HvMSR.scontrol: scontrol.rawValue
        case HvMSR.simp: simp.rawValue
        case HvMSR.siefp: siefp.rawValue
        case HvMSR.eom: 0
        case HvMSR.sint0...(HvMSR.sint0 + 15): sints[Int(msr - HvMSR.sint0)].rawValue
        default: throw .unknownRegister(msr)
        }
    }

    // MARK: Messages

    /// Queues a message for `sint` and delivers it if the slot is free. Returns false if the
    /// queue is over its limit (the message is dropped and counted).
    @discardableResult
    public func postMessage(sint: Int, type: HvMessageType = .vmbus, payload: [UInt8]) -> Bool {
        precondition(payload.count <= HvMessage.payloadCapacity && (0..<SynICLayout.sintCount).contains(sint))
        guard queues[sint].count < Self.queueLimit else {
            messagesDropped &+= 1
            return false
        }
        var slotImage = [UInt8](repeating: 0, count: HvMessage.headerSize + payload.count)
        slotImage.putLE(type.rawValue, at: HvMessage.Offset.messageType)
        slotImage[HvMessage.Offset.payloadSize] = UInt8(payload.count)
        slotImage.replaceSubrange(HvMessage.headerSize..<slotImage.count, with: payload)
        queues[sint].append(slotImage)
        deliver(sint: sint)
        return true
    }

    private func deliverAll() {
        for sint in 0..<SynICLayout.sintCount where !queues[sint].isEmpty { deliver(sint: sint) }
    }

    /// Moves the next queued message into the slot if it is free; otherwise asks for an EOM.
    private func deliver(sint: Int) {
        guard !queues[sint].isEmpty, scontrol.enabled, simp.enabled, !sints[sint].masked,
            let slot = try? memory.pointer(gpa: simp.gpa + UInt64(SynICLayout.messageSlotOffset(sint: sint)),
                                           count: HvMessage.size)
        else { return }
        // The slot header lies inside the 4 KiB page checked when SIMP was written.
        let type = UnsafeAtomic<UInt32>(at: slot.assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
        let flags = UnsafeAtomic<UInt8>(at: (slot + HvMessage.Offset.messageFlags).assumingMemoryBound(to: UInt8.AtomicRepresentation.self))
        if type.load(ordering: .sequentiallyConsistent) != HvMessageType.none.rawValue {
            _ = flags.loadThenBitwiseOr(with: HvMessage.flagMessagePending, ordering: .sequentiallyConsistent)
            // The guest may have freed the slot after reading the old flags: look again.
            guard type.load(ordering: .sequentiallyConsistent) == HvMessageType.none.rawValue else { return }
        }
        let image = queues[sint].removeFirst()
        image.withUnsafeBytes { src in
            (slot + 4).copyMemory(from: src.baseAddress! + 4, byteCount: image.count - 4)
        }
        flags.store(queues[sint].isEmpty ? 0 : HvMessage.flagMessagePending, ordering: .relaxed)
        type.store(image.le(UInt32.self, at: 0), ordering: .sequentiallyConsistent)
        messagesDelivered &+= 1
        raise(sint: sint)
    }

    // MARK: Events

    /// Sets event flag `flag` of `sint` in the guest's SIEFP page. Interrupts only if the flag was
    /// clear. Returns false if the flag number is out of range or the page is not enabled.
    @discardableResult
    public func signalEvent(sint: Int, flag: Int) -> Bool {
        guard (0..<SynICLayout.eventFlagsPerSINT).contains(flag), (0..<SynICLayout.sintCount).contains(sint),
            siefp.enabled,
            let area = try? memory.pointer(gpa: siefp.gpa + UInt64(SynICLayout.eventFlagsOffset(sint: sint)),
                                           count: SynICLayout.eventFlagBytesPerSINT)
        else { return false }
        // Flag n is bit n%32 of little-endian word n/32; the word lies inside the SINT's 256 bytes.
        let word = UnsafeAtomic<UInt32>(at: (area + (flag / 32) * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
        let bit = UInt32(1) << UInt32(flag % 32)
        let old = word.loadThenBitwiseOr(with: bit, ordering: .sequentiallyConsistent)
        eventsSignalled &+= 1
        if old & bit == 0 { raise(sint: sint) }
        return true
    }

    private func raise(sint: Int) {
        let reg = sints[sint]
        guard scontrol.enabled, !reg.masked else { return }
        interruptsRaised &+= 1
        sink?.assertInterrupt(vp: vpIndex, sint: sint, vector: reg.vector)
    }
}
