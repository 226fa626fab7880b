// Viridian's echo device, guest end: sends in-band packets and collects the completions.

import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

/// The guest driver for the echo device. `send` queues requests (batch them, then `flush`);
/// completions arrive through `onCompletion` when the host signals.
public final class EchoClient {
    public let channel: ClientChannel
    /// Called for every completion with its transaction id and payload (valid during the call).
    public var onCompletion: ((UInt64, UnsafeRawBufferPointer) -> Void)?
    private let scratch: UnsafeMutableRawBufferPointer
    public private(set) var completions: UInt64 = 0
    public private(set) var protocolErrors: UInt64 = 0

    /// `channel` must be open.
    public init(channel: ClientChannel) {
        self.channel = channel
        scratch = .allocate(byteCount: EchoDevice.maximumPayload, alignment: 16)
        channel.onSignal = { [weak self] _ in self?.drain() }
    }

    deinit { scratch.deallocate() }

    /// Writes one request (not yet visible to the host). Returns false if the ring is full.
    public func send(_ payload: UnsafeRawBufferPointer, transactionID: UInt64) throws(RingError) -> Bool {
        guard let endpoint = channel.endpoint else { return false }
        return try endpoint.writer.tryWrite(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested,
                                            transactionID: transactionID, payload: payload)
    }

    /// Publishes the requests written so far and signals the host if the ring rules say so.
    public func flush() { channel.endpoint?.commitWrites() }

    /// Reads every completion waiting in the inbound ring.
    public func drain() {
        guard let endpoint = channel.endpoint else { return }
        let failure = endpoint.drainInbound { packet in
            guard packet.type == .completion, packet.payloadLength <= scratch.count else {
                protocolErrors &+= 1
                return
            }
            let n = packet.copyPayload(into: scratch)
            completions &+= 1
            onCompletion?(packet.transactionID, UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
        }
        if failure != nil { protocolErrors &+= 1 }
    }
}

extension EchoClient {
    /// After `send` returned false: publishes pending_send_sz for a packet of `payloadSize`, so the
    /// host signals when room appears. Returns true if the room is already there.
    public func requestRoom(payloadSize: Int) -> Bool {
        guard let endpoint = channel.endpoint else { return false }
        return endpoint.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: payloadSize))
    }

    /// Withdraws a room request once sending works again.
    public func roomGranted() { channel.endpoint?.writer.clearSpaceRequest() }
}
