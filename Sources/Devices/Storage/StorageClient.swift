// The synthetic SCSI controller, guest end: vstor initialization and SCSI commands over GPA-direct buffers.

import GuestMemory
import Logging
import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

/// What the host answered to one SCSI command.
public struct SCSICompletion: Equatable, Sendable {
    public var ntStatus: UInt32
    public var srbStatus: UInt8
    public var scsiStatus: UInt8
    public var sense: [UInt8]
    public var transferred: Int

    public init(ntStatus: UInt32, srbStatus: UInt8, scsiStatus: UInt8, sense: [UInt8], transferred: Int) {
        self.ntStatus = ntStatus
        self.srbStatus = srbStatus
        self.scsiStatus = scsiStatus
        self.sense = sense
        self.transferred = transferred
    }

    public var isGood: Bool { srbStatus & 0x3F == SRBStatus.success && scsiStatus == 0 }
    /// Sense key, when the host sent autosense.
    public var senseKey: UInt8? { srbStatus & SRBStatus.autosenseValid != 0 && sense.count > 2 ? sense[2] & 0x0F : nil }
}

/// A buffer in guest memory that the host reads or writes through GPA-direct pages.
public final class GuestBuffer {
    public let firstPage: UInt64
    public let pages: Int
    public let bytes: UnsafeMutableRawBufferPointer

    public init(client: VMBusClient, bytes count: Int) throws(ClientError) {
        pages = (count + GpaRange.pageSize - 1) / GpaRange.pageSize
        firstPage = try client.allocatePages(pages)
        do { bytes = try client.memory.buffer(gpa: firstPage << 12, count: pages << 12) } catch { throw .memory(error) }
    }

    /// The GPA-direct range for the first `length` bytes.
    func range(_ length: Int) -> GpaRange {
        let n = max(1, (length + GpaRange.pageSize - 1) / GpaRange.pageSize)
        return GpaRange(byteCount: UInt32(length), byteOffset: 0, pfns: (0..<UInt64(n)).map { firstPage + $0 })
    }
}

/// storvsc in user space: initializes the controller, then sends SRBs and matches completions.
public final class StorageClient {
    /// Where the controller's initialization is.
    public enum State: Equatable, Sendable {
        case initializing
        case ready
        case failed(String)
    }

    public let channel: ClientChannel
    let logger: Logger
    public private(set) var state = State.initializing
    public private(set) var protocolVersion: UInt16 = 0
    public private(set) var maximumTransferBytes: UInt32 = 0
    private var pending: [UInt64: (VStorPacket) -> Void] = [:]
    private var nextTransaction: UInt64 = 1
    private var versionsToTry = VStorVersion.linuxPreference
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
    public private(set) var protocolErrors: UInt64 = 0
    /// Called when the host says LUNs came or went (ENUMERATE_BUS or REMOVE_DEVICE).
    public var onBusChange: (() -> Void)?
    /// Sub-channels asked for at initialization (if the host supports multi-channel).
    public let requestedSubChannels: Int
    /// How many the host agreed to offer.
    public private(set) var grantedSubChannels = 0
    /// Open sub-channels that carry I/O beside the primary.
    public private(set) var subChannels: [ClientChannel] = []
    private var nextChannel = 0

    /// `channel` must be open. Starts the initialization sequence at once.
    public init(channel: ClientChannel, subChannels: Int = 0, logger: Logger) {
        self.channel = channel
        self.logger = logger
        requestedSubChannels = subChannels
        channel.onSignal = { [weak self] in self?.drain($0) }
        step(.beginInitialization)
    }

    /// Adds an open sub-channel (same class and instance as the primary, index ≥ 1) for I/O.
    public func addSubChannel(_ sub: ClientChannel) {
        guard sub.state == .open, sub.offer.interfaceInstance == channel.offer.interfaceInstance, sub.offer.subChannelIndex > 0 else { return }
        sub.onSignal = { [weak self] in self?.drain($0) }
        subChannels.append(sub)
    }

    deinit { scratch.deallocate() }

    public var outstanding: Int { pending.count }

    // MARK: Initialization

    private func step(_ op: VStorOperation, body: [UInt8] = []) {
        let sent = send(VStorPacket(operation: op, body: body)) { [weak self] reply in self?.initialized(op, reply) }
        if !sent { state = .failed("ring full during initialization") }
    }

    private func initialized(_ op: VStorOperation, _ reply: VStorPacket) {
        guard reply.op == .completeIO else { return state = .failed("\(op): host answered operation \(reply.operation)") }
        switch op {
        case .beginInitialization:
            guard reply.status == NTStatus.success else { return state = .failed("BEGIN_INITIALIZATION: 0x\(String(reply.status, radix: 16))") }
            queryVersion()
        case .queryProtocolVersion:
            if reply.status == NTStatus.success {
                protocolVersion = reply.body.le(UInt16.self, at: 0)
                step(.queryProperties)
            } else {
                queryVersion()
            }
        case .queryProperties:
            guard reply.status == NTStatus.success, let p = try? VStorChannelProperties(decoding: reply.body) else {
                return state = .failed("QUERY_PROPERTIES refused")
            }
            maximumTransferBytes = p.maximumTransferBytes
            multiChannel = p.supportsMultiChannel
            maximumChannels = p.maximumChannelCount
            step(.endInitialization)
        case .endInitialization:
            guard reply.status == NTStatus.success else { return state = .failed("END_INITIALIZATION refused") }
            if requestedSubChannels > 0 && multiChannel {
                var body = [UInt8](repeating: 0, count: 4)
                body.putLE(UInt16(min(requestedSubChannels, Int(maximumChannels))), at: 0)
                step(.createSubChannels, body: body)
            } else {
                becomeReady()
            }
        case .createSubChannels:
            if reply.status == NTStatus.success { grantedSubChannels = min(requestedSubChannels, Int(maximumChannels)) }
            becomeReady()
        default:
            break
        }
    }

    private var multiChannel = false
    private var maximumChannels: UInt16 = 0

    private func becomeReady() {
        state = .ready
        logger.info("storvsc: protocol 0x\(String(protocolVersion, radix: 16)), max transfer \(maximumTransferBytes), \(grantedSubChannels) sub-channel(s)")
    }

    private func queryVersion() {
        guard !versionsToTry.isEmpty else { return state = .failed("the host accepts none of the vstor versions offered") }
        let version = versionsToTry.removeFirst()
        var body = [UInt8](repeating: 0, count: 4)
        body.putLE(version, at: 0)
        step(.queryProtocolVersion, body: body)
    }

    // MARK: Commands

    /// Sends one SCSI command. `buffer` holds the data (in or out) for `length` bytes. Returns
    /// false when the ring is full (try again after completions arrive).
    public func execute(lun: UInt8, cdb: [UInt8], direction: SCSIDataDirection, buffer: GuestBuffer?, length: Int,
                        completion: @escaping (SCSICompletion) -> Void) -> Bool {
        guard state == .ready else { return false }
        var srb = SCSIRequest()
        srb.lun = lun
        srb.cdbLength = UInt8(min(cdb.count, 16))
        srb.cdbOrSense = Array((cdb + [UInt8](repeating: 0, count: 20)).prefix(20))
        srb.dataIn = direction.rawValue
        srb.dataTransferLength = UInt32(length)
        srb.srbFlags = 0x8 | (direction == .read ? 0x40 : direction == .write ? 0x80 : 0)
        let range = length > 0 ? buffer?.range(length) : nil
        return send(VStorPacket(operation: .executeSRB, body: srb.encoded), range: range, on: nextIOChannel()) { reply in
            let r = (try? SCSIRequest(decoding: reply.body)) ?? SCSIRequest()
            completion(SCSICompletion(ntStatus: reply.status, srbStatus: r.srbStatus, scsiStatus: r.scsiStatus,
                                      sense: Array(r.cdbOrSense.prefix(Int(min(r.senseInfoLength, 20)))),
                                      transferred: Int(r.dataTransferLength)))
        }
    }

    /// Round robin over the primary and its open sub-channels.
    private func nextIOChannel() -> ClientChannel {
        let all = [channel] + subChannels.filter { $0.state == .open }
        nextChannel = (nextChannel + 1) % all.count
        return all[nextChannel]
    }

    @discardableResult
    private func send(_ packet: VStorPacket, range: GpaRange? = nil, on target: ClientChannel? = nil,
                      completion: @escaping (VStorPacket) -> Void) -> Bool {
        guard let endpoint = (target ?? channel).endpoint else { return false }
        let id = nextTransaction
        let bytes = packet.encode()
        let written: Bool
        do {
            if let range {
                written = try endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: PacketDescriptor.flagCompletionRequested,
                                                       transactionID: id, extension: GpaDirectHeader.extensionBytes(for: [range]), payload: bytes)
            } else {
                written = try endpoint.writer.tryWrite(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested,
                                                       transactionID: id, payload: bytes)
            }
        } catch {
            return false
        }
        guard written else { return false }
        nextTransaction &+= 1
        pending[id] = completion
        endpoint.commitWrites()
        return true
    }

    /// Takes every completion waiting in the inbound ring of `source` (default: the primary).
    public func drain(_ source: ClientChannel? = nil) {
        guard let endpoint = (source ?? channel).endpoint else { return }
        let failure = endpoint.drainInbound { packet in
            let n = packet.copyPayload(into: scratch)
            if packet.transactionID == 0, packet.type == .dataInBand, n >= 4 {
                // Unsolicited: the host changed the bus.
                let op = scratch.load(as: UInt32.self)
                if op == VStorOperation.enumerateBus.rawValue || op == VStorOperation.removeDevice.rawValue { onBusChange?() }
                return
            }
            guard packet.type == .completion, let handler = pending.removeValue(forKey: packet.transactionID),
                let reply = try? VStorPacket(decoding: Array(scratch[0..<n]), minimumSize: VStorPacket.legacySize)
            else {
                protocolErrors &+= 1
                return
            }
            handler(reply)
        }
        if failure != nil { protocolErrors &+= 1 }
    }
}
