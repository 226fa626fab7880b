// Target "wire-blocks": the fixed blocks a guest hands the hypervisor (SynIC slots, hypercall
// inputs), packet extensions, GPA ranges, register values, GUID and version text.

import VMBusWire

let wireBlocksTarget = FuzzTarget(
    name: "wire-blocks",
    summary: "HvMessage, PostMessageInput, SignalEventInput, GPA-direct/transfer-page extensions, GpaRange.parse, registers, GUID/version text"
) { data in
    let bytes = [UInt8](data)
    WireBlocksFuzz.blocks(bytes)
    // The fixed 256-byte blocks again with the input padded to their size.
    if bytes.count < 264 { WireBlocksFuzz.blocks(bytes + [UInt8](repeating: 0, count: 264 - bytes.count)) }
    WireBlocksFuzz.ranges(bytes)
    WireBlocksFuzz.registers(bytes)
    WireBlocksFuzz.text(bytes)
}

enum WireBlocksFuzz {
    static func blocks(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            if let m = try? HvMessage(decoding: raw) {
                fuzzCheck(m.payload.count <= HvMessage.payloadCapacity, "HvMessage payload of \(m.payload.count) bytes")
                if let image = try? m.encode() {
                    let again = image.withUnsafeBytes { try? HvMessage(decoding: $0) }
                    fuzzCheck(again == m, "HvMessage does not survive encode and decode")
                }
                fuzzConsume(UInt64(m.messageType.isHypervisorMessage ? 1 : 0))
            }
            if let p = try? PostMessageInput(decoding: raw) {
                fuzzCheck(p.payload.count <= PostMessageInput.payloadCapacity, "post payload of \(p.payload.count) bytes")
                if let block = try? p.encode() {
                    let again = block.withUnsafeBytes { try? PostMessageInput(decoding: $0) }
                    fuzzCheck(again == p, "PostMessageInput does not survive encode and decode")
                }
            }
            if let s = try? SignalEventInput(decoding: raw) {
                fuzzCheck((try? SignalEventInput(fastInput: s.fastInput)) == s, "SignalEventInput fast form differs")
            }
            if let ranges = try? GpaDirectHeader.parse(extension: raw) {
                for r in ranges {
                    fuzzCheck(r.pfns.count == GpaRange.pageCount(byteCount: r.byteCount, byteOffset: r.byteOffset),
                              "GPA range with \(r.pfns.count) PFNs for \(r.byteCount) bytes at \(r.byteOffset)")
                }
                let ext = GpaDirectHeader.extensionBytes(for: ranges)
                let again = ext.withUnsafeBytes { try? GpaDirectHeader.parse(extension: $0) }
                fuzzCheck(again == ranges, "GPA-direct extension does not survive encode and decode")
            }
            if let t = try? TransferPageHeader.parse(extension: raw) {
                fuzzCheck(8 + 8 * t.ranges.count <= raw.count, "\(t.ranges.count) transfer-page ranges in \(raw.count) bytes")
            }
            if raw.count >= PacketDescriptor.size, let base = raw.baseAddress {
                let d = PacketDescriptor(loading: base)
                fuzzConsume(UInt64(d.payloadOffset) ^ UInt64(d.length) ^ UInt64(d.completionRequested ? 1 : 0))
                _ = d.packetType
            }
        }
    }

    /// GPA ranges from the input's words, with a range count from its first byte.
    static func ranges(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let body = Array(bytes.dropFirst())
        let words = (0..<(body.count / 8)).map { body.le(UInt64.self, at: 8 * $0) }
        if let ranges = try? GpaRange.parse(words: words, rangeCount: Int(first % 8)) {
            fuzzCheck(ranges.reduce(0) { $0 + 1 + $1.pfns.count } == words.count, "GPA ranges do not cover the words")
            fuzzCheck(ranges.flatMap(\.words) == words, "GPA ranges do not re-encode to their words")
        }
    }

    /// Register and hypercall values decoded from the first words.
    static func registers(_ bytes: [UInt8]) {
        var r = FuzzReader(bytes: bytes)
        let raw = r.u64()
        let control = HypercallControl(rawValue: raw)
        fuzzConsume(UInt64(control.code) ^ UInt64(control.repCount) ^ UInt64(control.repStartIndex) ^ UInt64(control.variableHeaderSize))
        fuzzConsume(UInt64(control.isFast ? 1 : 0) ^ UInt64(control.isNested ? 2 : 0) ^ UInt64(control.hasReservedBits ? 4 : 0))
        _ = HypercallCode(rawValue: control.code)
        let rebuilt = HypercallControl(code: control.code, fast: control.isFast, variableHeaderSize: control.variableHeaderSize,
                                       nested: control.isNested, repCount: control.repCount, repStartIndex: control.repStartIndex)
        fuzzCheck(rebuilt.rawValue == raw & ~HypercallControl.reservedMask, "hypercall control fields do not rebuild the value")
        let result = HypercallResult(rawValue: r.u64())
        fuzzConsume(result.status.description)
        fuzzConsume(UInt64(result.repsCompleted))
        _ = try? SignalEventInput(fastInput: r.u64())
        let sint = SintRegister(rawValue: r.u64())
        fuzzConsume(UInt64(sint.vector) ^ UInt64(sint.hasValidVector ? 1 : 0) ^ UInt64(sint.masked ? 2 : 0))
        let page = SynICPageRegister(rawValue: r.u64())
        fuzzConsume(page.gpa ^ page.pageNumber)
        let hypercall = HypercallMSRRegister(rawValue: r.u64())
        fuzzConsume(UInt64(hypercall.hasReservedBits ? 1 : 0) ^ hypercall.pageNumber)
        let os = GuestOSID(rawValue: r.u64())
        fuzzConsume(UInt64(os.osType) ^ UInt64(os.kernelVersion) ^ UInt64(os.distro) ^ UInt64(os.isOpenSource ? 1 : 0))
        let version = VMBusVersion(rawValue: r.u32())
        fuzzConsume(version.linuxName + version.description)
    }

    /// GUID and version text: whatever parses prints back to text that parses to the same value.
    static func text(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        if let guid = try? GUID(text) {
            fuzzCheck((try? GUID(guid.description)) == guid, "GUID text does not survive printing")
            fuzzCheck((try? GUID(wireBytes: guid.wireBytes)) == guid, "GUID wire bytes do not survive")
        }
        if let version = try? VMBusVersion(parsing: text) {
            fuzzCheck((try? VMBusVersion(parsing: version.description)) == version, "version text does not survive printing")
        }
        if bytes.count >= 16, let guid = try? GUID(wireBytes: bytes.prefix(16)) {
            fuzzCheck(guid.wireBytes == Array(bytes.prefix(16)), "GUID wire bytes differ")
            fuzzConsume(guid.description)
        }
    }
}
