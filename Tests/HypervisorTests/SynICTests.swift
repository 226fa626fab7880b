// The host SynIC: slot delivery at SINT 2, the msg_pending/EOM hand-off, event flags and masking.

import Atomics
import GuestMemory
import Hypervisor
import Testing
import VMBusWire

/// Records interrupts the SynIC raises.
final class InterruptRecorder: InterruptSink {
    var raised: [(vp: UInt32, sint: Int, vector: UInt8)] = []
    func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) { raised.append((vp, sint, vector)) }
}

@Suite("SynIC")
struct SynICTests {
    let memory: GuestPhysicalMemory
    let recorder = InterruptRecorder()
    let synic: SynIC
    /// Message page at GPA 0x10000, event page at 0x11000.
    init() throws {
        memory = try GuestPhysicalMemory(size: 1 << 20)
        synic = SynIC(vpIndex: 0, memory: memory, sink: recorder)
    }

    func enable() throws {
        try synic.writeMSR(HvMSR.simp, SynICPageRegister(enabled: true, pageNumber: 0x10).rawValue)
        try synic.writeMSR(HvMSR.siefp, SynICPageRegister(enabled: true, pageNumber: 0x11).rawValue)
        try synic.writeMSR(HvMSR.sint(2), SintRegister(vector: 0xF3).rawValue)
        try synic.writeMSR(HvMSR.scontrol, 1)
    }

    var slot2: UnsafeMutableRawPointer { memory.base + 0x10000 + 0x200 }

    /// What a guest does: copy, free the slot, EOM if pending.
    func guestTakesMessage() throws -> [UInt8]? {
        let type = slot2.load(as: UInt32.self)
        guard type != 0 else { return nil }
        let message = try HvMessage(decoding: UnsafeRawBufferPointer(start: slot2, count: 256))
        slot2.storeBytes(of: UInt32(0), as: UInt32.self)
        if slot2.load(fromByteOffset: 5, as: UInt8.self) & 1 != 0 { try synic.writeMSR(HvMSR.eom, 0) }
        return message.payload
    }

    @Test("A posted message lands in the SINT 2 slot at offset 0x200 and interrupts")
    func delivery() throws {
        try enable()
        synic.postMessage(sint: 2, payload: [1, 2, 3, 4])
        #expect(slot2.load(as: UInt32.self) == 1)
        #expect(slot2.load(fromByteOffset: 4, as: UInt8.self) == 4)
        #expect(slot2.load(fromByteOffset: 16, as: UInt32.self) == 0x0403_0201)
        #expect(recorder.raised.count == 1 && recorder.raised[0].sint == 2 && recorder.raised[0].vector == 0xF3)
    }

    @Test("A second message waits for EOM and sets msg_pending")
    func eomHandOff() throws {
        try enable()
        synic.postMessage(sint: 2, payload: [1])
        synic.postMessage(sint: 2, payload: [2])
        synic.postMessage(sint: 2, payload: [3])
        #expect(synic.queuedMessages(sint: 2) == 2)
        #expect(slot2.load(fromByteOffset: 5, as: UInt8.self) & 1 == 1, "occupied slot flagged pending")
        #expect(try guestTakesMessage() == [1])
        #expect(try guestTakesMessage() == [2])
        #expect(slot2.load(fromByteOffset: 5, as: UInt8.self) & 1 == 0, "last message: nothing pending")
        #expect(try guestTakesMessage() == [3])
        #expect(try guestTakesMessage() == nil)
        #expect(synic.eomCount == 2 && synic.messagesDelivered == 3)
    }

    @Test("A slot freed without EOM still receives the next post")
    func freedWithoutEOM() throws {
        try enable()
        synic.postMessage(sint: 2, payload: [1])
        slot2.storeBytes(of: UInt32(0), as: UInt32.self)
        synic.postMessage(sint: 2, payload: [9])
        #expect(try guestTakesMessage() == [9])
    }

    @Test("Messages wait while the SynIC or SINT is disabled")
    func disabled() throws {
        synic.postMessage(sint: 2, payload: [7])
        #expect(recorder.raised.isEmpty && synic.queuedMessages(sint: 2) == 1)
        try enable()
        #expect(try guestTakesMessage() == [7])
    }

    @Test("Event flags interrupt only on a 0 → 1 transition; masked SINTs stay silent")
    func eventFlags() throws {
        try enable()
        #expect(synic.signalEvent(sint: 2, flag: 37))
        #expect(synic.signalEvent(sint: 2, flag: 37))
        #expect(recorder.raised.count == 1)
        let word = (memory.base + 0x11000 + 0x200 + 4).load(as: UInt32.self)
        #expect(word == 1 << 5, "flag 37 is bit 5 of word 1")
        #expect(!synic.signalEvent(sint: 2, flag: 2048))
        try synic.writeMSR(HvMSR.sint(2), SintRegister(vector: 0xF3, masked: true).rawValue)
        #expect(synic.signalEvent(sint: 2, flag: 1))
        #expect(recorder.raised.count == 1)
    }

    @Test("Bad register writes are refused")
    func registers() throws {
        #expect(throws: SynICError.self) { try synic.writeMSR(HvMSR.simp, SynICPageRegister(enabled: true, pageNumber: 0x1_0000).rawValue) }
        // A page at the top of the address space: page + 4 KiB wraps past 2^64 (it used to trap).
        #expect(throws: SynICError.self) { try synic.writeMSR(HvMSR.simp, 0xFFFF_FFFF_FFFF_F001) }
        #expect(throws: SynICError.self) { try synic.writeMSR(HvMSR.siefp, 0xFFFF_FFFF_FFFF_F001) }
        #expect(throws: SynICError.self) { try synic.writeMSR(HvMSR.sint(2), SintRegister(vector: 3).rawValue) }
        #expect(throws: SynICError.readOnly(HvMSR.vpIndex)) { try synic.writeMSR(HvMSR.vpIndex, 1) }
        #expect(throws: SynICError.unknownRegister(0x4000_00FF)) { try synic.writeMSR(0x4000_00FF, 1) }
        #expect(try synic.readMSR(HvMSR.sversion) == 1)
        #expect(try synic.readMSR(HvMSR.sint(5)) == SintRegister.reset.rawValue)
    }
}
