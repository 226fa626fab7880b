// The host end shared by every integration service: negotiation, one transaction at a time, timeouts.

import Hypervisor
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire

/// What a finished host request yields: the guest's header and whole packet, or why there is none.
public enum ICOutcome: Sendable {
    case answered(ICHeader, [UInt8])
    case timedOut
    case notConnected
}

/// Base of the integration-service providers (VSPs). The host proposes versions when the guest
/// opens the channel, then sends one request at a time and matches the guest's echo to it.
/// Subclasses add their messages and, through `tick(now:)`, their periodic work.
open class ICProvider: VMBusDevice {
    public let deviceClass: DeviceClass
    public let instanceID: GUID
    public let serviceType: ICMessageType
    /// Service versions this host offers, in its order.
    public let serviceVersions: [ICVersion]
    public static let frameworkVersions = [ICVersion(1, 0), ICVersion(3, 0)]
    /// Seconds a request may wait for its answer.
    public var requestTimeoutNs: UInt64 = 30_000_000_000
    let logger: Logger

    public private(set) var negotiated: (framework: ICVersion, service: ICVersion)?
    var channel: ChannelEndpoint?
    private var outstanding: (type: UInt16, sentAt: UInt64, completion: (ICOutcome) -> Void)?
    private var queue: [(type: ICMessageType, version: ICVersion?, body: [UInt8], completion: (ICOutcome) -> Void)] = []
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 8)
    public private(set) var protocolErrors: UInt64 = 0
    /// Monotonic now in ns, supplied by whoever drives the provider (the partition loop).
    public var now: () -> UInt64

    public init(deviceClass: DeviceClass, instanceID: GUID, serviceType: ICMessageType, serviceVersions: [ICVersion],
                logger: Logger, now: @escaping () -> UInt64) {
        self.deviceClass = deviceClass
        self.instanceID = instanceID
        self.serviceType = serviceType
        self.serviceVersions = serviceVersions
        self.logger = logger
        self.now = now
    }

    deinit { scratch.deallocate() }

    /// IC channels are message-mode pipes.
    public var offerFlags: OfferChannel.Flags { [.namedPipeMode] }
    public var offerUserDefined: [UInt8] { [4, 0, 0, 0] }

    public var isConnected: Bool { channel != nil && negotiated != nil }

    // MARK: VMBusDevice

    public func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32 {
        self.channel = channel
        negotiated = nil
        let body = ICNegotiation(frameworks: Self.frameworkVersions, services: serviceVersions).encoded
        transmit(type: .negotiate, version: ICVersion(1, 0), framework: ICVersion(1, 0), body: body) { [weak self] outcome in
            self?.negotiationDone(outcome)
        }
        return 0
    }

    public func close(_ channel: ChannelEndpoint) {
        self.channel = nil
        negotiated = nil
        let pending = outstanding
        outstanding = nil
        pending?.completion(.notConnected)
        let queued = queue
        queue.removeAll()
        for q in queued { q.completion(.notConnected) }
        disconnected()
    }

    public func channelSignalled(_ channel: ChannelEndpoint) {
        let failure = channel.drainInbound { packet in
            guard packet.type == .dataInBand, packet.payloadLength <= scratch.count else {
                protocolErrors &+= 1
                return
            }
            let n = packet.copyPayload(into: scratch)
            channel.commitReads()
            received(Array(UnsafeRawBufferPointer(rebasing: scratch[0..<n])))
        }
        if let failure {
            protocolErrors &+= 1
            logger.warning("\(deviceClass.name): corrupt ring: \(failure)")
        }
        pump()
    }

    // MARK: Requests

    /// Queues a request; `completion` runs on the partition thread when the guest answers.
    public func request(_ type: ICMessageType, body: [UInt8], completion: @escaping (ICOutcome) -> Void) {
        guard channel != nil else { return completion(.notConnected) }
        queue.append((type, nil, body, completion))
        pump()
    }

    /// Whether a request is waiting for its answer.
    public var isBusy: Bool { outstanding != nil }

    /// Called by the partition loop; expires overdue requests and runs subclass timers.
    open func tick(now: UInt64) {
        if let o = outstanding, now > o.sentAt, now - o.sentAt > requestTimeoutNs {
            logger.debug("\(deviceClass.name): request type \(o.type) timed out")
            outstanding = nil
            o.completion(.timedOut)
            pump()
        }
    }

    /// The next time `tick` has work, if any.
    open var nextDeadline: UInt64? { outstanding.map { $0.sentAt + requestTimeoutNs } }

    /// Subclass hook: versions agreed, service may start.
    open func connected() {}
    /// Subclass hook: channel gone.
    open func disconnected() {}

    private func pump() {
        guard outstanding == nil, let negotiated, let next = queue.first else { return }
        if transmit(type: next.type, version: negotiated.service, framework: negotiated.framework, body: next.body,
                    completion: next.completion) {
            queue.removeFirst()
        }
    }

    /// Writes one request. False when the ring is full: the request stays queued and goes out
    /// when the guest signals that it made room.
    @discardableResult
    private func transmit(type: ICMessageType, version: ICVersion, framework: ICVersion, body: [UInt8],
                          completion: @escaping (ICOutcome) -> Void) -> Bool {
        guard let channel else {
            completion(.notConnected)
            return true
        }
        let header = ICHeader(framework: framework, type: type, version: version, bodySize: body.count)
        let packet = ICHeader.packet(header, body: body)
        do {
            guard try channel.writer.tryWrite(type: .dataInBand, transactionID: 0, payload: packet) else {
                _ = channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: packet.count))
                return false
            }
        } catch {
            logger.warning("\(deviceClass.name): cannot send: \(error)")
            completion(.timedOut)
            return true
        }
        channel.writer.clearSpaceRequest()
        outstanding = (type.rawValue, now(), completion)
        channel.commitWrites()
        return true
    }

    private func received(_ packet: [UInt8]) {
        guard let header = try? ICHeader(decoding: packet), header.isResponse, header.flags & ICFlags.transaction != 0,
            let o = outstanding, o.type == header.type
        else {
            protocolErrors &+= 1
            logger.debug("\(deviceClass.name): unexpected packet from the guest dropped")
            return
        }
        outstanding = nil
        o.completion(.answered(header, packet))
        pump()
    }

    private func negotiationDone(_ outcome: ICOutcome) {
        guard case .answered(_, let packet) = outcome,
            let n = try? ICNegotiation(decoding: packet[ICHeader.size...]), n.frameworks.count == 1, n.services.count == 1,
            Self.frameworkVersions.contains(n.frameworks[0]), serviceVersions.contains(n.services[0])
        else {
            protocolErrors &+= 1
            logger.warning("\(deviceClass.name): version negotiation failed")
            return
        }
        negotiated = (n.frameworks[0], n.services[0])
        logger.info("\(deviceClass.name): framework \(n.frameworks[0]), service \(n.services[0])")
        connected()
        pump()
    }
}
