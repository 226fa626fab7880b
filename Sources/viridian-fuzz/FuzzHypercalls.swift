// Target "hypercall": a guest's VM exits (register blocks), hypercalls, SynIC MSR writes and
// message slots against a partition with a VMBus server, as the host runtime serves them.

import EmulatedDevices
import HostRuntime
import Hypervisor
import PartitionLink
import VMBusWire

let hypercallTarget = FuzzTarget(
    name: "hypercall",
    summary: "VP-block exits dispatched as the host runtime does; Partition.hypercall/writeMSR/readMSR; HvPostMessage into VMBusServer; SynIC slots and event flags"
) { data in
    var r = FuzzReader(data)
    HypercallFuzz.run(&r)
}

enum HypercallFuzz {
    /// The VP-block memory a carrier shares with its guest.
    static let blocks = FuzzPages(bytes: VPBlock.memorySize)
    static let msrs: [UInt32] = [
        HvMSR.guestOSID, HvMSR.hypercall, HvMSR.vpIndex, HvMSR.reset, HvMSR.vpRuntime, HvMSR.timeRefCount, HvMSR.referenceTSC,
        HvMSR.scontrol, HvMSR.sversion, HvMSR.siefp, HvMSR.simp, HvMSR.eom, HvMSR.sirbp, HvMSR.sint(0), HvMSR.sint(1),
        HvMSR.sint(2), HvMSR.sint(15), HvMSR.sint0 + 16,
    ]
    /// Every call code served, the partition-management ones included.
    static let codes: [UInt16] = HypercallCode.allCases.map(\.rawValue)
    static let connections: [UInt32] = [
        VMBusConnectionID.message, VMBusConnectionID.message4, 0x0F, VMBusConnectionID.event, 0x2001, 0x2002,
    ]

    static func run(_ r: inout FuzzReader) {
        blocks.zero()
        let setup = r.u8()
        let vpCount = 1 + Int(setup & 1)
        let rig = FuzzPartitionRig(vpCount: vpCount,
                                   configuration: VMBusServerConfiguration(messageConnectionID: setup & 2 != 0 ? 0x0F : VMBusConnectionID.message))
        defer { rig.finish() }
        let ports = PortIOBus()
        if setup & 4 == 0 { for vp in 0..<vpCount { rig.enableSynIC(vp: vp) } }
        // Most runs may create children, as the host runtime lets every partition.
        let children = setup & 8 == 0 ? ChildPartitions(ownerID: 1, ownerPages: UInt64(rig.memory.pageCount), ownerVPs: vpCount) : nil
        rig.partition.children = children
        var steps = 0
        while steps < 256 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 10 {
            case 0:
                // A trapped instruction: the register block as the guest filled it.
                let vp = Int(r.u8() % 3)
                let block = blocks.base + vp * VPBlock.size
                let content = r.padded(VPBlock.size)
                content.withUnsafeBytes { block.copyMemory(from: $0.baseAddress!, byteCount: VPBlock.size) }
                if op & 0x80 != 0 { block.storeBytes(of: UInt32(1 + r.u8() % 5), toByteOffset: VPBlock.kind, as: UInt32.self) }
                // The runtime serves only the VPs the partition has.
                guard vp < vpCount else { continue }
                serviceVP(rig.partition, ports: ports, vp: vp, block: block)
                fuzzCheck(block.load(fromByteOffset: VPBlock.completed, as: UInt64.self) == block.load(fromByteOffset: VPBlock.sequence, as: UInt64.self),
                          "an exit was not marked completed")
            case 1:
                let gpa = UInt64(r.u16()) * 8
                fuzzMemory.poke(gpa: gpa, r.blob(limit: 256))
            case 2:
                let sel = r.u8()
                let connection = sel & 0x80 != 0 ? r.u32() : connections[Int(sel) % connections.count]
                let type = op & 0x40 != 0 ? r.u32() : PostMessageInput.vmbusMessageType
                var payload = r.blob(limit: 240)
                if payload.count >= 4 && op & 0x20 != 0 { payload.putLE(UInt32(r.u8() % 30), at: 0) }
                let status = rig.post(payload, connectionID: connection, messageType: type, vp: UInt32(r.u8() % 3))
                fuzzConsume(UInt64(status.rawValue))
            case 3:
                let control: UInt64
                if op & 0x80 != 0 {
                    control = r.u64()
                } else {
                    let code = codes[Int(r.u8()) % codes.count]
                    let reps = op & 0x20 != 0 ? UInt16(r.u8() % 8) : 0
                    control = HypercallControl(code: code, fast: op & 0x10 != 0, repCount: reps, repStartIndex: reps > 0 ? UInt16(r.u8() % 2) : 0).rawValue
                }
                let input = op & 0x40 != 0 ? r.u64() : UInt64(r.u16()) * 8
                let vp = UInt32(r.u8() % 3)
                let output = op & 0x08 != 0 ? r.u64() : UInt64(r.u16()) * 8
                let result = rig.partition.hypercall(vp: vp, control: control, input: input, output: output)
                fuzzConsume(result.rawValue)
                if let children {
                    // The books balance: every given page belongs to exactly one child, every child is the owner's.
                    let pages = children.children.values.reduce(0) { $0 + $1.pages.count }
                    fuzzCheck(pages == children.pagesGiven, "deposited pages and children's memory disagree")
                    fuzzCheck(children.children.keys.allSatisfy { $0 >> 8 == 1 && $0 & 0xFF != 0 }, "a child id outside the owner's range")
                }
            case 4:
                let vp = UInt32(r.u8() % 3)
                let msr = op & 0x80 != 0 ? r.u32() : msrs[Int(r.u8()) % msrs.count]
                let value = op & 0x40 != 0 ? r.u64() : UInt64(r.u16()) << 12 | UInt64(r.u8() & 1)
                _ = try? rig.partition.writeMSR(vp: vp, msr, value)
            case 5:
                let vp = UInt32(r.u8() % 3)
                let msr = op & 0x80 != 0 ? r.u32() : msrs[Int(r.u8()) % msrs.count]
                fuzzConsume((try? rig.partition.readMSR(vp: vp, msr)) ?? 0)
            case 6:
                rig.takeMessages(vp: Int(r.u8()) % vpCount)
            case 7:
                // The host's side of a SynIC: event flags and messages toward a guest that may have moved its pages.
                let synic = rig.partition.synics[Int(r.u8()) % vpCount]
                if op & 0x80 != 0 {
                    fuzzConsume(UInt64(synic.signalEvent(sint: Int(r.u8() % 17), flag: Int(r.u16() % 2100)) ? 1 : 0))
                } else {
                    let payload = r.blob(limit: HvMessage.payloadCapacity)
                    let type = op & 0x40 != 0 ? HvMessageType(rawValue: r.u32()) : .vmbus
                    synic.postMessage(sint: Int(r.u8() % 16), type: type, payload: payload)
                }
                fuzzConsume(synic.messagesDelivered ^ synic.messagesDropped ^ synic.eventsSignalled ^ synic.interruptsRaised)
            case 8:
                let sel = r.u8()
                let connection = sel & 0x80 != 0 ? r.u32() : connections[Int(sel) % connections.count]
                fuzzConsume(UInt64(rig.partition.deliverSignal(connectionID: connection).rawValue))
            default:
                // A port exit with a size the guest chose (the partition's port bus has no devices: all ones).
                let port = r.u16()
                let size = Int(r.u8())
                if op & 0x80 != 0 { ports.write(port: port, size: size, value: r.u32()) } else { fuzzConsume(UInt64(ports.read(port: port, size: size))) }
            }
        }
        fuzzConsume(rig.partition.hypercalls ^ rig.partition.failedHypercalls ^ rig.server.messagesReceived ^ rig.server.malformedMessages)
    }

    /// One exit, served as the host runtime serves it.
    static func serviceVP(_ partition: Partition, ports: PortIOBus, vp: Int, block: UnsafeMutableRawPointer) {
        VPExit.serve(block, vp: vp, partition: partition, ports: ports)
        VPBlock.markCompleted(block)
    }
}
