// Pins VMBusWire's constants, sizes and field offsets to the values in shared/spec/vmbus-core.md.

import Testing
import VMBusWire

@Suite("Known vectors from the VMBus fact sheet")
struct KnownVectorTests {
    @Test("Device class GUIDs encode to the spec's wire bytes")
    func deviceClassWireBytes() throws {
        let table: [(DeviceClass, String)] = [
            (.network, "63 51 61 f8 3e df c5 46 91 3f f2 d2 f9 65 ed 0e"),
            (.ide, "32 26 41 32 cb 86 a2 44 9b 5c 50 d1 41 73 54 f5"),
            (.scsi, "d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1 dc 7f"),
            (.fibreChannel, "4a cc 9b 2f 69 00 f3 4a b7 6b 6f d0 be 52 8c da"),
            (.networkDirect, "3d af 2e 8c a7 32 09 4b ab 99 bd 1f 1c 86 b5 01"),
            (.pcie, "1d f6 c4 44 44 44 00 44 9d 52 80 2e 27 ed e1 9f"),
            (.video, "02 78 0a da 77 e3 ac 4a 8e 77 05 58 eb 10 73 f8"),
            (.keyboard, "6d ad 12 f9 17 2b ea 48 bd 65 f9 27 a6 1c 76 84"),
            (.mouse, "9e b6 a8 cf 4a 5b c0 4c b9 8b 8b a1 a1 f3 f9 5a"),
            (.kvp, "e7 f4 a0 a9 45 5a 96 4d b8 27 8a 84 1e 8c 03 e6"),
            (.timeSync, "30 e6 27 95 ae d0 7b 49 ad ce e8 0a b0 17 5c af"),
            (.heartbeat, "39 4f 16 57 15 91 78 4e ab 55 38 2f 3b d5 42 2d"),
            (.shutdown, "31 60 0b 0e 13 52 34 49 81 8b 38 d9 0c ed 39 db"),
            (.fileCopy, "e3 4b d1 34 e4 de c8 41 9a e7 6b 17 49 77 c1 92"),
            (.vss, "29 2e fa 35 23 ea 36 42 96 ae 3a 6e ba cb a4 40"),
            (.dynamicMemory, "dc 74 50 52 85 89 e2 46 80 57 a3 07 dc 18 a5 02"),
            (.avma1, "16 57 e6 f8 b3 3c 06 4a 9a 60 18 89 c5 cc ca b5"),
            (.avma2, "f4 ba 75 33 15 9e 30 4b b7 65 67 ac b1 0d 60 7b"),
            (.remoteDesktop, "f4 ac 6a 27 15 ac 6c 42 98 dd 75 21 ad 3f 01 fe"),
            (.initialMachineConfiguration, "c3 c1 76 c3 76 d2 d2 48 90 a9 c0 47 48 07 2c 60"),
        ]
        for (deviceClass, hex) in table {
            let expected = hex.split(separator: " ").map { UInt8($0, radix: 16)! }
            #expect(deviceClass.guid.wireBytes == expected, "\(deviceClass.name)")
            #expect(try GUID(wireBytes: expected) == deviceClass.guid)
            #expect(try GUID(deviceClass.guid.description) == deviceClass.guid)
        }
        // The spec's worked example of the byte rule.
        let service = try GUID("628180B8-308D-4C5E-B7DB-1BEB62E62EF4")
        #expect(service.wireBytes == [0xb8, 0x80, 0x81, 0x62, 0x8d, 0x30, 0x5e, 0x4c, 0xb7, 0xdb, 0x1b, 0xeb, 0x62, 0xe6, 0x2e, 0xf4])
        #expect(service.description == "628180b8-308d-4c5e-b7db-1beb62e62ef4")
        #expect(throws: WireError.self) { try GUID("not-a-guid") }
        #expect(throws: WireError.self) { try GUID("628180B8-308D-4C5E-B7DB-1BEB62E62EFZ") }
    }

    @Test("Protocol versions have their encoded values")
    func versions() {
        let expected: [(VMBusVersion, UInt32)] = [
            (.ws2008, 0x0000_000D), (.win7, 0x0001_0001), (.win8, 0x0002_0004), (.win8_1, 0x0003_0000),
            (.win10, 0x0004_0000), (.win10_v4_1, 0x0004_0001), (.win10_v5, 0x0005_0000),
            (.win10_v5_1, 0x0005_0001), (.win10_v5_2, 0x0005_0002), (.win10_v5_3, 0x0005_0003),
        ]
        for (v, raw) in expected { #expect(v.rawValue == raw) }
        #expect(VMBusVersion.all.count == 10)
        #expect(VMBusVersion.linuxPreference.first == .win10_v5_3 && VMBusVersion.linuxPreference.last == .win8)
        #expect(VMBusVersion.win8.description == "2.4" && VMBusVersion.ws2008.description == "0.13")
    }

    @Test("Hypercall control, result and input blocks")
    func hypercallABI() throws {
        #expect(HypercallCode.postMessage.rawValue == 0x5C && HypercallCode.signalEvent.rawValue == 0x5D)
        #expect(HypercallCode.postMessageDirect.rawValue == 0xC1 && HypercallCode.signalEventDirect.rawValue == 0xC0)
        // Linux's fast SignalEvent control value.
        #expect(HypercallControl(.signalEvent, fast: true).rawValue == 0x1005D)
        let c = HypercallControl(code: 0x5C, fast: true, variableHeaderSize: 3, nested: true, repCount: 0xABC, repStartIndex: 0x123)
        #expect(c.rawValue == 0x5C | 1 << 16 | 3 << 17 | 1 << 31 | 0xABC << 32 | 0x123 << 48)
        #expect(c.code == 0x5C && c.isFast && c.variableHeaderSize == 3 && c.isNested && c.repCount == 0xABC && c.repStartIndex == 0x123)
        #expect(!c.hasReservedBits && HypercallControl(rawValue: 1 << 27).hasReservedBits)
        let r = HypercallResult(status: .invalidConnectionID, repsCompleted: 7)
        #expect(r.rawValue == 0x12 | 7 << 32 && r.status == .invalidConnectionID && r.repsCompleted == 7)

        let post = try PostMessageInput(connectionID: 4, payload: [1, 2, 3]).encode()
        #expect(post.count == 256)
        #expect(Array(post[0..<16]) == [4, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0])
        #expect(Array(post[16..<19]) == [1, 2, 3])
        let signal = SignalEventInput(connectionID: 0x2005, flagNumber: 0)
        #expect(signal.fastInput == 0x2005)
        #expect(try SignalEventInput(fastInput: 0x0000_0003_0000_2005) == SignalEventInput(connectionID: 0x2005, flagNumber: 3))
        #expect(throws: WireError.reservedNonZero("connection_id")) { try SignalEventInput(fastInput: 0x0100_0000) }
        #expect(throws: WireError.reservedNonZero("reserved")) { try SignalEventInput(fastInput: 0x0001_0000_0000_0001) }
    }

    @Test("SynIC register bits, MSR numbers and page layouts")
    func synic() {
        #expect(HvMSR.guestOSID == 0x4000_0000 && HvMSR.hypercall == 0x4000_0001 && HvMSR.vpIndex == 0x4000_0002)
        #expect(HvMSR.scontrol == 0x4000_0080 && HvMSR.siefp == 0x4000_0082 && HvMSR.simp == 0x4000_0083)
        #expect(HvMSR.eom == 0x4000_0084 && HvMSR.sint(2) == 0x4000_0092 && HvMSR.sint(15) == 0x4000_009F)
        let sint = SintRegister(vector: 0xF3, masked: true, autoEOI: true, polling: true, asIntercept: true, proxy: true)
        #expect(sint.rawValue == 0xF3 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19 | 1 << 20)
        #expect(SintRegister.reset.masked && SintRegister.reset.vector == 0)
        #expect(SynICPageRegister(enabled: true, pageNumber: 0x1234).rawValue == 0x1234_001)
        #expect(SynICPageRegister(rawValue: 0x5000_0001).gpa == 0x5000_0000)
        #expect(SControlRegister(enabled: true).rawValue == 1)
        #expect(HypercallMSRRegister(enabled: true, locked: true, pageNumber: 0x42).rawValue == 0x42_003)
        #expect(HypercallMSRRegister(rawValue: 0x4).hasReservedBits)
        #expect(HypercallMSRRegister.intelStub == [0x0F, 0x01, 0xC1, 0xC3])
        #expect(GuestOSID.linux(kernelVersion: 0x0006_0100).rawValue >> 48 == 0x8100)
        #expect(SynICLayout.messageSlotOffset(sint: 2) == 0x200 && SynICLayout.eventFlagsOffset(sint: 2) == 0x200)
        #expect(HvMessageType.timerExpired.rawValue == 0x8000_0010 && HvMessageType.x64Halt.rawValue == 0x8001_0007)
    }

    @Test("hv_message header offsets")
    func hvMessage() throws {
        let m = HvMessage(messageType: .vmbus, messagePending: true, sender: 0x1122_3344_5566_7788, payload: [9, 8, 7])
        let b = try m.encode()
        #expect(b.count == 256)
        #expect(Array(b[0..<16]) == [1, 0, 0, 0, 3, 1, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(b[16..<19]) == [9, 8, 7])
        let back = try b.withUnsafeBytes { try HvMessage(decoding: $0) }
        #expect(back == m)
        var big = b
        big[4] = 241
        #expect(throws: WireError.oversized(limit: 240, got: 241)) { try big.withUnsafeBytes { try HvMessage(decoding: $0) } }
    }

    @Test("Channel message sizes and type numbers")
    func messageSizes() throws {
        let g = GUID(low: 0x0102_0304_0506_0708, high: 0x1112_1314_1516_1718)
        let cases: [(ChannelMessage, UInt32, Int)] = [
            (.offerChannel(OfferChannel(interfaceType: g, interfaceInstance: g, childRelid: 1, connectionID: 1)), 1, 196),
            (.rescindChannelOffer(RescindChannelOffer(childRelid: 1)), 2, 12),
            (.requestOffers(RequestOffers()), 3, 8),
            (.allOffersDelivered(AllOffersDelivered()), 4, 8),
            (.openChannel(OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 1, targetVP: 0, downstreamRingBufferPageOffset: 2)), 5, 148),
            (.openChannel(OpenChannel(childRelid: 1, openID: 1, ringBufferGPADL: 1, targetVP: 0, downstreamRingBufferPageOffset: 2,
                                      extended: .init(connectionID: 1, eventFlag: 2, flags: 1))), 5, 156),
            (.openChannelResult(OpenChannelResult(childRelid: 1, openID: 1, status: 0)), 6, 20),
            (.closeChannel(CloseChannel(childRelid: 1)), 7, 12),
            (.gpadlHeader(GpadlHeader(childRelid: 1, gpadl: 2, rangeBufferLength: 16, rangeCount: 1, words: [4096, 5])), 8, 36),
            (.gpadlBody(GpadlBody(gpadl: 2, words: [1, 2, 3])), 9, 40),
            (.gpadlCreated(GpadlCreated(childRelid: 1, gpadl: 2, creationStatus: 0)), 10, 20),
            (.gpadlTeardown(GpadlTeardown(childRelid: 1, gpadl: 2)), 11, 16),
            (.gpadlTorndown(GpadlTorndown(gpadl: 2)), 12, 12),
            (.relidReleased(RelidReleased(childRelid: 1)), 13, 12),
            (.initiateContact(InitiateContact(version: .win10_v5_3, targetVCPU: 0, interruptPageOrTargetInfo: 2, monitorPage1: 0, monitorPage2: 0)), 14, 40),
            (.initiateContact(InitiateContact(version: .win10_v5_3, targetVCPU: 0, interruptPageOrTargetInfo: 2, monitorPage1: 0, monitorPage2: 0, clientID: g)), 14, 56),
            (.versionResponse(VersionResponse(versionSupported: true, messageConnectionID: 1)), 15, 16),
            (.versionResponse(VersionResponse(versionSupported: true, messageConnectionID: 1, supportedFeatures: 0x10)), 15, 20),
            (.versionResponse(VersionResponse(versionSupported: true, messageConnectionID: 1, supportedFeatures: 0,
                                              monitorPages: .init(parentToChild: 0x1000, childToParent: 0x2000))), 15, 40),
            (.unload(Unload()), 16, 8),
            (.unloadResponse(UnloadResponse()), 17, 8),
            (.tlConnectRequest(TLConnectRequest(guestEndpointID: g, hostServiceID: g)), 21, 40),
            (.tlConnectRequest(TLConnectRequest(guestEndpointID: g, hostServiceID: g, siloID: g)), 21, 56),
            (.modifyChannel(ModifyChannel(childRelid: 1, targetVP: 3)), 22, 16),
            (.tlConnectResult(TLConnectResult(endpointID: g, serviceID: g, status: -1)), 23, 44),
            (.modifyChannelResponse(ModifyChannelResponse(childRelid: 1, status: 0)), 24, 16),
        ]
        for (message, type, size) in cases {
            let bytes = message.encode()
            #expect(bytes.count == size, "\(message.type)")
            #expect(bytes.le(UInt32.self, at: 0) == type && bytes.le(UInt32.self, at: 4) == 0)
            #expect(message.type.rawValue == type)
            #expect(try ChannelMessage(decoding: bytes) == message, "\(message.type) round trip")
        }
    }

    @Test("OFFERCHANNEL field offsets")
    func offerOffsets() throws {
        let offer = OfferChannel(
            interfaceType: DeviceClass.scsi.guid, interfaceInstance: try GUID("00000000-0000-0000-0000-000000000001"),
            flags: [.enumerateDeviceInterface, .namedPipeMode], mmioMegabytes: 0x1234, userDefined: [0xAA, 0xBB],
            subChannelIndex: 5, mmioMegabytesOptional: 0x77, childRelid: 0x2A, monitorID: 0x11, monitorAllocated: true,
            isDedicatedInterrupt: true, connectionID: 0x202A)
        let b = offer.encode()
        #expect(Array(b[8..<24]) == DeviceClass.scsi.guid.wireBytes)
        #expect(b[39] == 1)
        #expect(b.le(UInt64.self, at: 40) == 0 && b.le(UInt64.self, at: 48) == 0)
        #expect(b.le(UInt16.self, at: 56) == 0x11 && b.le(UInt16.self, at: 58) == 0x1234)
        #expect(b[60] == 0xAA && b[61] == 0xBB && b[179] == 0)
        #expect(b.le(UInt16.self, at: 180) == 5 && b.le(UInt16.self, at: 182) == 0x77)
        #expect(b.le(UInt32.self, at: 184) == 0x2A && b[188] == 0x11 && b[189] == 1)
        #expect(b.le(UInt16.self, at: 190) == 1 && b.le(UInt32.self, at: 192) == 0x202A)
        var zeroRelid = b
        zeroRelid.putLE(UInt32(0), at: 184)
        #expect(throws: WireError.invalidField("child_relid", 0)) { try OfferChannel(decoding: zeroRelid) }
        zeroRelid.putLE(UInt32(2048), at: 184)
        #expect(throws: WireError.invalidField("child_relid", 2048)) { try OfferChannel(decoding: zeroRelid) }
    }

    @Test("INITIATE_CONTACT, VERSION_RESPONSE and OPENCHANNEL field offsets")
    func connectionOffsets() throws {
        let v5 = InitiateContact(version: .win10_v5_2, targetVCPU: 3, interruptPage: 0xDEAD_0000, messageSINT: 2,
                                 messageVTL: 1, monitorPage1: 0x10_0000, monitorPage2: 0x10_1000).encode()
        #expect(v5.le(UInt32.self, at: 8) == 0x0005_0002 && v5.le(UInt32.self, at: 12) == 3)
        #expect(v5[16] == 2 && v5[17] == 1 && v5.le(UInt16.self, at: 18) == 0 && v5.le(UInt32.self, at: 20) == 0)
        #expect(v5.le(UInt64.self, at: 24) == 0x10_0000 && v5.le(UInt64.self, at: 32) == 0x10_1000)
        let v4 = InitiateContact(version: .win10, targetVCPU: 0, interruptPage: 0xDEAD_0000, monitorPage1: 0, monitorPage2: 0).encode()
        #expect(v4.le(UInt64.self, at: 16) == 0xDEAD_0000)

        let response = VersionResponse(versionSupported: true, connectionState: .failedLowResources, messageConnectionID: 0x1234).encode()
        #expect(response == [15, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0x34, 0x12, 0, 0])

        let open = OpenChannel(childRelid: 7, openID: 8, ringBufferGPADL: 0xE1E10, targetVP: 2, downstreamRingBufferPageOffset: 256,
                               userData: [0x55]).encode()
        #expect(open.le(UInt32.self, at: 8) == 7 && open.le(UInt32.self, at: 12) == 8 && open.le(UInt32.self, at: 16) == 0xE1E10)
        #expect(open.le(UInt32.self, at: 20) == 2 && open.le(UInt32.self, at: 24) == 256 && open[28] == 0x55 && open[147] == 0)
    }

    @Test("GPADL messages split like Linux: 26 PFNs in the header, 28 per body")
    func gpadlSplit() throws {
        #expect(GpadlHeader.maximumWords == 27 && GpadlBody.maximumWords == 28)
        // A 2 MiB ring: 512 pages → header (26 PFNs) + ⌈486 / 28⌉ = 18 bodies.
        let pfns = (0..<512).map { UInt64(0x1000 + $0) }
        let range = GpaRange(byteCount: 512 * 4096, byteOffset: 0, pfns: pfns)
        let messages = try GpadlMessages.split(childRelid: 3, gpadl: 0xE1E10, ranges: [range])
        #expect(messages.count == 19)
        let header = messages[0].encode()
        #expect(header.count == 236)
        #expect(header.le(UInt16.self, at: 16) == UInt16(8 + 8 * 512) && header.le(UInt16.self, at: 18) == 1)
        #expect(header.le(UInt32.self, at: 20) == 512 * 4096 && header.le(UInt32.self, at: 24) == 0)
        #expect(header.le(UInt64.self, at: 28) == 0x1000)
        for body in messages[1..<18] { #expect(body.encode().count == 240) }
        #expect(messages[18].encode().count == 16 + 8 * (486 - 17 * 28))
        var words: [UInt64] = []
        for m in messages {
            switch m {
            case .gpadlHeader(let h): words += h.words
            case .gpadlBody(let b): words += b.words
            default: Issue.record("unexpected \(m.type)")
            }
        }
        #expect(try GpaRange.parse(words: words, rangeCount: 1) == [range])
        // Small GPADLs fit one header of 28 + 8·n bytes.
        let small = try GpadlMessages.split(childRelid: 3, gpadl: 1, ranges: [GpaRange(byteCount: 8192, byteOffset: 0, pfns: [1, 2])])
        #expect(small.count == 1 && small[0].encode().count == 28 + 16)
    }

    @Test("GPA range validation")
    func gpaRanges() {
        #expect(GpaRange.pageCount(byteCount: 1, byteOffset: 4095) == 1)
        #expect(GpaRange.pageCount(byteCount: 2, byteOffset: 4095) == 2)
        #expect(throws: WireError.invalidField("byte_count", 0)) { try GpaRange.parse(words: [0 | 0 << 32, 1], rangeCount: 1) }
        #expect(throws: WireError.invalidField("byte_offset", 4096)) { try GpaRange.parse(words: [1 | 4096 << 32, 1], rangeCount: 1) }
        #expect(throws: WireError.self) { try GpaRange.parse(words: [8192], rangeCount: 1) }
        #expect(throws: WireError.self) { try GpaRange.parse(words: [4096, 1, 99], rangeCount: 1) }
    }
}
