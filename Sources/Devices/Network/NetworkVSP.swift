// The synthetic network adapter, host end: NVSP, receive and send buffers, RNDIS over them, frames to a FramePort.

import GuestMemory
import Hypervisor
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire
import Glibc

/// A netvsp: one synthetic NIC bridged to a `FramePort` (a host TAP). Guest frames arrive as RNDIS
/// PACKETs in send-buffer sections or GPA-direct pages and leave by one gathered write straight
/// from guest memory; host frames are read straight into a receive-buffer sub-allocation and
/// handed to the guest by transfer-page packets. Everything runs on the partition's thread.
public final class NetworkVSP: VMBusDevice, GuestMemoryClient, GpadlClient, DescriptorDevice, SubChannelDevice {
    public let deviceClass = DeviceClass.network
    public let instanceID: GUID
    public let port: any FramePort
    let logger: Logger
    public static let supportedVersions: [UInt32] = [NVSPVersion.v61, NVSPVersion.v6, NVSPVersion.v5, NVSPVersion.v4, NVSPVersion.v2, NVSPVersion.v1]
    /// Receive sub-allocation: room for a 64 KiB coalesced frame plus its RNDIS header and PPIs,
    /// so a TSO frame from the host crosses VMBus once.
    public static let subAllocationSize = 66_560
    /// Where a frame starts in its sub-allocation: RNDIS header (8 + 36) and one checksum PPI (16).
    static let frameOffset = RNDIS.headerSize + RNDIS.packetBody + PerPacketInfo.entrySize
    /// Most frames read from the port per pass before the writes are published.
    static let receiveBatch = 64
    static let maximumPendingControl = 64

    private var memory: GuestPhysicalMemory?
    private var gpadls: (any GpadlMapper)?
    private var watcher: (any DescriptorWatcher)?
    private var subChannels: (any SubChannelOffering)?
    /// The primary channel's queue (control and data), and every open channel's by relid.
    private var primary: NetworkQueue?
    private var queues: [UInt32: NetworkQueue] = [:]
    /// Queues (channels) the device offers: more than one enables RSS and sub-channels.
    public var maximumQueues = 1 {
        didSet { rndis.receiveQueues = maximumQueues }
    }
    /// Opens the port of receive queue `index` ≥ 1 (another queue of a multi-queue TAP); nil: the
    /// sub-channel sends through the primary port and receives nothing of its own.
    public var openQueuePort: ((Int) -> (any FramePort)?)?
    /// Told once when the port is lost (its TAP deleted); the host calls `portRestored()` when a
    /// TAP of that name is back behind the port.
    public var onPortLost: (() -> Void)?
    /// The port is lost: the guest sees the link down until it is restored.
    public private(set) var portIsLost = false
    private var linkBeforeLoss = true
    public private(set) var version: UInt32 = 0
    public private(set) var rndis: RNDISResponder

    private var receiveBuffer: PageMapping?
    private var receiveSlots = 0
    private var freeSlots: [UInt32] = []
    private var slotBusy: [Bool] = []
    private var sendBuffer: PageMapping?
    private var sendSections = 0
    /// RNDIS replies and indications waiting for a free sub-allocation.
    private var pendingControl: [[UInt8]] = []

    public private(set) var counters = NetworkCounters()

    // Scratch space, allocated once.
    private let scatter = ScatterList()
    private let iov = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 80)
    private let vnet = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
    private let headers = UnsafeMutableRawBufferPointer.allocate(byteCount: OffloadTranslation.headerBytes, alignment: 8)
    private let small = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)
    /// The extension of a GPA-direct packet (at most 64 ranges of 2 words plus the header).
    private static let maximumExtension = 8 + 8 * 2 * 64
    private let extensionScratch = UnsafeMutableRawPointer.allocate(byteCount: maximumExtension, alignment: 8)
    private var transferExtension = [UInt8](repeating: 0, count: 16)
    /// SEND_RNDIS_PKT payloads of transfer-page packets (data, control) and the completions of
    /// guest packets, built once: the data path allocates nothing per frame.
    private let dataPacket = NVSPMessage.rndisPacket(control: false).bytes
    private let controlPacket = NVSPMessage.rndisPacket(control: true).bytes
    private let successCompletion = NVSPMessage.rndisPacketComplete(NVSPStatus.success).bytes
    private let invalidCompletion = NVSPMessage.rndisPacketComplete(NVSPStatus.invalidRNDISPacket).bytes

    public init(instanceID: GUID, port: any FramePort, mac: [UInt8], mtu: Int, logger: Logger) {
        self.instanceID = instanceID
        self.port = port
        self.logger = logger
        rndis = RNDISResponder(mac: mac, mtu: mtu)
        transferExtension.putLE(NVSPMessage.receiveBufferID, at: 0)
        transferExtension.putLE(UInt32(1), at: 4)
    }

    deinit {
        iov.deallocate()
        vnet.deallocate()
        headers.deallocate()
        small.deallocate()
        extensionScratch.deallocate()
    }

    public func attach(memory: GuestPhysicalMemory) { self.memory = memory }
    public func attach(gpadls: any GpadlMapper) { self.gpadls = gpadls }
    public func attach(watcher: any DescriptorWatcher) { self.watcher = watcher }
    public func attach(subChannels: any SubChannelOffering) { self.subChannels = subChannels }

    public var mac: [UInt8] { rndis.mac }
    public var mtu: Int { rndis.mtu }
    public var linkUp: Bool { rndis.linkUp }

    // MARK: Channel life

    public func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32 {
        if primary == nil {
            let q = NetworkQueue(endpoint: channel, index: 0, port: port)
            primary = q
            queues = [channel.relid: q]
            reset()
            return 0
        }
        // Sub-channels are offered only while the primary is open.
        let index = queues.count
        let own = openQueuePort?(index)
        queues[channel.relid] = NetworkQueue(endpoint: channel, index: index, port: own ?? port, receives: own != nil)
        updateWatch()
        return 0
    }

    public func close(_ channel: ChannelEndpoint) {
        guard let q = queues[channel.relid], q.endpoint === channel else { return }
        stopWatching(q)
        queues[channel.relid] = nil
        if q === primary {
            for other in queues.values { stopWatching(other) }
            queues = [:]
            primary = nil
            reset()
        }
    }

    private func reset() {
        version = 0
        receiveBuffer = nil
        receiveSlots = 0
        freeSlots = []
        slotBusy = []
        sendBuffer = nil
        sendSections = 0
        pendingControl = []
        let link = rndis.linkUp
        rndis = RNDISResponder(mac: rndis.mac, mtu: rndis.mtu)
        rndis.linkUp = link
        rndis.receiveQueues = maximumQueues
        port.setOffload(0)
        updateWatch()
    }

    /// Whether host frames are wanted now.
    private var receiving: Bool {
        primary != nil && receiveBuffer != nil && rndis.initialized && rndis.packetFilter != 0 && rndis.linkUp && !portIsLost
    }

    private func updateWatch() {
        for q in queues.values where q.receives { setWatch(q, receiving && q.stalled == nil && !freeSlots.isEmpty) }
    }

    private func setWatch(_ q: NetworkQueue, _ wanted: Bool) {
        guard wanted != q.watching, let watcher, q.port.descriptor >= 0 else { return }
        q.watching = wanted
        watcher.watch(q.port.descriptor, wanted: wanted) { [unowned self, unowned q] in self.receiveFrames(q) }
    }

    private func stopWatching(_ q: NetworkQueue) {
        setWatch(q, false)
        q.stalled = nil
    }

    // MARK: Link

    /// Sets the link state: the port's carrier follows, and the guest is told (MEDIA_CONNECT/DISCONNECT).
    public func setLink(up: Bool) {
        // While the port is lost the wanted state is kept for its return.
        if portIsLost { return linkBeforeLoss = up }
        guard up != rndis.linkUp else { return }
        rndis.linkUp = up
        port.setCarrier(up)
        if primary != nil, rndis.initialized { sendControl(rndis.linkIndication) }
        updateWatch()
    }

    /// The port failed for good: stop reading it, tell the guest the link is down, tell the host.
    func portLost() {
        guard !portIsLost else { return }
        portIsLost = true
        linkBeforeLoss = rndis.linkUp
        for q in queues.values { stopWatching(q) }
        logger.warning("netvsp: the host port is gone (TAP deleted?); link down until it returns")
        if rndis.linkUp {
            rndis.linkUp = false
            if primary != nil, rndis.initialized { sendControl(rndis.linkIndication) }
        }
        onPortLost?()
    }

    /// The port works again (the host put a new TAP behind it): the link comes back as it was.
    public func portRestored() {
        guard portIsLost else { return }
        portIsLost = false
        logger.notice("netvsp: the host port is back")
        if linkBeforeLoss { setLink(up: true) } else { updateWatch() }
    }

    // MARK: Guest → host

    public func channelSignalled(_ channel: ChannelEndpoint) {
        guard let q = queues[channel.relid], q.endpoint === channel else { return }
        guard flushCompletions(q) else { return }
        retryStalled(q)
        channel.reader.mask()
        while true {
            var blocked = false
            do {
                while let packet = try channel.reader.next() {
                    serve(packet, q)
                    if !q.pendingCompletions.isEmpty {
                        blocked = true
                        break
                    }
                }
            } catch {
                counters.protocolErrors &+= 1
                logger.warning("netvsp: corrupt ring: \(error); channel abandoned")
                _ = channel.reader.unmask()
                return
            }
            channel.commitWrites()
            channel.commitReads()
            if blocked {
                _ = channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: NVSPMessage.size))
                channel.commitWrites()
                return
            }
            if !channel.reader.unmask() { break }
        }
        for other in queues.values { retryStalled(other) }
        updateWatch()
    }

    private func serve(_ packet: IncomingPacket, _ q: NetworkQueue) {
        let channel = q.endpoint
        if packet.type == .completion {
            // The guest is done with a receive sub-allocation (transaction id = its index).
            let slot = packet.transactionID
            guard slot < UInt64(receiveSlots), slotBusy[Int(slot)] else {
                counters.protocolErrors &+= 1
                return
            }
            slotBusy[Int(slot)] = false
            freeSlots.append(UInt32(slot))
            return
        }
        guard packet.type == .dataInBand || packet.type == .dataUsingGPADirect else {
            counters.protocolErrors &+= 1
            return
        }
        let n = packet.copyPayload(into: UnsafeMutableRawBufferPointer(start: small, count: NVSPMessage.size))
        let wantsCompletion = packet.descriptor.completionRequested
        if n >= NVSPMessage.minimumSize(of: .sendRNDISPacket), small.le(UInt32.self, at: 0) == NVSPMessageType.sendRNDISPacket.rawValue {
            // The data path: fields read in place, the completion from a prepared payload.
            let status = transmit(section: small.le(at: NVSPField.sendSectionIndex), size: small.le(at: NVSPField.sendSectionSize2), packet, q)
            if wantsCompletion { completeRNDIS(packet.transactionID, status, q) }
            return
        }
        guard let message = try? NVSPMessage(decoding: UnsafeRawBufferPointer(start: small, count: n)) else {
            counters.protocolErrors &+= 1
            return
        }
        guard q === primary else {
            // Sub-channels carry data only.
            counters.protocolErrors &+= 1
            if wantsCompletion { complete(packet.transactionID, nil, q) }
            return
        }
        switch message.type {
        case .initialize:
            let low = message.u32(NVSPField.minVersion), high = message.u32(NVSPField.maxVersion)
            var reply = NVSPMessage(.initializeComplete)
            if let chosen = Self.supportedVersions.first(where: { $0 >= low && $0 <= high }), version == 0 || chosen == version {
                version = chosen
                rndis.nvspVersion = chosen
                reply.set(NVSPField.negotiatedVersion, chosen == NVSPVersion.v1 ? 2 : 0xFFFF_FFFF)
                reply.set(NVSPField.maxMDLChainLength, 34)
                reply.set(NVSPField.initStatus, NVSPStatus.success)
            } else {
                reply.set(NVSPField.initStatus, NVSPStatus.failure)
            }
            complete(packet.transactionID, reply, q)
        case .sendNDISConfig, .sendNDISVersion, .switchDataPath:
            if wantsCompletion { complete(packet.transactionID, nil, q) }
        case .sendReceiveBuffer:
            complete(packet.transactionID, attachReceiveBuffer(message, channel), q)
        case .sendSendBuffer:
            complete(packet.transactionID, attachSendBuffer(message, channel), q)
        case .revokeReceiveBuffer:
            receiveBuffer = nil
            receiveSlots = 0
            freeSlots = []
            slotBusy = []
            for other in queues.values { other.stalled = nil }
            pendingControl = []
        case .revokeSendBuffer:
            sendBuffer = nil
            sendSections = 0
        case .subChannel:
            var reply = NVSPMessage(.subChannel)
            reply.set(NVSPField.status, NVSPStatus.failure)
            let wanted = Int(message.u32(NVSPField.subChannelCount))
            if message.u32(NVSPField.subChannelOperation) == 1, version >= NVSPVersion.v5, rndis.initialized, let subChannels,
                wanted >= 1, maximumQueues > 1 {
                let granted = min(wanted, maximumQueues - 1)
                _ = subChannels.offerSubChannels(of: self, count: granted)
                reply.set(NVSPField.status, NVSPStatus.success)
                reply.set(NVSPField.subChannelCount, UInt32(granted))
            } else {
                counters.protocolErrors &+= 1
            }
            complete(packet.transactionID, reply, q)
        default:
            counters.protocolErrors &+= 1
            if wantsCompletion { complete(packet.transactionID, nil, q) }
        }
    }

    private func attachReceiveBuffer(_ m: NVSPMessage, _ channel: ChannelEndpoint) -> NVSPMessage {
        var reply = NVSPMessage(.sendReceiveBufferComplete)
        reply.set(NVSPField.status, NVSPStatus.failure)
        guard version != 0, receiveBuffer == nil, m.u16(NVSPField.bufferID) == NVSPMessage.receiveBufferID,
            let mapping = try? gpadls?.mapGPADL(m.u32(NVSPField.gpadlHandle), relid: channel.relid),
            mapping.count >= Self.subAllocationSize
        else {
            counters.protocolErrors &+= 1
            return reply
        }
        receiveBuffer = mapping
        receiveSlots = mapping.count / Self.subAllocationSize
        slotBusy = [Bool](repeating: false, count: receiveSlots)
        freeSlots = (0..<UInt32(receiveSlots)).reversed()
        reply.set(NVSPField.status, NVSPStatus.success)
        reply.set(NVSPField.sectionCount, 1)
        reply.set(NVSPField.sectionOffset, 0)
        reply.set(NVSPField.subAllocationSize, UInt32(Self.subAllocationSize))
        reply.set(NVSPField.subAllocationCount, UInt32(receiveSlots))
        reply.set(NVSPField.sectionEnd, UInt32(receiveSlots * Self.subAllocationSize))
        return reply
    }

    private func attachSendBuffer(_ m: NVSPMessage, _ channel: ChannelEndpoint) -> NVSPMessage {
        var reply = NVSPMessage(.sendSendBufferComplete)
        reply.set(NVSPField.status, NVSPStatus.failure)
        guard version != 0, sendBuffer == nil,
            let mapping = try? gpadls?.mapGPADL(m.u32(NVSPField.gpadlHandle), relid: channel.relid),
            mapping.count >= Int(NVSPMessage.sendSectionSize)
        else {
            counters.protocolErrors &+= 1
            return reply
        }
        sendBuffer = mapping
        sendSections = mapping.count / Int(NVSPMessage.sendSectionSize)
        reply.set(NVSPField.status, NVSPStatus.success)
        reply.set(NVSPField.sendSectionSize, NVSPMessage.sendSectionSize)
        return reply
    }

    /// Collects the RNDIS bytes of a SEND_RNDIS_PKT (section, then GPA pages) and handles each
    /// RNDIS message in them. Returns the NVSP status for the completion.
    private func transmit(section: UInt32, size sectionBytes: UInt32, _ packet: IncomingPacket, _ q: NetworkQueue) -> UInt32 {
        scatter.reset()
        if section != NVSPMessage.noSection {
            let size = Int(sectionBytes)
            guard let sendBuffer, Int(section) < sendSections, size <= Int(NVSPMessage.sendSectionSize) else {
                counters.protocolErrors &+= 1
                return NVSPStatus.invalidRNDISPacket
            }
            scatter.append(sendBuffer.base + Int(section) * Int(NVSPMessage.sendSectionSize), size)
        }
        if packet.type == .dataUsingGPADirect {
            guard appendPages(packet) else {
                counters.refusedPages &+= 1
                return NVSPStatus.invalidRNDISPacket
            }
        }
        var offset = 0
        var status = NVSPStatus.success
        while scatter.total - offset >= RNDIS.headerSize {
            guard scatter.copy(at: offset, length: 8, into: small) else { break }
            let type = small.le(UInt32.self, at: 0)
            let length = Int(small.le(UInt32.self, at: 4))
            if type == 0 && length == 0 { break }  // padding after the last message
            guard length >= RNDIS.headerSize, length <= scatter.total - offset else {
                counters.protocolErrors &+= 1
                return NVSPStatus.invalidRNDISPacket
            }
            if type == RNDISMessageType.packet {
                if !forward(at: offset, length: length, to: q.port) { status = NVSPStatus.invalidRNDISPacket }
            } else {
                guard length <= RNDIS.maximumControlMessage else {
                    counters.protocolErrors &+= 1
                    return NVSPStatus.invalidRNDISPacket
                }
                var bytes = [UInt8](repeating: 0, count: length)
                _ = bytes.withUnsafeMutableBytes { scatter.copy(at: offset, length: length, into: $0.baseAddress!) }
                control(bytes)
            }
            offset += length
        }
        return status
    }

    /// Adds the GPA-direct ranges of `packet` to the scatter list, each page checked against guest
    /// memory. The ranges are walked in place in a scratch copy of the extension.
    private func appendPages(_ packet: IncomingPacket) -> Bool {
        let length = packet.extensionLength
        guard let memory, length >= 8, length <= Self.maximumExtension,
            packet.copy(fromPacketOffset: PacketDescriptor.size, count: length, into: extensionScratch)
        else { return false }
        let words = length / 8
        let count = Int(extensionScratch.le(UInt32.self, at: 4))
        guard count >= 1 else { return false }
        var word = 1
        for _ in 0..<count {
            guard word < words else { return false }
            let header = extensionScratch.le(UInt64.self, at: 8 * word)
            var remaining = Int(UInt32(truncatingIfNeeded: header))
            var offset = Int(UInt32(truncatingIfNeeded: header >> 32))
            let pages = GpaRange.pageCount(byteCount: UInt32(remaining), byteOffset: UInt32(min(offset, 0xFFFF_FFFF)))
            guard remaining > 0, offset < GpaRange.pageSize, word + 1 + pages <= words else { return false }
            for i in 0..<pages {
                let pfn = extensionScratch.le(UInt64.self, at: 8 * (word + 1 + i))
                let n = min(GpaRange.pageSize - offset, remaining)
                guard pfn < UInt64(memory.pageCount), let p = try? memory.pointer(gpa: pfn << 12 + UInt64(offset), count: n),
                    scatter.append(p, n)
                else { return false }
                remaining -= n
                offset = 0
            }
            word += 1 + pages
        }
        return true
    }

    /// Sends one RNDIS PACKET's frame to the port. False when the message is malformed.
    private func forward(at offset: Int, length: Int, to port: any FramePort) -> Bool {
        guard length >= RNDIS.headerSize + RNDIS.packetBody,
            scatter.copy(at: offset + RNDIS.headerSize, length: RNDIS.packetBody, into: small)
        else {
            counters.protocolErrors &+= 1
            return false
        }
        let h = RNDISPacketHeader(body: small)
        let bodyLength = length - RNDIS.headerSize
        let dataOffset = Int(h.dataOffset), dataLength = Int(h.dataLength)
        guard dataOffset >= RNDIS.packetBody, dataOffset <= bodyLength, dataLength <= bodyLength - dataOffset, dataLength >= 14 else {
            counters.protocolErrors &+= 1
            return false
        }
        var info = PacketInfo()
        let ppiOffset = Int(h.perPacketInfoOffset), ppiLength = Int(h.perPacketInfoLength)
        if ppiLength > 0 {
            guard ppiLength <= 256, ppiOffset >= RNDIS.packetBody, ppiOffset <= bodyLength, ppiLength <= bodyLength - ppiOffset,
                scatter.copy(at: offset + RNDIS.headerSize + ppiOffset, length: ppiLength, into: small),
                let parsed = PerPacketInfo.parse(small, length: ppiLength)
            else {
                counters.protocolErrors &+= 1
                return false
            }
            info = parsed
        }
        guard rndis.linkUp else {
            counters.drops &+= 1
            return true
        }
        let frame = offset + RNDIS.headerSize + dataOffset
        let head = min(dataLength, headers.count)
        _ = scatter.copy(at: frame, length: head, into: headers.baseAddress!)
        guard let v = OffloadTranslation.virtioHeader(transmit: info, headers: UnsafeMutableRawBufferPointer(rebasing: headers[0..<head]),
                                                      frameLength: dataLength)
        else {
            counters.drops &+= 1
            counters.badOffloads &+= 1
            return true
        }
        v.store(to: vnet)
        iov[0] = iovec(iov_base: vnet, iov_len: VirtioNetHeader.size)
        iov[1] = iovec(iov_base: headers.baseAddress, iov_len: head)
        guard let count = scatter.gather(at: frame + head, length: dataLength - head, into: iov, first: 2) else {
            counters.drops &+= 1
            return true
        }
        if port.send(UnsafeBufferPointer(rebasing: iov[0..<count])) {
            counters.txFrames &+= 1
            counters.txBytes &+= UInt64(dataLength)
        } else {
            counters.drops &+= 1
            if port.isLost { portLost() }
        }
        return true
    }

    private func control(_ bytes: [UInt8]) {
        guard let message = try? RNDISControlMessage(decoding: bytes) else {
            counters.protocolErrors &+= 1
            return
        }
        let (reply, effect) = rndis.handle(message)
        switch effect {
        case .offloadChanged:
            // Checksums the guest verifies itself are computed by the kernel unless the guest takes
            // them unverified; coalesced frames only when it accepts receive coalescing.
            let o = rndis.offload
            var flags: UInt32 = 0
            if o.receiveChecksum {
                flags = TunOffload.checksum
                if o.rscIPv4 == NDISOffloadParameters.enabled { flags |= TunOffload.tso4 | TunOffload.tsoECN }
                if o.rscIPv6 == NDISOffloadParameters.enabled { flags |= TunOffload.tso6 }
            }
            port.setOffload(flags)
        case .initialized:
            logger.info("netvsp: RNDIS initialized (NVSP 0x\(String(version, radix: 16)), \(receiveSlots) receive sub-allocations)")
        default:
            break
        }
        if let reply { sendControl(reply) }
        if effect == .initialized && !rndis.linkUp { sendControl(rndis.linkIndication) }
    }

    // MARK: Host → guest

    /// Reads frames from a queue's port into free sub-allocations and offers them to the guest on that queue's channel.
    func receiveFrames(_ q: NetworkQueue) {
        guard let receiveBuffer, queues[q.endpoint.relid] === q else { return updateWatch() }
        let channel = q.endpoint
        var batch = 0
        while receiving, q.stalled == nil, let slot = freeSlots.popLast() {
            let base = receiveBuffer.base + Int(slot) * Self.subAllocationSize
            iov[0] = iovec(iov_base: vnet, iov_len: VirtioNetHeader.size)
            iov[1] = iovec(iov_base: base + Self.frameOffset, iov_len: Self.subAllocationSize - Self.frameOffset)
            guard let n = q.port.receive(UnsafeBufferPointer(rebasing: iov[0..<2])) else {
                freeSlots.append(slot)
                if q.port.isLost {
                    channel.commitWrites()
                    return portLost()
                }
                break
            }
            guard n >= VirtioNetHeader.size + 14 else {
                freeSlots.append(slot)
                counters.drops &+= 1
                continue
            }
            let length = n - VirtioNetHeader.size
            let info = OffloadTranslation.receiveInfo(VirtioNetHeader(loading: vnet),
                                                      headers: UnsafeRawBufferPointer(start: base + Self.frameOffset, count: min(length, 128)))
            RNDISPacketHeader.store(to: base, ppiLength: PerPacketInfo.entrySize, dataLength: length)
            PacketInfo(checksum: info.checksum ?? 0).store(to: base + RNDIS.headerSize + RNDIS.packetBody)
            slotBusy[Int(slot)] = true
            counters.rxFrames &+= 1
            counters.rxBytes &+= UInt64(length)
            if !offer(slot: slot, length: Self.frameOffset + length, control: false, q) {
                q.stalled = (slot, Self.frameOffset + length, false)
                break
            }
            batch += 1
            if batch == Self.receiveBatch {
                channel.commitWrites()
                batch = 0
            }
        }
        channel.commitWrites()
        updateWatch()
    }

    /// Reads whatever waits on every queue (tests, and ports without a descriptor).
    public func receiveFrames() {
        for q in queues.values.sorted(by: { $0.index < $1.index }) where q.receives { receiveFrames(q) }
    }

    /// Queues an RNDIS message (reply or indication) for the guest through the receive buffer.
    private func sendControl(_ bytes: [UInt8]) {
        guard pendingControl.count < Self.maximumPendingControl else {
            counters.protocolErrors &+= 1
            return
        }
        pendingControl.append(bytes)
        if let primary { flushControl(primary) }
    }

    private func flushControl(_ q: NetworkQueue) {
        guard let receiveBuffer else { return }
        while q.stalled == nil, let bytes = pendingControl.first, bytes.count <= Self.subAllocationSize, let slot = freeSlots.popLast() {
            pendingControl.removeFirst()
            bytes.withUnsafeBytes { (receiveBuffer.base + Int(slot) * Self.subAllocationSize).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            slotBusy[Int(slot)] = true
            if !offer(slot: slot, length: bytes.count, control: true, q) {
                q.stalled = (slot, bytes.count, true)
            }
        }
        q.endpoint.commitWrites()
    }

    /// Writes the transfer-page packet for one sub-allocation. False when the ring is full.
    private func offer(slot: UInt32, length: Int, control: Bool, _ q: NetworkQueue) -> Bool {
        transferExtension.putLE(UInt32(length), at: 8)
        transferExtension.putLE(slot * UInt32(Self.subAllocationSize), at: 12)
        let size = version >= NVSPVersion.v61 ? NVSPMessage.size : 28
        let channel = q.endpoint
        let written = transferExtension.withUnsafeBytes { ext in
            (control ? controlPacket : dataPacket).withUnsafeBytes { payload in
                (try? channel.writer.tryWrite(type: .dataUsingTransferPages, flags: PacketDescriptor.flagCompletionRequested,
                                              transactionID: UInt64(slot), extension: ext,
                                              payload: UnsafeRawBufferPointer(rebasing: payload[0..<size]))) ?? false
            }
        }
        if !written {
            counters.ringFull &+= 1
            _ = channel.writer.requestSpace(RingWriter.space(extensionSize: 16, payloadSize: NVSPMessage.size))
        }
        return written
    }

    /// Offers a queue's stalled sub-allocation (and, on the primary, waiting control messages) once its ring has room.
    private func retryStalled(_ q: NetworkQueue) {
        if let s = q.stalled {
            guard offer(slot: s.slot, length: s.length, control: s.control, q) else { return }
            q.stalled = nil
            q.endpoint.writer.clearSpaceRequest()
        }
        if q === primary { flushControl(q) }
        q.endpoint.commitWrites()
    }

    // MARK: Completions

    /// Completes a guest request with `reply` (nil: an empty completion).
    private func complete(_ transactionID: UInt64, _ reply: NVSPMessage?, _ q: NetworkQueue) {
        let size = reply == nil ? 0 : version >= NVSPVersion.v61 || version == 0 ? NVSPMessage.size : 28
        let bytes = reply.map { Array($0.bytes[0..<size]) } ?? []
        if q.pendingCompletions.isEmpty,
            (try? q.endpoint.writer.tryWrite(type: .completion, transactionID: transactionID, payload: bytes)) == true { return }
        counters.ringFull &+= 1
        q.pendingCompletions.append((transactionID, bytes))
    }

    /// Completes a SEND_RNDIS_PKT with `status` from the prepared payloads (no allocation while the ring has room).
    private func completeRNDIS(_ transactionID: UInt64, _ status: UInt32, _ q: NetworkQueue) {
        let size = version >= NVSPVersion.v61 || version == 0 ? NVSPMessage.size : 28
        // `transmit` answers success or invalid RNDIS packet, the two prepared payloads.
        let payload = status == NVSPStatus.success ? successCompletion : invalidCompletion
        guard q.pendingCompletions.isEmpty, payload.le(UInt32.self, at: NVSPField.status) == status else {
            return complete(transactionID, NVSPMessage.rndisPacketComplete(status), q)
        }
        let written = payload.withUnsafeBytes { p in
            (try? q.endpoint.writer.tryWrite(type: .completion, transactionID: transactionID,
                                             payload: UnsafeRawBufferPointer(rebasing: p[0..<size]))) ?? false
        }
        if !written { complete(transactionID, NVSPMessage.rndisPacketComplete(status), q) }
    }

    /// Writes completions that waited for room; false while some still do not fit.
    private func flushCompletions(_ q: NetworkQueue) -> Bool {
        let channel = q.endpoint
        while let (id, bytes) = q.pendingCompletions.first {
            guard (try? channel.writer.tryWrite(type: .completion, transactionID: id, payload: bytes)) == true else {
                _ = channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: bytes.count))
                channel.commitWrites()
                return false
            }
            q.pendingCompletions.removeFirst()
        }
        channel.writer.clearSpaceRequest()
        channel.commitWrites()
        return true
    }
}

/// One channel of a NIC (the primary or a sub-channel) and the port queue it is paired with.
final class NetworkQueue {
    let endpoint: ChannelEndpoint
    let index: Int
    let port: any FramePort
    /// Whether host frames are read from `port` for this queue (the primary always; a sub-channel
    /// only with a port of its own).
    let receives: Bool
    /// A frame in a sub-allocation whose transfer-page packet did not fit the ring yet.
    var stalled: (slot: UInt32, length: Int, control: Bool)?
    /// Completions that did not fit the ring yet (the inbound ring is not read meanwhile).
    var pendingCompletions: [(UInt64, [UInt8])] = []
    var watching = false

    init(endpoint: ChannelEndpoint, index: Int, port: any FramePort, receives: Bool = true) {
        self.endpoint = endpoint
        self.index = index
        self.port = port
        self.receives = receives
    }
}

/// Per-adapter counters (`viridian-host status`). rx = host → guest, tx = guest → host.
public struct NetworkCounters: Codable, Equatable, Sendable {
    public var rxFrames: UInt64 = 0
    public var rxBytes: UInt64 = 0
    public var txFrames: UInt64 = 0
    public var txBytes: UInt64 = 0
    public var drops: UInt64 = 0
    public var ringFull: UInt64 = 0
    public var protocolErrors: UInt64 = 0
    public var refusedPages: UInt64 = 0
    public var badOffloads: UInt64 = 0
    public init() {}
}
