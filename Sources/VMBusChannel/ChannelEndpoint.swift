// One end of an open channel: the ring it reads, the ring it writes, and how it signals the other end.

import VMBusRing
import VMBusWire

/// What a device (VSP) or a driver (VSC) holds once a channel is open: an inbound ring reader,
/// an outbound ring writer and a signal to the peer. The same type serves both ends; only the
/// signal differs (host: set an event flag; guest: HvSignalEvent).
public final class ChannelEndpoint {
    /// The channel id (relid) this endpoint belongs to.
    public let relid: UInt32
    public var reader: RingReader
    public var writer: RingWriter
    private let signalPeer: () -> Void

    /// Sees each packet as it is committed (tracing); nil costs nothing.
    public var packetObserver: (any PacketObserver)?

    public private(set) var signalsSent: UInt64 = 0
    public private(set) var signalsReceived: UInt64 = 0

    /// `incoming` is read, `outgoing` is written; `signal` notifies the peer.
    public init(relid: UInt32, incoming: RingBuffer, outgoing: RingBuffer, signal: @escaping () -> Void) throws(RingError) {
        self.relid = relid
        reader = try RingReader(ring: incoming)
        writer = try RingWriter(ring: outgoing)
        signalPeer = signal
    }

    /// Signals the peer unconditionally (counted).
    public func signal() {
        signalsSent &+= 1
        signalPeer()
    }

    /// Notes that the peer signalled this end (called by the transport before the device runs).
    public func noteSignalReceived() { signalsReceived &+= 1 }

    /// Publishes written packets and signals the peer if the ring rules require it.
    public func commitWrites() {
        if let packetObserver { writer.forEachUncommitted { packetObserver.observe(relid: relid, outgoing: true, packet: $0) } }
        if writer.commit() { signal() }
    }

    /// Publishes consumed packets and signals a blocked peer if the ring rules require it.
    public func commitReads() {
        if let packetObserver { reader.forEachUncommitted { packetObserver.observe(relid: relid, outgoing: false, packet: $0) } }
        if reader.commit() { signal() }
    }
}

/// Receives every packet an endpoint commits: what a trace records.
public protocol PacketObserver: AnyObject {
    /// `outgoing`: written by this end; otherwise read by it. `packet` is valid during the call.
    func observe(relid: UInt32, outgoing: Bool, packet: IncomingPacket)
}

extension ChannelEndpoint {
    /// Drains the inbound ring under the interrupt-mask protocol: mask, hand every packet to `body`,
    /// publish the read index (signalling a blocked writer if due), unmask, and go again if more
    /// arrived meanwhile. A corrupt ring stops the drain with the interrupt still masked (the
    /// channel is abandoned) and the error is returned.
    @discardableResult
    public func drainInbound(_ body: (IncomingPacket) -> Void) -> RingError? {
        reader.mask()
        repeat {
            do throws(RingError) {
                while let packet = try reader.next() { body(packet) }
            } catch {
                return error
            }
            commitReads()
        } while reader.unmask()
        return nil
    }
}
