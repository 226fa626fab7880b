// Feeds every VMBusWire decoder random, truncated and oversized bytes: typed errors only, never a trap.

import Testing
import VMBusWire

/// A small deterministic generator (SplitMix64) so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Hostile input to decoders")
struct HostileInputTests {
    static let iterations = 100_000

    /// Random bytes whose first word is `type` half the time, so decoders get past the type check.
    static func randomMessage(_ rng: inout SplitMix64, type: UInt32) -> [UInt8] {
        let length = Int(rng.next() % 261)
        var bytes = randomBytes(&rng, count: length)
        if length >= 4 && rng.next() & 1 == 0 { bytes.putLE(type, at: 0) }
        return bytes
    }

    /// `count` random bytes, eight per generator step.
    static func randomBytes(_ rng: inout SplitMix64, count: Int) -> [UInt8] {
        guard count > 0 else { return [] }  // (capacity 0 writes the shared empty storage: a TSan race)
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var i = 0
            while i < count {
                var word = rng.next()
                for _ in 0..<min(8, count - i) {
                    buffer[i] = UInt8(truncatingIfNeeded: word)
                    word >>= 8
                    i += 1
                }
            }
            initialized = count
        }
    }

    @Test("ChannelMessage decoder: 100k random inputs per message type")
    func channelMessages() {
        var rng = SplitMix64(state: 1)
        var decoded = 0, refused = 0
        for type in ChannelMessageType.allCases {
            for _ in 0..<Self.iterations {
                let bytes = Self.randomMessage(&rng, type: type.rawValue)
                do {
                    let message = try ChannelMessage(decoding: bytes)
                    decoded += 1
                    // Whatever decodes must re-encode to the same prefix it was decoded from.
                    let again = message.encode()
                    #expect(again.count <= bytes.count)
                    #expect((try? ChannelMessage(decoding: again)) == message)
                } catch {
                    refused += 1
                }
            }
        }
        #expect(decoded > 0 && refused > 0)
    }

    @Test("Every valid message truncated at every length is refused as truncated")
    func truncation() throws {
        let g = GUID(low: 1, high: 2)
        let samples: [ChannelMessage] = [
            .offerChannel(OfferChannel(interfaceType: g, interfaceInstance: g, childRelid: 1, connectionID: 1)),
            .openChannel(OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 1, targetVP: 0, downstreamRingBufferPageOffset: 2)),
            .initiateContact(InitiateContact(version: .win8, targetVCPU: 0, interruptPageOrTargetInfo: 0, monitorPage1: 0, monitorPage2: 0)),
            .versionResponse(VersionResponse(versionSupported: true, messageConnectionID: 1)),
            .gpadlCreated(GpadlCreated(childRelid: 1, gpadl: 1, creationStatus: 0)),
            .openChannelResult(OpenChannelResult(childRelid: 1, openID: 1, status: 0)),
            .gpadlTorndown(GpadlTorndown(gpadl: 1)), .rescindChannelOffer(RescindChannelOffer(childRelid: 1)),
            .modifyChannelResponse(ModifyChannelResponse(childRelid: 1, status: 0)),
        ]
        for sample in samples {
            let bytes = sample.encode()
            for cut in 0..<bytes.count {
                #expect(throws: WireError.self) { try ChannelMessage(decoding: Array(bytes[0..<cut])) }
            }
        }
        let tooLong = [UInt8](repeating: 0, count: 241)
        #expect(throws: WireError.oversized(limit: 240, got: 241)) { try ChannelMessage(decoding: tooLong) }
        #expect(throws: WireError.unknownMessageType(30)) { try ChannelMessage(decoding: [30, 0, 0, 0, 0, 0, 0, 0]) }
        #expect(throws: WireError.unknownMessageType(0)) { try ChannelMessage(decoding: [0, 0, 0, 0, 0, 0, 0, 0]) }
        // A GPADL header whose range data is not whole u64 words.
        var header = GpadlHeader(childRelid: 1, gpadl: 1, rangeBufferLength: 16, rangeCount: 1, words: [1, 2]).encode()
        header.append(0)
        #expect(throws: WireError.misalignedLength(17)) { try ChannelMessage(decoding: header) }
    }

    @Test("SynIC, hypercall and GPA decoders: 100k random inputs each")
    func fixedBlocks() {
        var rng = SplitMix64(state: 2)
        for _ in 0..<Self.iterations {
            let length = Int(rng.next() % 301)
            var bytes = Self.randomBytes(&rng, count: length)
            if length >= 16 && Bool.random(using: &rng) { bytes.putLE(UInt32.random(in: 0...260, using: &rng), at: 12) }
            if length > 4 && Bool.random(using: &rng) { bytes[4] = UInt8.random(in: 0...250, using: &rng) }
            bytes.withUnsafeBytes { raw in
                if let m = try? HvMessage(decoding: raw) { #expect(m.payload.count <= 240) }
                if let p = try? PostMessageInput(decoding: raw) { #expect(p.payload.count <= 240) }
                _ = try? SignalEventInput(decoding: raw)
                if let ranges = try? GpaDirectHeader.parse(extension: raw) {
                    for r in ranges { #expect(r.pfns.count == GpaRange.pageCount(byteCount: r.byteCount, byteOffset: r.byteOffset)) }
                }
                if let t = try? TransferPageHeader.parse(extension: raw) { #expect(8 + 8 * t.ranges.count <= raw.count) }
            }
            let words = (0..<(length / 8)).map { _ in UInt64.random(in: 0...UInt64.max, using: &rng) & (Bool.random(using: &rng) ? 0xFFF_0000_FFFF : .max) }
            if let ranges = try? GpaRange.parse(words: words, rangeCount: Int.random(in: 0...3, using: &rng)) {
                #expect(ranges.reduce(0) { $0 + 1 + $1.pfns.count } == words.count)
            }
            _ = try? SignalEventInput(fastInput: UInt64.random(in: 0...UInt64.max, using: &rng))
        }
    }
}
