// The guest end shared by every integration service: answers negotiation, dispatches requests, echoes replies.

import Logging
import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

/// A guest integration service: what it supports and how it answers.
public protocol ICGuestService: AnyObject {
    var serviceType: ICMessageType { get }
    /// Framework and service versions in the guest's order of preference (Linux's lists).
    var frameworkVersions: [ICVersion] { get }
    var serviceVersions: [ICVersion] { get }
    /// Handles one request. Edit `packet` (header + body) in place and return the status, or
    /// return nil and answer later with `ICClient.respond`.
    func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32?
    /// Periodic work (with the bus locked), `now` in monotonic ns.
    func tick(now: UInt64)
    /// The channel is going away: end whatever a request left in progress (called without the bus locked).
    func channelClosed()
}

extension ICGuestService {
    public func tick(now: UInt64) {}
    public func channelClosed() {}
}

/// The guest driver of one IC channel (Linux's hv_utils shape): every request is answered by
/// echoing its buffer with TRANSACTION|RESPONSE and a status.
public final class ICClient {
    public let channel: ClientChannel
    public let service: any ICGuestService
    let logger: Logger
    public private(set) var negotiated: ICVersion?
    public private(set) var requestsAnswered: UInt64 = 0
    public private(set) var protocolErrors: UInt64 = 0
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 8)
    /// Largest IC packet accepted (Linux reads at most 16 KiB on KVP, 4 KiB elsewhere).
    public static let maximumPacket = 16384

    /// `channel` must be open.
    public init(channel: ClientChannel, service: any ICGuestService, logger: Logger) {
        self.channel = channel
        self.service = service
        self.logger = logger
        channel.onSignal = { [weak self] _ in self?.drain() }
        drain()
    }

    deinit { scratch.deallocate() }

    /// Reads and answers every waiting request.
    public func drain() {
        guard let endpoint = channel.endpoint else { return }
        let failure = endpoint.drainInbound { packet in
            guard packet.type == .dataInBand, packet.payloadLength <= scratch.count else {
                protocolErrors &+= 1
                return
            }
            let n = packet.copyPayload(into: scratch)
            // Free the slot before answering: the host may send its next request at once.
            endpoint.commitReads()
            handle(Array(UnsafeRawBufferPointer(rebasing: scratch[0..<n])), transactionID: packet.transactionID)
        }
        if let failure {
            protocolErrors &+= 1
            logger.warning("\(service.serviceType): corrupt ring from the host: \(failure)")
        }
    }

    private func handle(_ bytes: [UInt8], transactionID: UInt64) {
        var packet = bytes
        guard let header = try? ICHeader(decoding: packet) else {
            protocolErrors &+= 1
            logger.warning("\(service.serviceType): malformed IC packet dropped (\(bytes.count) bytes)")
            return
        }
        var status: UInt32? = ICStatus.ok
        if header.type == ICMessageType.negotiate.rawValue {
            status = negotiate(header, packet: &packet)
        } else if header.type != service.serviceType.rawValue {
            status = ICStatus.fail
        } else if let version = negotiated {
            status = service.handle(header, packet: &packet, version: version, transactionID: transactionID, client: self)
        } else {
            status = ICStatus.fail
        }
        if let status { respond(packet, status: status, transactionID: transactionID) }
    }

    /// Linux's answer: the guest's first preferred framework and service version the host lists.
    private func negotiate(_ header: ICHeader, packet: inout [UInt8]) -> UInt32 {
        guard let n = try? ICNegotiation(decoding: packet[ICHeader.size...]) else {
            protocolErrors &+= 1
            return ICStatus.fail
        }
        let framework = ICNegotiation.choose(service.frameworkVersions, from: n.frameworks)
        let version = ICNegotiation.choose(service.serviceVersions, from: n.services)
        guard packet.count >= ICHeader.size + 16 else { return ICStatus.fail }
        if let framework, let version {
            packet.putLE(UInt16(1), at: ICHeader.size)
            packet.putLE(UInt16(1), at: ICHeader.size + 2)
            packet.putLE(framework.major, at: ICHeader.size + 8)
            packet.putLE(framework.minor, at: ICHeader.size + 10)
            packet.putLE(version.major, at: ICHeader.size + 12)
            packet.putLE(version.minor, at: ICHeader.size + 14)
            packet.putLE(UInt16(0x10), at: 18)
            negotiated = version
            logger.info("\(service.serviceType): framework \(framework), service \(version)")
            return header.status
        }
        packet.putLE(UInt16(0), at: ICHeader.size)
        packet.putLE(UInt16(0), at: ICHeader.size + 2)
        logger.warning("\(service.serviceType): no common version with the host")
        return ICStatus.fail
    }

    /// Sends `packet` back as the response with `status` (call with the bus locked).
    public func respond(_ packet: [UInt8], status: UInt32, transactionID: UInt64) {
        guard let endpoint = channel.endpoint, packet.count >= ICHeader.size else { return }
        var reply = packet
        reply.putLE(status, at: 20)
        reply[25] = ICFlags.transaction | ICFlags.response
        do {
            if try endpoint.writer.tryWrite(type: .dataInBand, transactionID: transactionID, payload: reply) {
                requestsAnswered &+= 1
                endpoint.commitWrites()
            } else {
                logger.warning("\(service.serviceType): ring full, reply dropped")
            }
        } catch {
            logger.warning("\(service.serviceType): cannot reply: \(error)")
        }
    }
}
