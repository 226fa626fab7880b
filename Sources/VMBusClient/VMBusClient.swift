// The guest's VMBus client: negotiates a version, collects offers, builds GPADLs, opens and closes channels.

import Atomics
import GuestMemory
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire

/// Where the guest's bus connection is.
public enum ClientConnectionState: Equatable, Sendable {
    case disconnected
    /// INITIATE_CONTACT for this version sent, waiting for VERSION_RESPONSE.
    case contacting(VMBusVersion)
    /// Connected; offers requested.
    case connected(VMBusVersion)
    /// UNLOAD sent.
    case unloading
    /// Every version was refused.
    case failed
}

/// The guest side of VMBus (what Linux's drivers/hv does at boot), as a state machine driven by
/// `handleInterrupt`. It never blocks: requests complete when the host's answer is scanned, and
/// callers watch `state` or the callbacks.
public final class VMBusClient {
    /// The pages the bus and its devices share with the host.
    public let pool: GuestBufferPool
    let hypervisor: any GuestHypervisor
    public let vpCount: Int
    /// Versions to try, newest first.
    public let versions: [VMBusVersion]
    var logger: Logger

    public private(set) var state: ClientConnectionState = .disconnected
    public private(set) var allOffersDelivered = false
    /// Channels by relid.
    public private(set) var channels: [UInt32: ClientChannel] = [:]
    /// Called for each new offer (the driver-binding point).
    public var onOffer: ((ClientChannel) -> Void)?
    public var onRescind: ((ClientChannel) -> Void)?

    // Guest memory the bus uses.
    private var allocator: GuestPageAllocator
    private var synics: [GuestSynIC] = []
    /// Pool pages (not GPAs): VP n's hypercall input page, the 0.13 interrupt page, the monitor pages.
    private var hypercallPages: [UInt64] = []
    private var interruptPage: UInt64 = 0
    private var monitorPages: (UInt64, UInt64) = (0, 0)

    private var versionIndex = 0
    private var messageConnectionID = VMBusConnectionID.message
    private var nextGPADL: UInt32 = 0xE1E10
    /// GPADLs waiting for GPADL_CREATED / GPADL_TORNDOWN, by handle.
    private var pendingGPADLs: [UInt32: PendingGPADL] = [:]

    public private(set) var malformedMessages: UInt64 = 0
    public private(set) var messagesReceived: UInt64 = 0

    /// Vector programmed into SINT2 (a guest's choice; nothing on the wire depends on it).
    public static let vmbusVector: UInt8 = 0xF3

    public init(hypervisor: any GuestHypervisor, pool: GuestBufferPool, vpCount: Int,
                versions: [VMBusVersion] = VMBusVersion.linuxPreference, logger: Logger = Logger(label: "viridian.vmbus-client")) {
        self.hypervisor = hypervisor
        self.pool = pool
        self.vpCount = vpCount
        self.versions = versions
        self.logger = logger
        allocator = GuestPageAllocator(pageCount: pool.pageCount)
    }

    /// The negotiated version once connected.
    public var version: VMBusVersion? {
        if case .connected(let v) = state { return v }
        return nil
    }

    // MARK: Memory

    /// Allocates zeroed pool pages, contiguous in this process; returns the first pool page
    /// (its guest page number is `pool.pfn(ofPage:)`).
    public func allocatePages(_ count: Int) throws(ClientError) -> UInt64 {
        do {
            let first = try allocator.allocate(pages: count)
            try pool.buffer(page: first, count: count << 12).initializeMemory(as: UInt8.self, repeating: 0)
            return first
        } catch { throw .memory(error) }
    }

    public func releasePages(_ first: UInt64, count: Int) { allocator.release(firstPage: first, pages: count) }

    /// Guest pages not yet handed out.
    public var freePages: Int { allocator.freePages }

    // MARK: Connect

    /// Programs every VP's SynIC and sends INITIATE_CONTACT for the newest version.
    public func connect() throws(ClientError) {
        if synics.isEmpty {
            for vp in 0..<vpCount {
                let pages = try allocatePages(3)
                synics.append(try GuestSynIC(vp: UInt32(vp), sint: SynICLayout.vmbusSINT, vector: Self.vmbusVector,
                                             messagePage: pages, eventPage: pages + 1, pool: pool, hypervisor: hypervisor))
                hypercallPages.append(pages + 2)
            }
            interruptPage = try allocatePages(1)
            let monitors = try allocatePages(2)
            monitorPages = (monitors, monitors + 1)
        }
        versionIndex = 0
        allOffersDelivered = false
        try contactNextVersion()
    }

    private func contactNextVersion() throws(ClientError) {
        while versionIndex < versions.count {
            let version = versions[versionIndex]
            versionIndex += 1
            let message = InitiateContact(version: version, targetVCPU: 0, interruptPage: pool.gpa(ofPage: interruptPage),
                                          messageSINT: UInt8(SynICLayout.vmbusSINT), monitorPage1: pool.gpa(ofPage: monitorPages.0),
                                          monitorPage2: pool.gpa(ofPage: monitorPages.1))
            state = .contacting(version)
            let connection = version.usesMessageConnection4 ? VMBusConnectionID.message4 : VMBusConnectionID.message
            let status = post(.initiateContact(message), connectionID: connection)
            if status == .success { return }
            // An old host without connection 4 says INVALID_CONNECTION_ID: try the next version.
            guard status == .invalidConnectionID else {
                state = .failed
                throw .hypercallFailed(status)
            }
        }
        state = .failed
        throw .noVersionAccepted
    }

    /// Sends UNLOAD (from 3.0); the host closes everything and answers UNLOAD_RESPONSE.
    public func unload() throws(ClientError) {
        guard let version, version >= .win8_1 else { throw .notConnected }
        state = .unloading
        _ = post(.unload(Unload()))
    }

    // MARK: Channels

    /// Opens a channel: allocates rings of `sendPages` and `receivePages` (control page included),
    /// creates their GPADL, then sends OPENCHANNEL. Watch `channel.state` for `.open`.
    public func open(_ channel: ClientChannel, sendPages: Int, receivePages: Int, targetVP: UInt32 = 0,
                     userData: [UInt8] = []) throws(ClientError) {
        guard version != nil else { throw .notConnected }
        guard channel.state == .offered || channel.state.isFailed else { throw .unknownChannel(channel.relid) }
        guard sendPages >= 2, receivePages >= 2 else { throw .invalidRingSize(pages: min(sendPages, receivePages)) }
        let total = sendPages + receivePages
        let first = try allocatePages(total)
        for page in [first, first + UInt64(sendPages)] {
            // Linux zeroes both control pages and sets feature_bits = 1 before sharing them.
            let control = try ring(first: page, pages: 1 + 1)
            control.initializeControlPage()
        }
        channel.ringFirstPage = first
        channel.ringPages = total
        channel.sendPages = sendPages
        channel.targetVP = targetVP
        channel.userData = userData
        let handle = allocateGPADLHandle()
        channel.ringGPADL = handle
        channel.set(.creatingRingGPADL)
        let range = GpaRange(byteCount: UInt32(total * GpaRange.pageSize), byteOffset: 0,
                             pfns: pool.pfns(first: first, count: total))
        pendingGPADLs[handle] = .ring(channel)
        do {
            for message in try GpadlMessages.split(childRelid: channel.relid, gpadl: handle, ranges: [range]) {
                _ = post(message)
            }
        } catch {
            pendingGPADLs[handle] = nil
            channel.set(.failed(.ring("\(error)")))
        }
    }

    /// Closes an open channel: CLOSECHANNEL, then the ring GPADL teardown. State goes
    /// `.closing` → `.offered` when the host answers.
    public func close(_ channel: ClientChannel) {
        guard channel.state == .open else { return }
        _ = post(.closeChannel(CloseChannel(childRelid: channel.relid)))
        channel.endpoint = nil
        channel.set(.closing)
        pendingGPADLs[channel.ringGPADL] = .teardown(channel)
        _ = post(.gpadlTeardown(GpadlTeardown(childRelid: channel.relid, gpadl: channel.ringGPADL)))
    }

    /// Creates a GPADL over arbitrary guest pages (device buffers). `completion` gets the handle,
    /// or nil if the host refused it.
    public func createGPADL(for channel: ClientChannel, firstPage: UInt64, pages: Int,
                            completion: @escaping (UInt32?) -> Void) throws(ClientError) {
        let handle = allocateGPADLHandle()
        let range = GpaRange(byteCount: UInt32(pages * GpaRange.pageSize), byteOffset: 0,
                             pfns: pool.pfns(first: firstPage, count: pages))
        pendingGPADLs[handle] = .buffer(channel.relid, completion)
        do {
            for message in try GpadlMessages.split(childRelid: channel.relid, gpadl: handle, ranges: [range]) {
                _ = post(message)
            }
        } catch {
            pendingGPADLs[handle] = nil
            throw .ring("\(error)")
        }
    }

    private func allocateGPADLHandle() -> UInt32 {
        defer { nextGPADL &+= 1 }
        return nextGPADL
    }

    private func ring(first page: UInt64, pages: Int) throws(ClientError) -> RingBuffer {
        do {
            let base = try pool.pointer(page: page, count: pages << 12)
            return try RingBuffer(control: base, data: base + GpaRange.pageSize, dataSize: (pages - 1) * GpaRange.pageSize)
        } catch let error as GuestMemoryError {
            throw .memory(error)
        } catch {
            throw .ring("\(error)")
        }
    }

    // MARK: Interrupts

    /// The VMBus interrupt handler for `vp`: event flags first, then the message slot (the order
    /// Linux uses). Call it whenever the SINT fires.
    public func handleInterrupt(vp: UInt32) {
        guard Int(vp) < synics.count else { return }
        let synic = synics[Int(vp)]
        synic.takeEvents { flag in
            if let version, version.usesPerChannelEventFlags {
                channelSignalled(UInt32(flag))
            } else if flag == 0 {
                scanInterruptPage()
            }
        }
        while let message = synic.takeMessage(hypervisor: hypervisor) {
            guard message.messageType == .vmbus else { continue }
            messagesReceived &+= 1
            do { handle(try ChannelMessage(decoding: message.payload)) } catch {
                malformedMessages &+= 1
                logger.warning("dropped malformed message from host: \(error)")
            }
        }
    }

    private func channelSignalled(_ relid: UInt32) {
        guard let channel = channels[relid], channel.state == .open else { return }
        channel.endpoint?.noteSignalReceived()
        channel.onSignal?(channel)
    }

    private func scanInterruptPage() {
        guard let page = try? pool.pointer(page: interruptPage, count: SynICLayout.pageSize / 2) else { return }
        for index in 0..<(SynICLayout.pageSize / 2 / 4) {
            // Word `index` of the 2048-byte receive half.
            let word = UnsafeAtomic<UInt32>(at: (page + index * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
            var bits = word.exchange(0, ordering: .sequentiallyConsistent)
            while bits != 0 {
                channelSignalled(UInt32(index * 32 + bits.trailingZeroBitCount))
                bits &= bits - 1
            }
        }
    }

    private func handle(_ message: ChannelMessage) {
        switch message {
        case .versionResponse(let m): versionResponse(m)
        case .offerChannel(let m): offer(m)
        case .allOffersDelivered: allOffersDelivered = true
        case .rescindChannelOffer(let m): rescind(m.childRelid)
        case .gpadlCreated(let m): gpadlCreated(m)
        case .openChannelResult(let m): openResult(m)
        case .gpadlTorndown(let m): gpadlTorndown(m)
        case .unloadResponse:
            if state == .unloading {
                state = .disconnected
                for channel in channels.values { channel.endpoint = nil }
                channels.removeAll()
                pendingGPADLs.removeAll()
            }
        case .modifyChannelResponse, .tlConnectResult:
            break
        default:
            malformedMessages &+= 1
            logger.warning("unexpected \(message.type) from host dropped")
        }
    }

    private func versionResponse(_ m: VersionResponse) {
        guard case .contacting(let version) = state else { return }
        if m.isSupported {
            messageConnectionID = version.usesMessageConnection4 ? m.messageConnectionID : VMBusConnectionID.message
            state = .connected(version)
            logger.info("VMBus \(version) negotiated")
            _ = post(.requestOffers(RequestOffers()))
        } else {
            do { try contactNextVersion() } catch { logger.error("no VMBus version accepted") }
        }
    }

    private func offer(_ m: OfferChannel) {
        if let existing = channels[m.childRelid], existing.state != .rescinded {
            logger.warning("duplicate offer for relid \(m.childRelid) dropped")
            return
        }
        if m.subChannelIndex == 0,
            channels.values.contains(where: { $0.offer.interfaceInstance == m.interfaceInstance && $0.offer.interfaceType == m.interfaceType && $0.offer.subChannelIndex == 0 })
        {
            logger.warning("second primary offer for instance \(m.interfaceInstance) dropped")
            return
        }
        let channel = ClientChannel(offer: m)
        channels[m.childRelid] = channel
        onOffer?(channel)
    }

    private func rescind(_ relid: UInt32) {
        guard let channel = channels[relid] else { return }
        if channel.state == .open { _ = post(.closeChannel(CloseChannel(childRelid: relid))) }
        // A rescinded channel's GPADLs are dropped by the host; no teardown is sent.
        pendingGPADLs = pendingGPADLs.filter { $0.value.relid != relid }
        if channel.ringPages > 0 { releasePages(channel.ringFirstPage, count: channel.ringPages) }
        channel.ringPages = 0
        channel.endpoint = nil
        channel.set(.rescinded)
        channels[relid] = nil
        onRescind?(channel)
        _ = post(.relidReleased(RelidReleased(childRelid: relid)))
    }

    private func gpadlCreated(_ m: GpadlCreated) {
        guard let pending = pendingGPADLs[m.gpadl], pending.relid == m.childRelid else { return }
        pendingGPADLs[m.gpadl] = nil
        switch pending {
        case .ring(let channel):
            guard m.creationStatus == 0 else {
                releasePages(channel.ringFirstPage, count: channel.ringPages)
                channel.ringPages = 0
                return channel.set(.failed(.gpadlRefused(m.creationStatus)))
            }
            channel.set(.opening)
            _ = post(.openChannel(OpenChannel(
                childRelid: channel.relid, openID: channel.relid, ringBufferGPADL: m.gpadl, targetVP: channel.targetVP,
                downstreamRingBufferPageOffset: UInt32(channel.sendPages), userData: channel.userData)))
        case .buffer(_, let completion):
            completion(m.creationStatus == 0 ? m.gpadl : nil)
        case .teardown:
            break
        }
    }

    private func openResult(_ m: OpenChannelResult) {
        guard let channel = channels[m.childRelid], channel.state == .opening, m.openID == channel.relid else { return }
        guard m.status == 0 else { return channel.set(.failed(.openRefused(status: m.status))) }
        do {
            let outbound = try ring(first: channel.ringFirstPage, pages: channel.sendPages)
            let inbound = try ring(first: channel.ringFirstPage + UInt64(channel.sendPages),
                                   pages: channel.ringPages - channel.sendPages)
            channel.endpoint = try ChannelEndpoint(relid: channel.relid, incoming: inbound, outgoing: outbound) {
                [unowned self, unowned channel] in self.signalHost(channel)
            }
            channel.set(.open)
        } catch {
            channel.set(.failed(.ring("\(error)")))
        }
    }

    private func gpadlTorndown(_ m: GpadlTorndown) {
        guard case .teardown(let channel) = pendingGPADLs[m.gpadl] else { return }
        pendingGPADLs[m.gpadl] = nil
        releasePages(channel.ringFirstPage, count: channel.ringPages)
        channel.ringPages = 0
        channel.set(.offered)
    }

    // MARK: Hypercalls

    /// Guest → host channel signal: HvSignalEvent on the offer's connection id (fast call); 0.13
    /// guests set their bit in the interrupt page and signal connection 2.
    private func signalHost(_ channel: ClientChannel) {
        var connection = channel.offer.connectionID
        if let version, !version.hasChannelConnectionIDs {
            if let page = try? pool.pointer(page: interruptPage, offset: SynICLayout.pageSize / 2, count: SynICLayout.pageSize / 2) {
                // Send half: bit = relid (< 2048).
                let word = UnsafeAtomic<UInt32>(at: (page + Int(channel.relid / 32) * 4).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
                _ = word.loadThenBitwiseOr(with: 1 << (channel.relid % 32), ordering: .sequentiallyConsistent)
            }
            connection = VMBusConnectionID.event
        }
        let input = SignalEventInput(connectionID: connection)
        _ = hypervisor.hypercall(vp: channel.targetVP, control: HypercallControl(.signalEvent, fast: true).rawValue,
                                 input: input.fastInput, output: 0)
    }

    /// Posts a channel message from VP 0 through its hypercall input page.
    @discardableResult
    private func post(_ message: ChannelMessage, connectionID: UInt32? = nil) -> HvStatus {
        let input = PostMessageInput(connectionID: connectionID ?? messageConnectionID, payload: message.encode())
        guard let bytes = try? input.encode(), let page = try? pool.buffer(page: hypercallPages[0], count: bytes.count) else {
            return .invalidParameter
        }
        page.copyBytes(from: bytes)
        let result = HypercallResult(rawValue: hypervisor.hypercall(
            vp: 0, control: HypercallControl(.postMessage).rawValue, input: pool.gpa(ofPage: hypercallPages[0]), output: 0))
        if result.status != .success { logger.warning("HvPostMessage(\(message.type)) failed: \(result.status)") }
        return result.status
    }
}

/// A GPADL the guest is waiting on.
enum PendingGPADL {
    case ring(ClientChannel)
    case buffer(UInt32, (UInt32?) -> Void)
    case teardown(ClientChannel)

    var relid: UInt32 {
        switch self {
        case .ring(let c), .teardown(let c): c.relid
        case .buffer(let relid, _): relid
        }
    }
}

extension ClientChannelState {
    var isFailed: Bool {
        if case .failed = self { return true }
        return false
    }
}
