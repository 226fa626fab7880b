// Viridian's echo device, host end: every in-band packet comes back as a completion with the same bytes.

import Hypervisor
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire

/// A test VSP that returns each in-band packet as a completion packet carrying the same
/// transaction id and payload. It exercises rings, batching, signal suppression and
/// back-pressure before real devices exist.
public final class EchoDevice: VMBusDevice {
    public let deviceClass = DeviceClass.viridianEcho
    public let instanceID: GUID
    private let scratch: UnsafeMutableRawBufferPointer
    private let logger: Logger

    public private(set) var packetsEchoed: UInt64 = 0
    public private(set) var protocolErrors: UInt64 = 0
    public private(set) var openCount = 0

    /// Largest payload echoed; bigger packets are dropped as protocol errors.
    public static let maximumPayload = 64 * 1024

    public init(instanceID: GUID, logger: Logger = Logger(label: "viridian.echo")) {
        self.instanceID = instanceID
        self.logger = logger
        scratch = .allocate(byteCount: Self.maximumPayload, alignment: 16)
    }

    deinit { scratch.deallocate() }

    public func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32 {
        openCount += 1
        return 0
    }

    public func close(_ channel: ChannelEndpoint) {}

    public func channelSignalled(_ channel: ChannelEndpoint) {
        channel.reader.mask()
        while true {
            let blocked: Bool
            do { blocked = try echoAvailable(channel) } catch {
                protocolErrors &+= 1
                logger.warning("echo channel \(channel.relid): \(error); channel abandoned")
                _ = channel.reader.unmask()
                return
            }
            channel.commitWrites()
            channel.commitReads()
            let more = channel.reader.unmask()
            if blocked || !more { return }
        }
    }

    /// Echoes until the inbound ring is empty (false) or the outbound ring is full (true).
    private func echoAvailable(_ channel: ChannelEndpoint) throws(RingError) -> Bool {
        while let packet = try channel.reader.next() {
            guard packet.type == .dataInBand, packet.payloadLength <= scratch.count else {
                protocolErrors &+= 1
                continue
            }
            let n = packet.copyPayload(into: scratch)
            let payload = UnsafeRawBufferPointer(rebasing: scratch[0..<n])
            if try channel.writer.tryWrite(type: .completion, transactionID: packet.transactionID, payload: payload) {
                channel.writer.clearSpaceRequest()
                packetsEchoed &+= 1
                continue
            }
            try channel.reader.putBack(packet)
            channel.commitWrites()
            if !channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: n)) { return true }
        }
        return false
    }
}
