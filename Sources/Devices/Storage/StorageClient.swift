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
    /// The first pool page.
    public let firstPage: UInt64
    public let pages: Int
    public let bytes: UnsafeMutableRawBufferPointer
    /// Guest page frame number of each page, as GPA-direct ranges carry them.
    public let pfns: [UInt64]

    public init(client: VMBusClient, bytes count: Int) throws(ClientError) {
        pages = (count + GpaRange.pageSize - 1) / GpaRange.pageSize
        firstPage = try client.allocatePages(pages)
        do { bytes = try client.pool.buffer(page: firstPage, count: pages << 12) } catch { throw .memory(error) }
        pfns = client.pool.pfns(first: firstPage, count: pages)
    }

    /// The GPA-direct range for the first `length` bytes.
    func range(_ length: Int) -> GpaRange {
        let n = max(1, (length + GpaRange.pageSize - 1) / GpaRange.pageSize)
        return GpaRange(byteCount: UInt32(length), byteOffset: 0, pfns: Array(pfns[0..<n]))
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
    /// Who waits for the completion of a transaction.
    private enum Waiter {
        /// Initialization steps: the whole vstor packet.
        case control((VStorPacket) -> Void)
        /// SCSI commands: the result, decoded straight from the ring.
        case scsi((SCSICompletion) -> Void)
    }

    private var pending: [UInt64: Waiter] = [:]
    private var nextTransaction: UInt64 = 1
    private var versionsToTry = VStorVersion.linuxPreference
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)
    /// The outgoing EXECUTE_SRB packet and its GPA-direct extension, built in place (no allocation per command).
    private let packetScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: VStorPacket.size, alignment: 8)
    private var extensionScratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 + 8 * 64, alignment: 8)
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

    /// Runs around each drain of a ring (in the VP thread, bus locked), so that whoever consumes the
    /// completions can act once per group of them (e.g. send every reply they produced together).
    public var drainWrapper: ((() -> Void) -> Void)?

    deinit {
        scratch.deallocate()
        packetScratch.deallocate()
        extensionScratch.deallocate()
    }

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

    /// Sends one SCSI command to `lun` of `target` on `path` (the controller's disks are on path
    /// 0, target 0). `buffer` holds the data (in or out) for `length` bytes. Returns false when the
    /// ring is full (try again after completions arrive).
    public func execute(path: UInt8 = 0, target: UInt8 = 0, lun: UInt8, cdb: [UInt8], direction: SCSIDataDirection,
                        buffer: GuestBuffer?, length: Int, completion: @escaping (SCSICompletion) -> Void) -> Bool {
        cdb.withUnsafeBytes { cdb in
            executeSRB(path: path, target: target, lun: lun, cdb: cdb, direction: direction, buffer: buffer, length: length,
                       commit: true, completion: completion)
        }
    }

    /// As `execute`, but the packet stays unpublished (the host does not see it and is not
    /// signalled) until `commitWrites()`: write a batch of commands, then commit once. Call both
    /// within one hold of the bus lock, and commit before waiting for room when this returns false.
    public func enqueue(lun: UInt8, cdb: UnsafeRawBufferPointer, direction: SCSIDataDirection, buffer: GuestBuffer?, length: Int,
                        completion: @escaping (SCSICompletion) -> Void) -> Bool {
        executeSRB(lun: lun, cdb: cdb, direction: direction, buffer: buffer, length: length, commit: false, completion: completion)
    }

    /// Publishes every packet written to the primary's and the sub-channels' rings, signalling the
    /// host where the ring rules require it (at most once per ring).
    public func commitWrites() {
        channel.endpoint?.commitWrites()
        for sub in subChannels { sub.endpoint?.commitWrites() }
    }

    /// A zeroed EXECUTE_SRB packet with the request's constant fields (as `VStorPacket` and `SCSIRequest` encode them).
    private static let srbTemplate = VStorPacket(operation: .executeSRB, body: SCSIRequest().encoded).encode()

    /// Builds the EXECUTE_SRB packet (and GPA-direct extension) in place and writes it to the next
    /// I/O channel's ring; the bytes are those `VStorPacket(operation: .executeSRB, body: srb.encoded)`
    /// encodes, with `buffer.range(length)` as the only range.
    private func executeSRB(path: UInt8 = 0, target targetID: UInt8 = 0, lun: UInt8, cdb: UnsafeRawBufferPointer,
                            direction: SCSIDataDirection, buffer: GuestBuffer?, length: Int,
                            commit: Bool, completion: @escaping (SCSICompletion) -> Void) -> Bool {
        guard state == .ready, length >= 0, length <= (buffer?.pages ?? 0) << 12 else { return false }
        let target = nextIOChannel()
        // vstor_packet header and vmscsi_request (offsets in the request as in `SCSIRequest.encoded`).
        let p = packetScratch
        StorageClient.srbTemplate.withUnsafeBytes { p.copyMemory(from: $0) }
        let r = VStorPacket.requestOffset
        p[r + 5] = path
        p[r + 6] = targetID
        p[r + 7] = lun
        p[r + 8] = UInt8(min(cdb.count, 16))
        p[r + 10] = direction.rawValue
        p.putLE(UInt32(length), at: r + 12)
        // CDB on the way in: the first 20 bytes, zero-padded.
        let cdbBytes = min(cdb.count, SCSIRequest.senseCapacity)
        if cdbBytes > 0 { (p.baseAddress! + r + 16).copyMemory(from: cdb.baseAddress!, byteCount: cdbBytes) }
        p.putLE(UInt32(0x8 | (direction == .read ? 0x40 : direction == .write ? 0x80 : 0)), at: r + 40)
        var extensionBytes = 0
        if length > 0, let buffer {
            // GpaDirectHeader: reserved u32, range_count u32, then one range {byte_count, byte_offset 0, PFNs}.
            let pages = max(1, (length + GpaRange.pageSize - 1) / GpaRange.pageSize)
            extensionBytes = 16 + 8 * pages
            if extensionScratch.count < extensionBytes {
                extensionScratch.deallocate()
                extensionScratch = .allocate(byteCount: extensionBytes, alignment: 8)
            }
            let e = extensionScratch
            e.putLE(UInt32(0), at: 0)
            e.putLE(UInt32(1), at: 4)
            e.putLE(UInt64(UInt32(length)), at: 8)
            for i in 0..<pages { e.putLE(buffer.pfns[i], at: 16 + 8 * i) }
        }
        let extensionView = UnsafeRawBufferPointer(rebasing: extensionScratch[0..<extensionBytes])
        return post(UnsafeRawBufferPointer(p), extension: extensionBytes > 0 ? extensionView : nil, on: target, commit: commit,
                     waiter: .scsi(completion))
    }

    /// Decodes an SRB completion (at least `VStorPacket.legacySize` bytes) as
    /// `SCSIRequest(decoding: VStorPacket(decoding: bytes).body)` would, without allocating.
    private static func scsiCompletion(_ b: UnsafeRawBufferPointer) -> SCSICompletion {
        let status = b.le(UInt32.self, at: 8)
        let r = VStorPacket.requestOffset
        // Decoding fails only on a CDB length above 16; the defaults of an empty request apply then.
        guard b[r + 8] <= 16 else {
            let d = SCSIRequest()
            return SCSICompletion(ntStatus: status, srbStatus: d.srbStatus, scsiStatus: d.scsiStatus,
                                  sense: Array(d.cdbOrSense.prefix(Int(min(d.senseInfoLength, 20)))),
                                  transferred: Int(d.dataTransferLength))
        }
        let senseLength = Int(min(b[r + 9], 20))
        return SCSICompletion(ntStatus: status, srbStatus: b[r + 2], scsiStatus: b[r + 3],
                              sense: senseLength == 0 ? [] : Array(UnsafeRawBufferPointer(rebasing: b[(r + 16)..<(r + 16 + senseLength)])),
                              transferred: Int(b.le(UInt32.self, at: r + 12)))
    }

    /// Round robin over the primary and its open sub-channels.
    private func nextIOChannel() -> ClientChannel {
        var count = 1
        for sub in subChannels where sub.state == .open { count += 1 }
        nextChannel = (nextChannel + 1) % count
        var index = nextChannel
        guard index > 0 else { return channel }
        for sub in subChannels where sub.state == .open {
            index -= 1
            if index == 0 { return sub }
        }
        return channel
    }

    @discardableResult
    private func send(_ packet: VStorPacket, completion: @escaping (VStorPacket) -> Void) -> Bool {
        packet.encode().withUnsafeBytes { post($0, extension: nil, on: channel, commit: true, waiter: .control(completion)) }
    }

    /// Writes one packet that asks for a completion (GPA-direct with `ext`, else in-band) and
    /// records its waiter; publishes it if `commit`. False when the ring is full or the channel is not open.
    private func post(_ payload: UnsafeRawBufferPointer, extension ext: UnsafeRawBufferPointer?, on target: ClientChannel, commit: Bool,
                       waiter: Waiter) -> Bool {
        guard let endpoint = target.endpoint else { return false }
        let id = nextTransaction
        let written: Bool
        do {
            if let ext {
                written = try endpoint.writer.tryWrite(type: .dataUsingGPADirect, flags: PacketDescriptor.flagCompletionRequested,
                                                       transactionID: id, extension: ext, payload: payload)
            } else {
                written = try endpoint.writer.tryWrite(type: .dataInBand, flags: PacketDescriptor.flagCompletionRequested,
                                                       transactionID: id, payload: payload)
            }
        } catch {
            return false
        }
        guard written else { return false }
        nextTransaction &+= 1
        pending[id] = waiter
        if commit { endpoint.commitWrites() }
        return true
    }

    /// Takes every completion waiting in the inbound ring of `source` (default: the primary).
    public func drain(_ source: ClientChannel? = nil) {
        if let drainWrapper {
            drainWrapper { self.drainRing(source) }
        } else {
            drainRing(source)
        }
    }

    private func drainRing(_ source: ClientChannel?) {
        guard let endpoint = (source ?? channel).endpoint else { return }
        let failure = endpoint.drainInbound { packet in
            let n = packet.copyPayload(into: scratch)
            if packet.transactionID == 0, packet.type == .dataInBand, n >= 4 {
                // Unsolicited: the host changed the bus.
                let op = scratch.load(as: UInt32.self)
                if op == VStorOperation.enumerateBus.rawValue || op == VStorOperation.removeDevice.rawValue { onBusChange?() }
                return
            }
            guard packet.type == .completion, let waiter = pending.removeValue(forKey: packet.transactionID),
                n >= VStorPacket.legacySize
            else {
                protocolErrors &+= 1
                return
            }
            switch waiter {
            case .scsi(let completion):
                completion(StorageClient.scsiCompletion(UnsafeRawBufferPointer(rebasing: scratch[0..<n])))
            case .control(let handler):
                guard let reply = try? VStorPacket(decoding: Array(scratch[0..<n]), minimumSize: VStorPacket.legacySize) else {
                    protocolErrors &+= 1
                    return
                }
                handler(reply)
            }
        }
        if failure != nil { protocolErrors &+= 1 }
    }
}
