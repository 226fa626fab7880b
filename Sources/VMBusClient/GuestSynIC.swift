// The guest's side of one VP's SynIC: its message and event-flag pages, and the interrupt-time scan.

import Atomics
import GuestMemory
import VMBusWire

/// Why the guest side could not set up or use the bus.
public enum ClientError: Error, Equatable, Sendable, CustomStringConvertible {
    case memory(GuestMemoryError)
    case msrRefused(UInt32)
    case hypercallFailed(HvStatus)
    case noVersionAccepted
    case notConnected
    case unknownChannel(UInt32)
    case channelRescinded(UInt32)
    case gpadlRefused(UInt32)
    case openRefused(status: UInt32)
    case invalidRingSize(pages: Int)
    case ring(String)

    public var description: String {
        switch self {
        case .memory(let e): "guest memory: \(e)"
        case .msrRefused(let msr): "the hypervisor refused a write to MSR 0x\(String(msr, radix: 16))"
        case .hypercallFailed(let status): "hypercall failed with \(status)"
        case .noVersionAccepted: "the host accepted none of the VMBus versions offered"
        case .notConnected: "not connected to VMBus"
        case .unknownChannel(let relid): "no usable channel with relid \(relid)"
        case .channelRescinded(let relid): "channel \(relid) was rescinded"
        case .gpadlRefused(let status): "the host refused the GPADL (status 0x\(String(status, radix: 16)))"
        case .openRefused(let status): "the host refused to open the channel (status 0x\(String(status, radix: 16)))"
        case .invalidRingSize(let pages): "rings need at least 2 pages, got \(pages)"
        case .ring(let why): "ring: \(why)"
        }
    }
}

/// One VP's SynIC pages as the guest programs and reads them (what Linux's hv_synic_enable_regs
/// and vmbus_isr do): SIMP and SIEFP pages, SINT2 unmasked, then SCONTROL.
final class GuestSynIC {
    let vp: UInt32
    let messagePageGPA: UInt64
    let eventPageGPA: UInt64
    let messageSlot: UnsafeMutableRawPointer
    let eventFlags: UnsafeMutableRawPointer
    let sint: Int

    init(vp: UInt32, sint: Int, vector: UInt8, messagePage: UInt64, eventPage: UInt64, pool: GuestBufferPool,
         hypervisor: any GuestHypervisor) throws(ClientError) {
        self.vp = vp
        self.sint = sint
        messagePageGPA = pool.gpa(ofPage: messagePage)
        eventPageGPA = pool.gpa(ofPage: eventPage)
        do {
            messageSlot = try pool.pointer(page: messagePage, offset: SynICLayout.messageSlotOffset(sint: sint), count: HvMessage.size)
            eventFlags = try pool.pointer(page: eventPage, offset: SynICLayout.eventFlagsOffset(sint: sint),
                                          count: SynICLayout.eventFlagBytesPerSINT)
        } catch { throw .memory(error) }
        let writes: [(UInt32, UInt64)] = [
            (HvMSR.simp, SynICPageRegister(enabled: true, pageNumber: pool.pfn(ofPage: messagePage)).rawValue),
            (HvMSR.siefp, SynICPageRegister(enabled: true, pageNumber: pool.pfn(ofPage: eventPage)).rawValue),
            (HvMSR.sint(sint), SintRegister(vector: vector, masked: false, autoEOI: true).rawValue),
            (HvMSR.scontrol, SControlRegister(enabled: true).rawValue),
        ]
        for (msr, value) in writes where !hypervisor.writeMSR(vp: vp, msr, value) { throw .msrRefused(msr) }
    }

    /// Takes and clears all set event flags of the SINT, calling `body` with each flag number.
    func takeEvents(_ body: (Int) -> Void) {
        for index in 0..<(SynICLayout.eventFlagBytesPerSINT / 4) {
            // Word `index` of the SINT's 256-byte flag area.
            let word = UnsafeAtomic<UInt32>(at: (eventFlags + index * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
            guard word.load(ordering: .relaxed) != 0 else { continue }
            var bits = word.exchange(0, ordering: .sequentiallyConsistent)
            while bits != 0 {
                body(index * 32 + bits.trailingZeroBitCount)
                bits &= bits - 1
            }
        }
    }

    /// Copies the message out of the slot, frees the slot, and writes EOM if the host has more.
    /// Returns nil when the slot is empty; messages the header marks oversized are dropped.
    func takeMessage(hypervisor: any GuestHypervisor) -> HvMessage? {
        let type = UnsafeAtomic<UInt32>(at: messageSlot.assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
        let seen = type.load(ordering: .acquiring)
        guard seen != HvMessageType.none.rawValue else { return nil }
        let message = try? HvMessage(decoding: UnsafeRawBufferPointer(start: messageSlot, count: HvMessage.size))
        guard type.compareExchange(expected: seen, desired: HvMessageType.none.rawValue, ordering: .sequentiallyConsistent).exchanged else {
            return nil
        }
        // The flags byte is inside the 256-byte slot checked at setup.
        let flags = UnsafeAtomic<UInt8>(at: (messageSlot + HvMessage.Offset.messageFlags).assumingMemoryBound(to: UInt8.AtomicRepresentation.self))
        if flags.load(ordering: .sequentiallyConsistent) & HvMessage.flagMessagePending != 0 {
            _ = hypervisor.writeMSR(vp: vp, HvMSR.eom, 0)
        }
        return message ?? HvMessage(messageType: .none, payload: [])
    }
}
