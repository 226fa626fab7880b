// Binds synthetic NICs to guest TAP devices: netvsc below, the guest's network stack above.

import Atomics
import CSystem
import Foundation
import Glibc
import Logging
import PartitionLink
import SyntheticNetwork
import VMBusClient
import VMBusWire

/// One guest NIC, as `viridian-agent nic list` shows it.
public struct NICInfo: Codable, Sendable, Equatable {
    public var index: Int
    public var relid: UInt32
    public var tap: String
    public var netns: String?
    public var mac: String
    public var mtu: Int
    public var carrier: Bool
    public var nvspVersion: String
    /// Channels (and TAP queues): the primary plus sub-channels.
    public var queues: Int
    /// The adapter's VMBus instance id (what KVP SET_IP_INFO names it by).
    public var instance: String?
}

/// A synthetic NIC bridged to a guest TAP (or, relayed to a child partition, to a `FramePipe`
/// end). Frames from the TAP are read straight into transmit
/// slots in guest memory by one thread and sent in batches (one bus lock and at most one signal
/// per batch); frames from the host are written to the TAP from the receive buffer by the VP
/// thread that handles the channel's interrupt, with no copy.
final class GuestNIC: @unchecked Sendable {
    let index: Int
    let session: AgentSession
    let client: NetworkClient
    /// One TAP queue per channel (a multi-queue TAP when the host granted sub-channels), or the one pipe end of a relayed NIC.
    let taps: [any FramePort]
    var tap: any FramePort { taps[0] }
    /// The TAP's name, or the pipe's.
    let name: String
    let logger: Logger
    private var threads: [OSThread] = []
    private let stopping = ManagedAtomic<Bool>(false)
    /// Per transmit thread: rung when slots come back while it waits for them (or to stop it).
    /// One eventfd per thread: two readers of one blocking eventfd could both see it readable
    /// and the second would block in read() for good.
    private let rooms: [EventFD]
    private let waitingForRoom: [ManagedAtomic<Bool>]
    private let receiveHeader = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
    private let receiveIOV = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 2)
    static let batch = 32

    init(index: Int, session: AgentSession, client: NetworkClient, taps: [any FramePort], name: String, logger: Logger) throws {
        self.index = index
        self.name = name
        self.session = session
        self.client = client
        self.taps = taps
        self.logger = logger
        rooms = try taps.map { _ in try EventFD() }
        waitingForRoom = taps.map { _ in ManagedAtomic<Bool>(false) }
    }

    deinit {
        receiveHeader.deallocate()
        receiveIOV.deallocate()
    }

    /// Hooks the client's callbacks (called with the bus locked) and starts a transmit thread per queue.
    func start() {
        let mtu = client.mtu
        client.onFrame = { [unowned self] frame, info, queue in
            let head = UnsafeRawBufferPointer(rebasing: frame[0..<min(frame.count, OffloadTranslation.headerBytes)])
            OffloadTranslation.virtioHeader(receive: info, headers: head, frameLength: frame.count, mtu: mtu).store(to: receiveHeader)
            receiveIOV[0] = iovec(iov_base: receiveHeader, iov_len: VirtioNetHeader.size)
            receiveIOV[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count)
            _ = taps[min(queue, taps.count - 1)].send(UnsafeBufferPointer(receiveIOV))
        }
        client.onLinkChange = { [unowned self] up in tap.setCarrier(up) }
        client.onTransmitRoom = { [unowned self] in
            for (i, waiting) in waitingForRoom.enumerated() where waiting.load(ordering: .relaxed) { rooms[i].ring() }
        }
        tap.setCarrier(client.linkUp)
        for queue in 0..<taps.count { threads.append(OSThread { [self] in transmitLoop(queue: queue) }) }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        for room in rooms { room.ring() }
        for t in threads { t.join() }
        threads.removeAll()
        session.withBus { _ in
            client.onFrame = nil
            client.onTransmitRoom = nil
            client.onLinkChange = nil
        }
    }

    /// Reads frames from one TAP queue into slots and sends them on that queue's channel, a batch per bus lock.
    private func transmitLoop(queue: Int) {
        let tap = taps[queue]
        let room = rooms[queue]
        let waitingForRoom = waitingForRoom[queue]
        var slots: [(index: Int, frame: UnsafeMutableRawBufferPointer)] = []
        var ready: [(slot: Int, length: Int, info: PacketInfo)] = []
        slots.reserveCapacity(Self.batch)
        ready.reserveCapacity(Self.batch)
        let header = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        let iov = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 2)
        defer {
            header.deallocate()
            iov.deallocate()
        }
        var fds = [pollfd(fd: tap.descriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: room.fd, events: Int16(POLLIN), revents: 0)]
        while !stopping.load(ordering: .relaxed) {
            // Read while there are slots and frames.
            var drained = false
            while let slot = slots.last, ready.count < Self.batch {
                iov[0] = iovec(iov_base: header, iov_len: VirtioNetHeader.size)
                iov[1] = iovec(iov_base: slot.frame.baseAddress, iov_len: slot.frame.count)
                guard let n = tap.receive(UnsafeBufferPointer(iov)) else {
                    drained = true
                    break
                }
                let length = n - VirtioNetHeader.size
                guard length >= 14 else { continue }
                let head = UnsafeMutableRawBufferPointer(rebasing: slot.frame[0..<min(length, OffloadTranslation.headerBytes)])
                guard let info = OffloadTranslation.packetInfo(transmit: VirtioNetHeader(loading: header), headers: head, frameLength: length) else {
                    continue  // an offload NDIS cannot express: dropped
                }
                slots.removeLast()
                ready.append((slot.index, length, info))
            }
            // Send what was read and refill the slots, under one lock.
            session.withBus { _ in
                var sent = 0
                for r in ready {
                    guard client.send(slot: r.slot, length: r.length, info: r.info, queue: queue) else { break }
                    sent += 1
                }
                ready.removeFirst(sent)
                client.flush(queue: queue)
                while slots.count < Self.batch, let s = client.takeSlot() { slots.append(s) }
                waitingForRoom.store(!ready.isEmpty || slots.isEmpty, ordering: .relaxed)
            }
            if waitingForRoom.load(ordering: .relaxed) {
                // Ring full or no slots: wait for completions (bounded, in case one was missed).
                var fd = fds[1]
                if poll(&fd, 1, 10) > 0, !stopping.load(ordering: .relaxed) { room.wait() }
                waitingForRoom.store(false, ordering: .relaxed)
            } else if drained && ready.isEmpty {
                fds[0].revents = 0
                fds[1].revents = 0
                if poll(&fds, 2, 1000) > 0, fds[1].revents != 0, !stopping.load(ordering: .relaxed) { room.wait() }
            }
        }
        session.withBus { _ in for s in slots { client.returnSlot(s.index) } }
    }
}

/// The agent's NICs: opens each synthetic network adapter, initializes netvsc, and bridges it
/// to a guest TAP named by `tapPattern` (%d = index) in `netns`, with the MAC, MTU and link the
/// host gives.
public final class NetworkAttachments: @unchecked Sendable {
    let session: AgentSession
    let tapPattern: String
    let netns: String?
    let stateDir: String
    let timeoutMs: Int
    let logger: Logger
    private var nics: [GuestNIC] = []
    /// NICs (by index) that a child partition's adapter takes over: their frames go to this pipe
    /// end instead of a guest TAP (set before `attach`).
    public var relayed: [Int: FramePipeEnd] = [:]

    public init(session: AgentSession, tapPattern: String, netns: String?, stateDir: String, timeoutMs: Int) {
        self.session = session
        self.tapPattern = tapPattern
        self.netns = netns?.isEmpty == true ? nil : netns
        self.stateDir = stateDir
        self.timeoutMs = timeoutMs
        logger = session.logger
    }

    public static func statePath(_ stateDir: String) -> String { stateDir + "/nics.json" }

    /// Brings up every NIC on the bus. A NIC that fails is logged and skipped.
    public func attach() throws {
        let offered = session.withBus {
            $0.channels.values.filter { $0.deviceClass == .network && $0.offer.subChannelIndex == 0 && $0.state == .offered }.sorted { $0.relid < $1.relid }
        }
        for channel in offered {
            let index = nics.count
            do { nics.append(try bringUp(channel, index: index)) } catch { logger.error("network: NIC \(index) (relid \(channel.relid)): \(error)") }
        }
        try record()
    }

    private func bringUp(_ channel: ClientChannel, index: Int) throws -> GuestNIC {
        // netvsc's ring: 128 pages of payload each way, plus the control page.
        try session.withBus { try $0.open(channel, sendPages: 129, receivePages: 129) }
        guard try session.wait(timeoutMs: timeoutMs, until: { _ in channel.state != .creatingRingGPADL && channel.state != .opening }),
            channel.state == .open
        else { throw AgentError.protocolFailure("the channel did not open") }
        let logger = self.logger
        let client = try session.withBus { bus in
            // As much of Linux's 16 MiB receive buffer as guest memory allows (at least 2 MiB).
            var size = 16 << 20
            while size > 2 << 20 && bus.freePages * 4096 < size + (6 << 20) { size /= 2 }
            // One queue per VP, as Linux asks.
            return try NetworkClient(channel: channel, bus: bus, receiveBufferBytes: size, queues: session.link.vpCount, logger: logger)
        }
        guard try session.wait(timeoutMs: timeoutMs, until: { _ in client.state != .initializing }), client.state == .ready else {
            throw AgentError.protocolFailure("netvsc: \(session.withBus { _ in client.state })")
        }
        try openSubChannels(of: client)
        if let pipe = relayed[index] {
            let nic = try GuestNIC(index: index, session: session, client: client, taps: [pipe], name: pipe.name, logger: logger)
            session.withBus { _ in nic.start() }
            logger.info("network: NIC \(index) relayed to a child partition (\(pipe.name)), MAC \(MACAddress.format(client.mac)), MTU \(client.mtu)")
            return nic
        }
        let name = tapPattern.replacingOccurrences(of: "%d", with: "\(index)")
        let queues = session.withBus { _ in client.queueCount }
        var taps = [try TapDevice(name: name, namespace: netns, multiQueue: queues > 1)]
        for _ in 1..<queues { taps.append(try TapDevice(name: taps[0].name, namespace: netns, multiQueue: true)) }
        let tap = taps[0]
        try tap.configure(mac: client.mac, mtu: client.mtu, up: true)
        for t in taps { t.setOffload(TunOffload.checksum | TunOffload.tso4 | TunOffload.tso6 | TunOffload.tsoECN) }
        let nic = try GuestNIC(index: index, session: session, client: client, taps: taps, name: tap.name, logger: logger)
        session.withBus { _ in nic.start() }
        logger.info("network: NIC \(index) = TAP \(tap.name)\(netns.map { " (netns \($0))" } ?? ""), MAC \(MACAddress.format(client.mac)), MTU \(client.mtu), link \(client.linkUp ? "up" : "down")")
        return nic
    }

    /// Opens the sub-channels the host granted, each on its own VP, and turns receive scaling on.
    private func openSubChannels(of client: NetworkClient) throws {
        let granted = session.withBus { _ in client.grantedSubChannels }
        let subs = try session.openSubChannels(of: client.channel, count: granted, pages: 129, timeoutMs: timeoutMs)
        guard !subs.isEmpty else { return }
        session.withBus { _ in
            for sub in subs { client.addSubChannel(sub) }
            client.enableReceiveScaling()
        }
    }

    /// The NICs now, as `nic list` shows them.
    public var list: [NICInfo] {
        session.withBus { _ in
            nics.map { n in
                NICInfo(index: n.index, relid: n.client.channel.relid, tap: n.name, netns: relayed[n.index] == nil ? netns : nil, mac: MACAddress.format(n.client.mac),
                        mtu: n.client.mtu, carrier: n.client.linkUp, nvspVersion: "0x" + String(n.client.version, radix: 16),
                        queues: n.taps.count, instance: n.client.channel.offer.interfaceInstance.description)
            }
        }
    }

    /// Stops every NIC (their TAPs go away) and forgets the state file.
    public func stop() {
        for nic in nics { nic.stop() }
        nics.removeAll()
        unlink(Self.statePath(stateDir))
    }

    private var recorded: [NICInfo]?

    /// Writes the list for `viridian-agent nic list` when it changed (link state, new NICs);
    /// `current` is `list` when the caller has just read it.
    public func record(_ current: [NICInfo]? = nil) throws {
        let now = current ?? list
        guard now != recorded else { return }
        recorded = now
        try AgentStateFile.write(now, to: Self.statePath(stateDir))
    }
}
