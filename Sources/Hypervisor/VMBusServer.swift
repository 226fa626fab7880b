// The host's VMBus server for one partition: version negotiation, offers, GPADLs, open/close, rescind, unload.

import Atomics
import GuestMemory
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire

/// Settings of a VMBus server.
public struct VMBusServerConfiguration: Sendable {
    /// Versions the server accepts; others are answered "not supported".
    public var supportedVersions: Set<VMBusVersion>
    /// Message connection id handed to ≥ 5.0 guests in VERSION_RESPONSE.
    public var messageConnectionID: UInt32

    public init(supportedVersions: Set<VMBusVersion> = Set(VMBusVersion.all), messageConnectionID: UInt32 = 1) {
        self.supportedVersions = supportedVersions
        self.messageConnectionID = messageConnectionID
    }
}

/// The negotiated state of a guest's connection.
public struct VMBusConnection: Sendable {
    public var version: VMBusVersion
    /// VP that receives channel messages.
    public var messageVP: UInt32
    /// SINT for messages and channel events.
    public var messageSINT: Int
    /// Pre-2.4 interrupt page (GPA), 0 if none.
    public var interruptPage: UInt64
    public var offersRequested = false
}

/// The VMBus server of one partition. It is a state machine over channel messages: every effect
/// goes through the partition (messages into SynIC slots, event flags, event ports), so tests can
/// drive it message by message. Errors the guest causes are logged (rate-limited) and answered
/// per the protocol; they never stop the server.
public final class VMBusServer: MessagePort, SubChannelOffering, GpadlMapper {
    public let partition: Partition
    public var configuration: VMBusServerConfiguration
    var logger: Logger
    private var guestErrors = RateLimiter()

    public private(set) var connection: VMBusConnection?
    public private(set) var channels: [UInt32: ServerChannel] = [:]
    public private(set) var gpadls = GpadlTable()

    // Counters for status output.
    public private(set) var messagesReceived: UInt64 = 0
    public private(set) var messagesSent: UInt64 = 0
    public private(set) var malformedMessages: UInt64 = 0
    /// Messages that broke the protocol's rules (each logged, rate-limited).
    public private(set) var guestProtocolErrors: UInt64 = 0

    /// Sees every channel message: `true` for guest → host, with the raw bytes (tracing).
    public var messageObserver: ((Bool, [UInt8]) -> Void)?
    /// Installed on every channel endpoint the server opens (tracing).
    public var packetObserver: (any PacketObserver)?

    public init(partition: Partition, configuration: VMBusServerConfiguration = .init(),
                logger: Logger = Logger(label: "viridian.vmbus-server")) {
        self.partition = partition
        self.configuration = configuration
        self.logger = logger
        partition.registerMessagePort(connectionID: VMBusConnectionID.message, self)
        partition.registerMessagePort(connectionID: VMBusConnectionID.message4, self)
        if configuration.messageConnectionID != VMBusConnectionID.message {
            partition.registerMessagePort(connectionID: configuration.messageConnectionID, self)
        }
        partition.registerEventPort(connectionID: VMBusConnectionID.event) { [unowned self] _ in
            self.scanInterruptPage()
        }
    }

    // MARK: Host API

    /// Registers a device and offers it if a guest is connected. Returns its relid.
    @discardableResult
    public func offer(_ device: any VMBusDevice) -> UInt32 {
        (device as? any SubChannelDevice)?.attach(subChannels: self)
        (device as? any GpadlClient)?.attach(gpadls: self)
        return offer(device, subChannelIndex: 0)
    }

    /// Most sub-channels one device may have.
    public static let maximumSubChannels = 64

    public func offerSubChannels(of device: any VMBusDevice, count: Int) -> Int {
        var existing = channels.values.filter { $0.device === device && $0.subChannelIndex > 0 && $0.state != .rescinded }.count
        while count > 0 && existing < min(count, Self.maximumSubChannels) {
            existing += 1
            offer(device, subChannelIndex: UInt16(existing))
        }
        return existing
    }

    @discardableResult
    private func offer(_ device: any VMBusDevice, subChannelIndex: UInt16) -> UInt32 {
        var relid: UInt32 = 1
        while channels[relid] != nil { relid += 1 }
        precondition(relid <= OfferChannel.maximumRelid, "out of relids")
        let channel = ServerChannel(relid: relid, device: device, subChannelIndex: subChannelIndex)
        channels[relid] = channel
        partition.registerEventPort(connectionID: channel.connectionID) { [unowned self, unowned channel] _ in
            self.channelSignalled(channel)
        }
        if connection?.offersRequested == true { sendOffer(channel) }
        return relid
    }

    /// Withdraws a channel: closes it if open, sends RESCIND_CHANNELOFFER, drops its GPADLs.
    /// The relid is reused only after the guest's RELID_RELEASED.
    public func rescind(relid: UInt32) {
        guard let channel = channels[relid] else { return }
        switch channel.state {
        case .registered:
            removeChannel(channel)
        case .offered, .open:
            closeChannel(channel)
            for handle in gpadls.removeAll(relid: relid) { logger.debug("dropped GPADL \(handle) of rescinded \(relid)") }
            channel.state = .rescinded
            send(.rescindChannelOffer(RescindChannelOffer(childRelid: relid)))
        case .rescinded:
            break
        }
    }

    public func mapGPADL(_ handle: UInt32, relid: UInt32) throws -> PageMapping {
        let gpadl = try gpadls.lookup(handle, relid: relid)
        guard let ranges = gpadl.ranges, ranges.allSatisfy({ $0.byteOffset == 0 && Int($0.byteCount) == $0.pfns.count * GpaRange.pageSize })
        else { throw GpadlError.badLength(gpadl.rangeBufferLength) }
        return try partition.memory.mapPages(ranges.flatMap(\.pfns))
    }

    /// Forgets the guest without messages (it is gone): closes every channel, drops all GPADLs.
    public func detachGuest() {
        resetConnection()
    }

    /// Rescinds every channel (partition shutdown).
    public func rescindAll() {
        for relid in channels.keys.sorted() { rescind(relid: relid) }
    }

    // MARK: Message port

    public func receiveMessage(_ payload: [UInt8], connectionID: UInt32, fromVP vp: UInt32) -> HvStatus {
        messagesReceived &+= 1
        messageObserver?(true, payload)
        let message: ChannelMessage
        do { message = try ChannelMessage(decoding: payload) } catch {
            malformedMessages &+= 1
            guestError("malformed channel message: \(error)")
            return .success
        }
        if case .initiateContact(let m) = message {
            initiateContact(m, connectionID: connectionID)
            return .success
        }
        guard let connection else {
            guestError("\(message.type) before INITIATE_CONTACT")
            return .success
        }
        let expected = connection.version.usesMessageConnection4 ? configuration.messageConnectionID : VMBusConnectionID.message
        guard connectionID == expected else {
            guestError("\(message.type) on connection \(connectionID), expected \(expected)")
            return .invalidConnectionID
        }
        switch message {
        case .requestOffers: requestOffers()
        case .gpadlHeader(let m): gpadlHeader(m)
        case .gpadlBody(let m): gpadlBody(m)
        case .gpadlTeardown(let m): gpadlTeardown(m)
        case .openChannel(let m): openChannel(m)
        case .closeChannel(let m): closeChannelMessage(m)
        case .relidReleased(let m): relidReleased(m)
        case .modifyChannel(let m): modifyChannel(m)
        case .unload: unload()
        case .tlConnectRequest(let m):
            // No socket services are offered: refuse (only ≥ 4.1 has a way to say so).
            if connection.version.hasModifyChannel {
                send(.tlConnectResult(TLConnectResult(endpointID: m.guestEndpointID, serviceID: m.hostServiceID,
                                                      status: Int32(bitPattern: 0xC000_0034))))
            }
        default:
            guestError("unexpected \(message.type) from the guest")
        }
        return .success
    }

    // MARK: Negotiation

    private func initiateContact(_ m: InitiateContact, connectionID: UInt32) {
        let version = m.version
        let rightPort = version.usesMessageConnection4
            ? connectionID == VMBusConnectionID.message4 : connectionID == VMBusConnectionID.message
        let vp = version.honoursTargetVCPU ? m.targetVCPU : 0
        let sint = version.usesMessageConnection4 ? Int(m.messageSINT) : SynICLayout.vmbusSINT
        let monitorsConsistent = (m.monitorPage1 == 0) == (m.monitorPage2 == 0)
        let needsInterruptPage = !version.usesPerChannelEventFlags
        let interruptPageOK = !needsInterruptPage
            || (m.interruptPage & 0xFFF == 0 && m.interruptPage != 0
                && (try? partition.memory.pointer(gpa: m.interruptPage, count: SynICLayout.pageSize)) != nil)
        let accept = configuration.supportedVersions.contains(version) && rightPort && Int(vp) < partition.vpCount
            && (0..<SynICLayout.sintCount).contains(sint) && monitorsConsistent && interruptPageOK
        if connection != nil { resetConnection() }
        let replyVP = Int(vp) < partition.vpCount ? vp : 0
        let replySINT = (0..<SynICLayout.sintCount).contains(sint) ? sint : SynICLayout.vmbusSINT
        let response = VersionResponse(
            versionSupported: accept, messageConnectionID: accept && version.usesMessageConnection4
                ? configuration.messageConnectionID : VMBusConnectionID.message)
        if accept {
            connection = VMBusConnection(version: version, messageVP: vp, messageSINT: sint,
                                         interruptPage: needsInterruptPage ? m.interruptPage : 0)
            logger.info("guest connected with VMBus \(version) (\(version.linuxName)), messages to VP \(vp) SINT \(sint)")
        } else {
            logger.debug("refused VMBus \(version) on connection \(connectionID)")
        }
        post(.versionResponse(response), vp: replyVP, sint: replySINT)
    }

    private func requestOffers() {
        guard connection?.offersRequested == false else {
            guestError("second REQUESTOFFERS ignored")
            return
        }
        connection?.offersRequested = true
        for relid in channels.keys.sorted() where channels[relid]!.state == .registered { sendOffer(channels[relid]!) }
        send(.allOffersDelivered(AllOffersDelivered()))
    }

    private func sendOffer(_ channel: ServerChannel) {
        let device = channel.device
        channel.state = .offered
        let version = connection?.version ?? .win10_v5_3
        send(.offerChannel(OfferChannel(
            interfaceType: device.deviceClass.guid, interfaceInstance: device.instanceID, flags: device.offerFlags,
            userDefined: device.offerUserDefined, subChannelIndex: version.usesPerChannelEventFlags ? channel.subChannelIndex : 0, childRelid: channel.relid, monitorID: 0xFF, monitorAllocated: false,
            isDedicatedInterrupt: version.hasChannelConnectionIDs,
            connectionID: version.hasChannelConnectionIDs ? channel.connectionID : VMBusConnectionID.event)))
    }

    private func unload() {
        guard let target = connection else { return }
        resetConnection()
        post(.unloadResponse(UnloadResponse()), vp: target.messageVP, sint: target.messageSINT)
    }

    /// Closes every channel, drops all GPADLs and forgets the connection; offers return to "registered".
    private func resetConnection() {
        for channel in channels.values {
            closeChannel(channel)
            // Sub-channels exist only for the connection that asked for them.
            if channel.state == .rescinded || channel.subChannelIndex > 0 { removeChannel(channel) } else { channel.state = .registered }
        }
        gpadls.removeAll()
        connection = nil
    }

    // MARK: GPADLs

    private func gpadlHeader(_ m: GpadlHeader) {
        guard let channel = channels[m.childRelid], channel.state == .offered || channel.state == .open else {
            guestError("GPADL_HEADER for unknown relid \(m.childRelid)")
            send(.gpadlCreated(GpadlCreated(childRelid: m.childRelid, gpadl: m.gpadl, creationStatus: GpadlCreated.statusUnsuccessful)))
            return
        }
        do {
            if try gpadls.begin(m, pageCount: partition.memory.pageCount) != nil { gpadlCreated(m.gpadl, relid: m.childRelid) }
        } catch {
            gpadlFailed(m.gpadl, relid: m.childRelid, error: error)
        }
    }

    private func gpadlBody(_ m: GpadlBody) {
        let relid = gpadls.entries[m.gpadl]?.relid ?? 0
        do {
            if try gpadls.append(m, pageCount: partition.memory.pageCount) != nil { gpadlCreated(m.gpadl, relid: relid) }
        } catch {
            if case .unknownHandle = error {
                guestError("GPADL_BODY for unknown handle \(m.gpadl)")
            } else {
                gpadlFailed(m.gpadl, relid: relid, error: error)
            }
        }
    }

    private func gpadlCreated(_ handle: UInt32, relid: UInt32) {
        send(.gpadlCreated(GpadlCreated(childRelid: relid, gpadl: handle, creationStatus: 0)))
    }

    private func gpadlFailed(_ handle: UInt32, relid: UInt32, error: GpadlError) {
        guestError("GPADL \(handle) refused: \(error)")
        send(.gpadlCreated(GpadlCreated(childRelid: relid, gpadl: handle, creationStatus: GpadlCreated.statusUnsuccessful)))
    }

    private func gpadlTeardown(_ m: GpadlTeardown) {
        guard let entry = gpadls.entries[m.gpadl], entry.relid == m.childRelid, entry.isComplete else {
            guestError("GPADL_TEARDOWN of unknown or incomplete GPADL \(m.gpadl)")
            return
        }
        if let channel = channels[m.childRelid], channel.state == .open, channel.ringGPADL == m.gpadl {
            // The rings are still in use: answer once the channel closes.
            channel.deferredTeardown = m.gpadl
            return
        }
        gpadls.remove(m.gpadl)
        send(.gpadlTorndown(GpadlTorndown(gpadl: m.gpadl)))
        if let channel = channels[m.childRelid] { rescindIfReleased(channel) }
    }

    /// A sub-channel lives from the guest's request to its close, as on Hyper-V: once closed and
    /// its GPADLs torn down (the order Linux closes in: CLOSECHANNEL, then GPADL_TEARDOWN), it is
    /// rescinded, and the next request for sub-channels offers new ones. Linux's hv_netvsc
    /// closes and requests its sub-channels again on every MTU or channel-count change.
    private func rescindIfReleased(_ channel: ServerChannel) {
        guard channel.rescindWhenTornDown, channel.state == .offered,
            !gpadls.entries.values.contains(where: { $0.relid == channel.relid }) else { return }
        channel.rescindWhenTornDown = false
        rescind(relid: channel.relid)
    }

    // MARK: Open and close

    private func openChannel(_ m: OpenChannel) {
        func fail(_ why: String) {
            guestError("OPENCHANNEL \(m.childRelid) refused: \(why)")
            send(.openChannelResult(OpenChannelResult(childRelid: m.childRelid, openID: m.openID, status: 0xC000_0001)))
        }
        guard let channel = channels[m.childRelid] else { return fail("unknown relid") }
        guard channel.state == .offered else { return fail("channel is \(channel.state)") }
        let version = connection?.version ?? .win8
        let targetVP = version.usesPerChannelEventFlags ? m.targetVP : 0
        guard Int(targetVP) < partition.vpCount else { return fail("target VP \(m.targetVP)") }
        let gpadl: Gpadl
        do { gpadl = try gpadls.lookup(m.ringBufferGPADL, relid: m.childRelid) } catch { return fail("\(error)") }
        guard let ranges = gpadl.ranges, ranges.count == 1, ranges[0].byteOffset == 0,
            Int(ranges[0].byteCount) == ranges[0].pfns.count * GpaRange.pageSize
        else { return fail("ring GPADL must be one whole-page range") }
        let pages = ranges[0].pfns.count
        let split = Int(m.downstreamRingBufferPageOffset)
        guard split >= 2, pages - split >= 2 else { return fail("ring split \(split) of \(pages) pages") }
        let endpoint: ChannelEndpoint
        let mapping: PageMapping
        do {
            mapping = try partition.memory.mapPages(ranges[0].pfns)
            let page = GpaRange.pageSize
            // Guest→host ring: pages [0, split); host→guest ring: pages [split, pages).
            let incoming = try RingBuffer(control: mapping.base, data: mapping.base + page, dataSize: (split - 1) * page)
            let outgoing = try RingBuffer(control: mapping.base + split * page, data: mapping.base + (split + 1) * page,
                                          dataSize: (pages - split - 1) * page)
            endpoint = try ChannelEndpoint(relid: channel.relid, incoming: incoming, outgoing: outgoing) {
                [unowned self, unowned channel] in self.signalGuest(channel)
            }
        } catch {
            return fail("rings unusable: \(error)")
        }
        endpoint.packetObserver = packetObserver
        channel.targetVP = targetVP
        channel.ringGPADL = m.ringBufferGPADL
        channel.mapping = mapping
        channel.endpoint = endpoint
        channel.state = .open
        channel.holdSignals = true
        (channel.device as? any GuestMemoryClient)?.attach(memory: partition.memory)
        let status = channel.device.open(endpoint, userData: m.userData)
        if status != 0 {
            channel.endpoint = nil
            channel.mapping = nil
            channel.state = .offered
        }
        send(.openChannelResult(OpenChannelResult(childRelid: m.childRelid, openID: m.openID, status: status)))
        channel.holdSignals = false
        if channel.signalDeferred {
            channel.signalDeferred = false
            if channel.state == .open { signalGuest(channel) }
        }
    }

    private func closeChannelMessage(_ m: CloseChannel) {
        guard let channel = channels[m.childRelid] else {
            guestError("CLOSECHANNEL of unknown relid \(m.childRelid)")
            return
        }
        if channel.state == .open {
            closeChannel(channel)
            channel.state = .offered
            if channel.subChannelIndex > 0 {
                channel.rescindWhenTornDown = true
                rescindIfReleased(channel)
            }
        }
    }

    /// Stops the device and unmaps the rings; answers a deferred teardown.
    private func closeChannel(_ channel: ServerChannel) {
        guard channel.state == .open, let endpoint = channel.endpoint else { return }
        channel.device.close(endpoint)
        channel.endpoint = nil
        channel.mapping = nil
        channel.state = .offered
        if let handle = channel.deferredTeardown {
            channel.deferredTeardown = nil
            gpadls.remove(handle)
            send(.gpadlTorndown(GpadlTorndown(gpadl: handle)))
        }
    }

    private func relidReleased(_ m: RelidReleased) {
        guard let channel = channels[m.childRelid], channel.state == .rescinded else {
            guestError("RELID_RELEASED for relid \(m.childRelid) that is not rescinded")
            return
        }
        removeChannel(channel)
    }

    private func removeChannel(_ channel: ServerChannel) {
        partition.unregisterEventPort(connectionID: channel.connectionID)
        channels[channel.relid] = nil
    }

    private func modifyChannel(_ m: ModifyChannel) {
        guard let version = connection?.version, version.hasModifyChannel else { return guestError("MODIFYCHANNEL before 4.1") }
        var status: UInt32 = 0
        if let channel = channels[m.childRelid], channel.state == .open, Int(m.targetVP) < partition.vpCount {
            channel.targetVP = m.targetVP
        } else {
            status = 0xC000_000D
            guestError("MODIFYCHANNEL \(m.childRelid) to VP \(m.targetVP) refused")
        }
        if version.answersModifyChannel {
            send(.modifyChannelResponse(ModifyChannelResponse(childRelid: m.childRelid, status: status)))
        }
    }

    // MARK: Signals

    private func channelSignalled(_ channel: ServerChannel) {
        guard channel.state == .open, let endpoint = channel.endpoint else { return }
        endpoint.noteSignalReceived()
        channel.device.channelSignalled(endpoint)
    }

    /// Host → guest channel interrupt: event flag = relid from 2.4; before, the interrupt page.
    private func signalGuest(_ channel: ServerChannel) {
        guard let connection else { return }
        if channel.holdSignals {
            channel.signalDeferred = true
            return
        }
        if connection.version.usesPerChannelEventFlags {
            partition.synics[Int(channel.targetVP)].signalEvent(sint: connection.messageSINT, flag: Int(channel.relid))
        } else if let page = try? partition.memory.pointer(gpa: connection.interruptPage, count: SynICLayout.pageSize) {
            // Receive half: the first 2048 bytes, bit = relid (< 2048, so inside the page).
            let word = UnsafeAtomic<UInt32>(at: (page + Int(channel.relid / 32) * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
            _ = word.loadThenBitwiseOr(with: 1 << (channel.relid % 32), ordering: .sequentiallyConsistent)
            partition.synics[0].signalEvent(sint: connection.messageSINT, flag: 0)
        }
    }

    /// Pre-2.4 guests set their channel's bit in the send half of the interrupt page, then signal
    /// connection 2 (0.13) or the channel's connection (1.1).
    private func scanInterruptPage() {
        guard let connection, connection.interruptPage != 0,
            let page = try? partition.memory.pointer(gpa: connection.interruptPage, count: SynICLayout.pageSize)
        else { return }
        let sendHalf = page + SynICLayout.pageSize / 2
        for index in 0..<(SynICLayout.pageSize / 2 / 4) {
            // Word `index` of the 2048-byte send half.
            let word = UnsafeAtomic<UInt32>(at: (sendHalf + index * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
            var bits = word.exchange(0, ordering: .sequentiallyConsistent)
            while bits != 0 {
                let bit = UInt32(bits.trailingZeroBitCount)
                bits &= bits - 1
                if let channel = channels[UInt32(index) * 32 + bit] { channelSignalled(channel) }
            }
        }
    }

    // MARK: Sending

    private func send(_ message: ChannelMessage) {
        guard let target = connection else { return }
        post(message, vp: target.messageVP, sint: target.messageSINT)
    }

    private func post(_ message: ChannelMessage, vp: UInt32, sint: Int) {
        messagesSent &+= 1
        if let messageObserver { messageObserver(false, message.encode()) }
        if !partition.synics[Int(vp)].postMessage(sint: sint, payload: message.encode()) {
            guestError("guest is not consuming messages; \(message.type) dropped")
        }
    }

    private func guestError(_ text: @autoclosure () -> String) {
        guestProtocolErrors &+= 1
        if guestErrors.allow() { logger.warning("partition \(partition.id): \(text())") }
    }
}

/// Lets the first 20 guest-triggered log lines through, then one in 1000.
struct RateLimiter {
    private var count: UInt64 = 0
    mutating func allow() -> Bool {
        count &+= 1
        return count <= 20 || count % 1000 == 0
    }
}
