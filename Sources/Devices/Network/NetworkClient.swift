// The synthetic network adapter, guest end: NVSP and RNDIS initialization, frames out by section or GPA pages, frames in.

import GuestMemory
import Logging
import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

/// netvsc in user space. Negotiates NVSP (Linux's version order), hands the host a receive and a
/// send buffer, initializes RNDIS with the OIDs Linux uses, then moves frames: small ones copied
/// into a send-buffer section and sent in-band, large ones by GPA-direct page ranges straight from
/// a transmit slot; received frames are handed to `onFrame` in place in the receive buffer.
/// Every method runs with the bus locked.
public final class NetworkClient {
    /// Where initialization is.
    public enum State: Equatable, Sendable {
        case initializing
        case ready
        case failed(String)
    }

    public let channel: ClientChannel
    let bus: VMBusClient
    let logger: Logger
    public private(set) var state = State.initializing
    public private(set) var version: UInt32 = 0
    public private(set) var mac: [UInt8] = []
    public private(set) var mtu = 1500
    /// MTUs the client accepts from the host (Linux's netvsc range is 68 … 65521).
    public static let mtuRange = 68...65521
    public private(set) var linkUp = true
    public private(set) var offloadCapabilities: [UInt8] = []
    /// Link changes the host indicated.
    public var onLinkChange: ((Bool) -> Void)?
    /// A received frame, valid during the call, with its per-packet info and the queue it came on.
    public var onFrame: ((UnsafeRawBufferPointer, PacketInfo, Int) -> Void)?
    /// A transmit slot or send section came back: room to send again.
    public var onTransmitRoom: (() -> Void)?

    /// Queues wanted (primary + sub-channels), as Linux asks for one per VP.
    public let requestedQueues: Int
    /// Sub-channels the host granted (offered after the SUBCHANNEL completion).
    public private(set) var grantedSubChannels = 0
    /// Open sub-channels carrying data beside the primary, queue 1, 2, ….
    public private(set) var subChannels: [ClientChannel] = []
    public var queueCount: Int { 1 + subChannels.count }

    private var versionsToTry = NVSPVersion.linuxPreference
    private var pendingRequests: [UInt32: (RNDISControlMessage) -> Void] = [:]
    private var nextRequestID: UInt32 = 1

    // Buffers in guest memory.
    let receivePages: Int
    private var receiveFirstPage: UInt64 = 0
    private var receiveBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var receiveGPADL: UInt32 = 0
    let sendPages: Int
    private var sendFirstPage: UInt64 = 0
    private var sendBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var sendGPADL: UInt32 = 0
    private var sectionSize = 0
    private var freeSections: [UInt32] = []
    private var sectionBusy: [Bool] = []
    private var controlPage: UInt64 = 0
    private var controlBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    /// Transmit slots: contiguous guest pages a frame is read into, headroom first.
    public static let slotHeadroom = 256
    public static let slotBytes = 17 * 4096 + slotHeadroom
    public let slotCount: Int
    private var slotFirstPage: UInt64 = 0
    private var slotMemory = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var freeSlotList: [Int] = []
    private var slotBusy: [Bool] = []
    private var slotPages: Int { (Self.slotBytes + 4095) / 4096 }

    public private(set) var counters = NetworkCounters()
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
    /// The SEND_RNDIS_PKT payload and GPA-direct extension of the frame being sent, reused: the
    /// transmit path allocates nothing per frame.
    private let packetScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: NVSPMessage.size, alignment: 8)
    private let extensionScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 + 16 * 40, alignment: 8)

    /// Transaction ids: control packets, sections and slots are told apart by the top bits.
    static let controlTag: UInt64 = 1 << 62
    static let sectionTag: UInt64 = 2 << 62
    static let slotTag: UInt64 = 3 << 62

    /// `channel` must be open. Allocates the buffers and starts initialization at once.
    public init(channel: ClientChannel, bus: VMBusClient, receiveBufferBytes: Int = 16 << 20, sendBufferBytes: Int = 170 * 6144,
                transmitSlots: Int = 64, queues: Int = 1, versions: [UInt32] = NVSPVersion.linuxPreference,
                logger: Logger) throws(ClientError) {
        self.channel = channel
        requestedQueues = max(1, queues)
        versionsToTry = versions
        self.bus = bus
        self.logger = logger
        receivePages = (receiveBufferBytes + 4095) / 4096
        sendPages = (sendBufferBytes + 4095) / 4096
        slotCount = transmitSlots
        func map(_ first: UInt64, _ pages: Int) throws(ClientError) -> UnsafeMutableRawBufferPointer {
            do { return try bus.pool.buffer(page: first, count: pages << 12) } catch { throw .memory(error) }
        }
        receiveFirstPage = try bus.allocatePages(receivePages)
        receiveBuffer = try map(receiveFirstPage, receivePages)
        sendFirstPage = try bus.allocatePages(sendPages)
        sendBuffer = try map(sendFirstPage, sendPages)
        controlPage = try bus.allocatePages(1)
        controlBuffer = try map(controlPage, 1)
        slotFirstPage = try bus.allocatePages(slotPages * transmitSlots)
        slotMemory = try map(slotFirstPage, slotPages * transmitSlots)
        freeSlotList = Array((0..<transmitSlots).reversed())
        slotBusy = [Bool](repeating: false, count: transmitSlots)
        channel.onSignal = { [weak self] in self?.drain($0) }
        negotiate()
    }

    deinit {
        scratch.deallocate()
        packetScratch.deallocate()
        extensionScratch.deallocate()
    }

    private func fail(_ why: String) {
        state = .failed(why)
        logger.error("netvsc: \(why)")
    }

    // MARK: Initialization

    private var pendingNVSP: [UInt64: (NVSPMessage?) -> Void] = [:]
    private var nextNVSP: UInt64 = 1

    /// Sends an NVSP message in-band; `completion` (if any) gets the host's completion message.
    @discardableResult
    private func sendNVSP(_ m: NVSPMessage, completion: ((NVSPMessage?) -> Void)? = nil) -> Bool {
        guard let endpoint = channel.endpoint else { return false }
        let id = nextNVSP
        let ok = (try? endpoint.writer.tryWrite(type: .dataInBand, flags: completion == nil ? 0 : PacketDescriptor.flagCompletionRequested,
                                                transactionID: completion == nil ? 0xFFFF_FFFF_FFFF_FFFD : id, payload: m.bytes)) ?? false
        guard ok else { return false }
        if let completion {
            pendingNVSP[id] = completion
            nextNVSP += 1
        }
        endpoint.commitWrites()
        return true
    }

    private func negotiate() {
        guard !versionsToTry.isEmpty else { return fail("the host accepts none of the NVSP versions") }
        let v = versionsToTry.removeFirst()
        var m = NVSPMessage(.initialize)
        m.set(NVSPField.minVersion, v)
        m.set(NVSPField.maxVersion, v)
        sendNVSP(m) { [weak self] reply in
            guard let self else { return }
            guard let reply, reply.type == .initializeComplete, reply.u32(NVSPField.initStatus) == NVSPStatus.success else { return negotiate() }
            version = v
            configure()
        }
    }

    private func configure() {
        if version >= NVSPVersion.v2 {
            var config = NVSPMessage(.sendNDISConfig)
            config.set(NVSPField.configMTU, UInt32(mtu + 14))
            config.set64(NVSPField.configCapabilities, 1 << 3)  // IEEE 802.1Q
            sendNVSP(config)
        }
        var ndis = NVSPMessage(.sendNDISVersion)
        ndis.set(NVSPField.ndisMajor, 6)
        ndis.set(NVSPField.ndisMinor, version <= NVSPVersion.v4 ? 1 : 30)
        sendNVSP(ndis)
        do {
            try bus.createGPADL(for: channel, firstPage: receiveFirstPage, pages: receivePages) { [weak self] handle in
                guard let self else { return }
                guard let handle else { return fail("receive buffer GPADL refused") }
                receiveGPADL = handle
                var m = NVSPMessage(.sendReceiveBuffer)
                m.set(NVSPField.gpadlHandle, handle)
                m.set16(NVSPField.bufferID, NVSPMessage.receiveBufferID)
                sendNVSP(m) { [weak self] reply in self?.receiveBufferAttached(reply) }
            }
        } catch {
            fail("receive buffer: \(error)")
        }
    }

    private func receiveBufferAttached(_ reply: NVSPMessage?) {
        guard let reply, reply.type == .sendReceiveBufferComplete, reply.u32(NVSPField.status) == NVSPStatus.success,
            reply.u32(NVSPField.sectionCount) == 1, reply.u32(NVSPField.sectionOffset) == 0,
            reply.u32(NVSPField.subAllocationSize) >= 68,
            UInt64(reply.u32(NVSPField.subAllocationSize)) * UInt64(reply.u32(NVSPField.subAllocationCount)) <= UInt64(receiveBuffer.count)
        else { return fail("SEND_RECV_BUF refused") }
        do {
            try bus.createGPADL(for: channel, firstPage: sendFirstPage, pages: sendPages) { [weak self] handle in
                guard let self else { return }
                guard let handle else { return fail("send buffer GPADL refused") }
                sendGPADL = handle
                var m = NVSPMessage(.sendSendBuffer)
                m.set(NVSPField.gpadlHandle, handle)
                m.set16(NVSPField.bufferID, NVSPMessage.sendBufferID)
                sendNVSP(m) { [weak self] reply in self?.sendBufferAttached(reply) }
            }
        } catch {
            fail("send buffer: \(error)")
        }
    }

    private func sendBufferAttached(_ reply: NVSPMessage?) {
        guard let reply, reply.type == .sendSendBufferComplete, reply.u32(NVSPField.status) == NVSPStatus.success,
            reply.u32(NVSPField.sendSectionSize) >= 68
        else { return fail("SEND_SEND_BUF refused") }
        sectionSize = Int(reply.u32(NVSPField.sendSectionSize))
        freeSections = Array((0..<UInt32(sendBuffer.count / sectionSize)).reversed())
        sectionBusy = [Bool](repeating: false, count: freeSections.count)
        rndisRequest(RNDIS.initialize(requestID: 0)) { [weak self] reply in
            guard let self else { return }
            guard reply.type == RNDISMessageType.initializeComplete, reply.u32(4) == RNDISStatus.success else { return fail("RNDIS INITIALIZE refused") }
            query(OID.maximumFrameSize) { [weak self] info in
                guard let self else { return }
                if let info, info.count >= 4 {
                    // What a TAP and an LSO segment size can take (it used to trap at 2^31 in Int32(_:)).
                    let reported = Int(info.le(UInt32.self, at: 0))
                    guard Self.mtuRange.contains(reported) else { return fail("the host's MTU \(reported) is outside \(Self.mtuRange)") }
                    mtu = reported
                }
                query(OID.permanentAddress) { [weak self] info in
                    guard let self else { return }
                    guard let info, info.count == 6 else { return fail("no permanent MAC address") }
                    mac = info
                    queryOffloads()
                }
            }
        }
    }

    private func queryOffloads() {
        query(OID.offloadHardwareCapabilities) { [weak self] info in
            guard let self else { return }
            guard let info, NDISOffload.isValid(info) else { return fail("offload capabilities missing or invalid") }
            offloadCapabilities = info
            var p = NDISOffloadParameters()
            p.ipv4Checksum = NDISOffloadParameters.disabled
            p.tcp4Checksum = NDISOffloadParameters.checksumTXRX
            p.tcp6Checksum = NDISOffloadParameters.checksumTXRX
            p.udp4Checksum = NDISOffloadParameters.checksumTXRX
            p.udp6Checksum = NDISOffloadParameters.checksumTXRX
            p.lsoV2IPv4 = NDISOffloadParameters.enabled
            p.lsoV2IPv6 = NDISOffloadParameters.enabled
            if info.count >= 146, info[144] != 0, info[145] != 0 {
                p.rscIPv4 = NDISOffloadParameters.enabled
                p.rscIPv6 = NDISOffloadParameters.enabled
            }
            set(OID.offloadParameters, p.encode(nvsp: version)) { [weak self] ok in
                guard let self else { return }
                guard ok else { return fail("offload parameters refused") }
                query(OID.mediaConnectStatus) { [weak self] info in
                    guard let self else { return }
                    if let info, info.count >= 4 { linkUp = info.le(UInt32.self, at: 0) == 0 }
                    set(OID.currentPacketFilter, RNDIS.words([0x0D])) { [weak self] ok in
                        guard let self else { return }
                        guard ok else { return fail("packet filter refused") }
                        askForSubChannels()
                    }
                }
            }
        }
    }

    /// Multi-queue (NVSP ≥ 5): RSS capabilities, then SUBCHANNEL ALLOCATE for one queue per VP.
    private func askForSubChannels() {
        guard version >= NVSPVersion.v5, requestedQueues > 1 else { return becomeReady() }
        query(OID.receiveScaleCapabilities) { [weak self] info in
            guard let self else { return }
            guard let info, info.count >= 18, info[0] == NDISReceiveScale.capabilitiesType else { return becomeReady() }
            let offered = Int(info.le(UInt32.self, at: 12))
            let wanted = min(requestedQueues, offered) - 1
            guard wanted >= 1 else { return becomeReady() }
            var m = NVSPMessage(.subChannel)
            m.set(NVSPField.subChannelOperation, 1)
            m.set(NVSPField.subChannelCount, UInt32(wanted))
            sendNVSP(m) { [weak self] reply in
                guard let self else { return }
                if let reply, reply.type == .subChannel, reply.u32(NVSPField.status) == NVSPStatus.success {
                    grantedSubChannels = min(Int(reply.u32(NVSPField.subChannelCount)), wanted)
                }
                becomeReady()
            }
        }
    }

    private func becomeReady() {
        state = .ready
        logger.info("netvsc: NVSP 0x\(String(version, radix: 16)), MAC \(MACAddress.format(mac)), MTU \(mtu), link \(linkUp ? "up" : "down"), \(grantedSubChannels) sub-channel(s)")
    }

    /// Adds an open sub-channel (same instance, index ≥ 1) as the next queue.
    public func addSubChannel(_ sub: ClientChannel) {
        guard sub.state == .open, sub.offer.interfaceInstance == channel.offer.interfaceInstance, sub.offer.subChannelIndex > 0 else { return }
        sub.onSignal = { [weak self] in self?.drain($0) }
        subChannels.append(sub)
    }

    /// Spreads receive traffic over every queue (Linux sends RSS disabled, then enabled).
    public func enableReceiveScaling() {
        guard !subChannels.isEmpty else { return }
        set(OID.receiveScaleParameters, NDISReceiveScale.parameters(queues: queueCount, disable: true)) { [weak self] _ in
            guard let self else { return }
            set(OID.receiveScaleParameters, NDISReceiveScale.parameters(queues: queueCount, disable: false)) { _ in }
        }
    }

    private func endpoint(queue: Int) -> ChannelEndpoint? {
        queue == 0 ? channel.endpoint : queue <= subChannels.count ? subChannels[queue - 1].endpoint : nil
    }

    private func query(_ oid: UInt32, _ done: @escaping ([UInt8]?) -> Void) {
        rndisRequest(RNDIS.request(type: RNDISMessageType.query, requestID: 0, oid: oid)) { reply in
            guard reply.type == RNDISMessageType.queryComplete, reply.u32(4) == RNDISStatus.success else { return done(nil) }
            done(reply.buffer(lengthAt: 8, offsetAt: 12))
        }
    }

    private func set(_ oid: UInt32, _ info: [UInt8], _ done: @escaping (Bool) -> Void) {
        rndisRequest(RNDIS.request(type: RNDISMessageType.set, requestID: 0, oid: oid, info: info)) { reply in
            done(reply.type == RNDISMessageType.setComplete && reply.u32(4) == RNDISStatus.success)
        }
    }

    /// Sends an RNDIS control message (its request id is filled in) from the control page by GPA-direct.
    private func rndisRequest(_ message: [UInt8], _ reply: @escaping (RNDISControlMessage) -> Void) {
        var m = message
        let id = nextRequestID
        nextRequestID &+= 1
        m.putLE(id, at: RNDIS.headerSize)
        guard m.count <= controlBuffer.count, let endpoint = channel.endpoint else { return fail("RNDIS request too large") }
        m.withUnsafeBytes { controlBuffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        let range = GpaRange(byteCount: UInt32(m.count), byteOffset: 0, pfns: [bus.pool.pfn(ofPage: controlPage)])
        let ok = (try? endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: PacketDescriptor.flagCompletionRequested,
                                                transactionID: Self.controlTag, extension: GpaDirectHeader.extensionBytes(for: [range]),
                                                payload: NVSPMessage.rndisPacket(control: true).bytes)) ?? false
        guard ok else { return fail("ring full during initialization") }
        pendingRequests[id] = reply
        endpoint.commitWrites()
    }

    // MARK: Transmit

    /// A free transmit slot: `bytes` is where the frame goes (after the headroom). nil when all are in flight.
    public func takeSlot() -> (index: Int, frame: UnsafeMutableRawBufferPointer)? {
        guard let i = freeSlotList.popLast() else { return nil }
        slotBusy[i] = true
        return (i, slotFrame(i))
    }

    /// Gives back a slot that was not sent.
    public func returnSlot(_ index: Int) { releaseSlot(index) }

    private func releaseSlot(_ index: Int) {
        guard index >= 0, index < slotCount, slotBusy[index] else { return counters.protocolErrors &+= 1 }
        slotBusy[index] = false
        freeSlotList.append(index)
    }

    func slotFrame(_ i: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: slotMemory[(i * slotPages * 4096 + Self.slotHeadroom)..<(i * slotPages * 4096 + Self.slotBytes)])
    }

    /// Sends the frame of `length` bytes in slot `index` with the offload requests in `info`. Small
    /// frames are copied into a send section (the slot is free again at once); large ones go by
    /// GPA-direct pages and the slot stays busy until the host completes it. False when the ring
    /// is full (the slot is still the caller's).
    public func send(slot index: Int, length: Int, info: PacketInfo, queue: Int = 0) -> Bool {
        guard state == .ready, let endpoint = endpoint(queue: queue) else { return false }
        let header = RNDIS.headerSize + RNDIS.packetBody + info.storedSize
        let frame = slotFrame(index)
        let start = frame.baseAddress! - header
        RNDISPacketHeader.store(to: start, ppiLength: info.storedSize, dataLength: length)
        info.store(to: start + RNDIS.headerSize + RNDIS.packetBody)
        let total = header + length
        let written: Bool
        packetScratch.initializeMemory(as: UInt8.self, repeating: 0)
        packetScratch.putLE(NVSPMessageType.sendRNDISPacket.rawValue, at: 0)
        if total <= sectionSize, let section = freeSections.popLast() {
            let base = sendBuffer.baseAddress! + Int(section) * sectionSize
            base.copyMemory(from: start, byteCount: total)
            packetScratch.putLE(section, at: NVSPField.sendSectionIndex)
            packetScratch.putLE(UInt32(total), at: NVSPField.sendSectionSize2)
            written = (try? endpoint.writer.tryWrite(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested,
                                                     transactionID: Self.sectionTag | UInt64(section),
                                                     payload: UnsafeRawBufferPointer(packetScratch))) ?? false
            if written {
                sectionBusy[Int(section)] = true
                releaseSlot(index)
            } else {
                freeSections.append(section)
            }
        } else {
            // One range per page, as netvsc builds them: {byte_count | byte_offset << 32, pfn}.
            packetScratch.putLE(NVSPMessage.noSection, at: NVSPField.sendSectionIndex)
            let firstByte = index * slotPages * 4096 + Self.slotHeadroom - header
            var at = firstByte, remaining = total, ranges = 0
            while remaining > 0 {
                let inPage = at & 4095
                let n = min(4096 - inPage, remaining)
                extensionScratch.putLE(UInt64(n) | UInt64(inPage) << 32, at: 8 + 16 * ranges)
                extensionScratch.putLE(bus.pool.pfn(ofPage: slotFirstPage + UInt64(at >> 12)), at: 16 + 16 * ranges)
                ranges += 1
                at += n
                remaining -= n
            }
            extensionScratch.putLE(UInt64(UInt32(ranges)) << 32, at: 0)
            written = (try? endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: PacketDescriptor.flagCompletionRequested,
                                                     transactionID: Self.slotTag | UInt64(index),
                                                     extension: UnsafeRawBufferPointer(rebasing: extensionScratch[0..<(8 + 16 * ranges)]),
                                                     payload: UnsafeRawBufferPointer(packetScratch))) ?? false
        }
        if written {
            counters.txFrames &+= 1
            counters.txBytes &+= UInt64(length)
        } else {
            counters.ringFull &+= 1
        }
        return written
    }

    /// Publishes sent frames (one signal for a batch, if the host wants one).
    public func flush(queue: Int = 0) { endpoint(queue: queue)?.commitWrites() }

    // MARK: Receive

    /// The 8-byte completion of a transfer-page packet, built once.
    private let receiveCompletion = Array(NVSPMessage.rndisPacketComplete(NVSPStatus.success).bytes[0..<8])

    /// Completions that did not fit their channel's ring yet, per endpoint.
    private var unsentCompletions: [ObjectIdentifier: [UInt64]] = [:]

    /// Transfer-page packets of one drain, completed after it.
    private var completions: [UInt64] = []

    /// Takes every packet waiting from the host on `source` (default: the primary).
    public func drain(_ source: ClientChannel? = nil) {
        guard let endpoint = (source ?? channel).endpoint else { return }
        let queue = source.flatMap { s in subChannels.firstIndex { $0 === s }.map { $0 + 1 } } ?? 0
        completions.removeAll(keepingCapacity: true)
        let failure = endpoint.drainInbound { packet in
            switch packet.type {
            case .completion:
                completed(packet)
            case .dataUsingTransferPages:
                receive(packet, queue: queue)
                completions.append(packet.transactionID)
            case .dataInBand:
                break  // indirection table, VF association: nothing to do without multi-queue or VFs
            default:
                counters.protocolErrors &+= 1
            }
        }
        if failure != nil { counters.protocolErrors &+= 1 }
        // Each transfer-page packet is completed with {SEND_RNDIS_PKT_COMPLETE, success}; what does
        // not fit waits for room (the host frees a sub-allocation only on its completion).
        completions.insert(contentsOf: unsentCompletions[ObjectIdentifier(endpoint), default: []], at: 0)
        var sent = 0
        for id in completions {
            guard (try? endpoint.writer.tryWrite(type: .completion, transactionID: id, payload: receiveCompletion)) == true else {
                counters.ringFull &+= 1
                break
            }
            sent += 1
        }
        unsentCompletions[ObjectIdentifier(endpoint)] = sent < completions.count ? Array(completions[sent...]) : nil
        if sent < completions.count {
            _ = endpoint.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: receiveCompletion.count))
        }
        endpoint.commitWrites()
    }

    private func completed(_ packet: IncomingPacket) {
        let id = packet.transactionID
        switch id >> 62 {
        case Self.sectionTag >> 62:
            // The host echoes our transaction id; an id we did not send is refused.
            let s = id & 0xFFFF_FFFF
            guard s < UInt64(sectionBusy.count), sectionBusy[Int(s)] else { return counters.protocolErrors &+= 1 }
            sectionBusy[Int(s)] = false
            freeSections.append(UInt32(s))
            onTransmitRoom?()
        case Self.slotTag >> 62:
            releaseSlot(Int(truncatingIfNeeded: id & 0xFFFF_FFFF))
            onTransmitRoom?()
        case Self.controlTag >> 62:
            break
        default:
            guard let handler = pendingNVSP.removeValue(forKey: id) else { return counters.protocolErrors &+= 1 }
            let n = packet.copyPayload(into: scratch)
            handler(try? NVSPMessage(decoding: UnsafeRawBufferPointer(rebasing: scratch[0..<n])))
        }
    }

    /// One transfer-page packet: each range is one RNDIS message in the receive buffer.
    private func receive(_ packet: IncomingPacket, queue: Int) {
        guard packet.extensionLength >= 8, packet.extensionLength <= scratch.count,
            packet.copy(fromPacketOffset: PacketDescriptor.size, count: packet.extensionLength, into: scratch.baseAddress!),
            let (pageSet, ranges) = try? TransferPageHeader.parse(extension: UnsafeRawBufferPointer(rebasing: scratch[0..<packet.extensionLength])),
            pageSet == NVSPMessage.receiveBufferID
        else { return counters.protocolErrors &+= 1 }
        for r in ranges {
            let offset = Int(r.byteOffset), count = Int(r.byteCount)
            guard offset <= receiveBuffer.count, count <= receiveBuffer.count - offset, count >= RNDIS.headerSize else {
                counters.protocolErrors &+= 1
                continue
            }
            message(UnsafeRawBufferPointer(rebasing: receiveBuffer[offset..<(offset + count)]), queue: queue)
        }
    }

    /// One RNDIS message from the host, bounds-checked against its range.
    private func message(_ m: UnsafeRawBufferPointer, queue: Int) {
        let type = m.le(UInt32.self, at: 0)
        let length = Int(m.le(UInt32.self, at: 4))
        guard length >= RNDIS.headerSize, length <= m.count else { return counters.protocolErrors &+= 1 }
        if type == RNDISMessageType.packet {
            guard length >= RNDIS.headerSize + RNDIS.packetBody else { return counters.protocolErrors &+= 1 }
            let h = RNDISPacketHeader(body: m.baseAddress! + RNDIS.headerSize)
            let body = length - RNDIS.headerSize
            let dataOffset = Int(h.dataOffset), dataLength = Int(h.dataLength)
            guard dataOffset <= body, dataLength <= body - dataOffset, dataLength >= 14 else { return counters.protocolErrors &+= 1 }
            var info = PacketInfo()
            let ppiOffset = Int(h.perPacketInfoOffset), ppiLength = Int(h.perPacketInfoLength)
            if ppiLength > 0 {
                guard ppiOffset <= body, ppiLength <= body - ppiOffset,
                    let parsed = PerPacketInfo.parse(m.baseAddress! + RNDIS.headerSize + ppiOffset, length: ppiLength)
                else { return counters.protocolErrors &+= 1 }
                info = parsed
            }
            counters.rxFrames &+= 1
            counters.rxBytes &+= UInt64(dataLength)
            onFrame?(UnsafeRawBufferPointer(rebasing: m[(RNDIS.headerSize + dataOffset)..<(RNDIS.headerSize + dataOffset + dataLength)]), info, queue)
            return
        }
        let bytes = Array(m[0..<length])
        guard let control = try? RNDISControlMessage(decoding: bytes) else { return counters.protocolErrors &+= 1 }
        switch type {
        case RNDISMessageType.indicateStatus:
            switch control.u32(0) {
            case RNDISStatus.mediaConnect: setLink(true)
            case RNDISStatus.mediaDisconnect: setLink(false)
            case RNDISStatus.networkChange:
                setLink(false)
                setLink(true)
            default: break
            }
        case RNDISMessageType.initializeComplete, RNDISMessageType.queryComplete, RNDISMessageType.setComplete:
            guard let handler = pendingRequests.removeValue(forKey: control.requestID) else { return counters.protocolErrors &+= 1 }
            handler(control)
        default:
            counters.protocolErrors &+= 1
        }
    }

    private func setLink(_ up: Bool) {
        guard up != linkUp else { return }
        linkUp = up
        logger.info("netvsc: link \(up ? "up" : "down")")
        onLinkChange?(up)
    }
}
