// The synthetic SCSI controller, host end: vstor initialization, EXECUTE_SRB over GPA-direct pages, completions.

import CSystem
import GuestMemory
import Hypervisor
import Logging
import VMBusChannel
import VMBusRing
import VMBusWire

/// A storvsp: one SCSI controller (path 0, target 0) with LUNs backed by image files. Data moves
/// between the image and the guest's GPA-direct pages with no intermediate copy; every page is
/// bounds-checked against guest memory first.
public final class StorageVSP: VMBusDevice, GuestMemoryClient, SubChannelDevice {
    public let deviceClass = DeviceClass.scsi
    public let instanceID: GUID
    public private(set) var luns: [UInt8: SCSIDisk]
    let logger: Logger
    private var memory: GuestPhysicalMemory?

    enum Phase { case idle, begun, ready }
    private var phase = Phase.idle
    public private(set) var protocolVersion: UInt16 = 0
    private var packetSize = VStorPacket.size
    /// Versions accepted (Win8 and later use 64-byte packets; older ones 48).
    public static let supportedVersions: Set<UInt16> = [VStorVersion.win10, VStorVersion.win8_1, VStorVersion.win8, VStorVersion.win7, VStorVersion.win6]
    public static let maximumTransferBytes: UInt32 = 0x40000

    /// Where disk I/O runs; completions come back on the partition thread.
    public var executor: any DeviceExecutor = InlineExecutor()
    /// Completions that did not fit their ring yet, per channel, in order.
    private var pendingCompletions: [UInt32: [(transactionID: UInt64, packet: [UInt8])]] = [:]
    /// Commands handed to the executor and not yet completed.
    public private(set) var inFlight = 0
    /// Commands a guest may have in the host at once, running or completed but not yet in its
    /// ring. At the limit the VSP stops reading requests until completions drain, so a guest that
    /// keeps submitting without draining its ring grows no host queue.
    public var maximumOutstanding = 512
    /// Channels whose requests wait for outstanding commands to drain.
    private var throttled: Set<UInt32> = []
    private func outstanding(_ relid: UInt32) -> Int { inFlight + (pendingCompletions[relid]?.count ?? 0) }

    public private(set) var requests: UInt64 = 0
    /// READs answered from the page cache without a worker.
    public private(set) var cachedReads: UInt64 = 0
    public private(set) var protocolErrors: UInt64 = 0
    public private(set) var refusedPages: UInt64 = 0

    public init(instanceID: GUID, luns: [UInt8: SCSIDisk], logger: Logger) {
        self.instanceID = instanceID
        self.luns = luns
        self.logger = logger
    }

    public func attach(memory: GuestPhysicalMemory) { self.memory = memory }

    /// The primary channel (initialization, hot-plug notices) and every open channel by relid.
    private var channel: ChannelEndpoint?
    private var open: [UInt32: ChannelEndpoint] = [:]
    private var subChannels: (any SubChannelOffering)?
    /// Sub-channels a guest may ask for (0 = no multi-channel support advertised).
    public var maximumSubChannels = 16

    public func attach(subChannels: any SubChannelOffering) { self.subChannels = subChannels }

    /// Adds a LUN at the lowest free number and tells the guest to rescan. Returns the LUN.
    public func add(_ disk: SCSIDisk) -> UInt8? {
        guard let lun = (0...254).map(UInt8.init).first(where: { luns[$0] == nil }) else { return nil }
        luns[lun] = disk
        announceBusChange()
        return lun
    }

    /// Removes a LUN and tells the guest to rescan.
    @discardableResult
    public func remove(lun: UInt8) -> SCSIDisk? {
        guard let disk = luns.removeValue(forKey: lun) else { return nil }
        announceBusChange()
        return disk
    }

    /// ENUMERATE_BUS as an unsolicited in-band packet (transaction id 0), as Hyper-V sends on hot plug.
    private func announceBusChange() {
        guard let channel, phase == .ready else { return }
        let packet = VStorPacket(operation: .enumerateBus, flags: 0).encode(size: packetSize)
        if (try? channel.writer.tryWrite(type: .dataInBand, transactionID: 0, payload: packet)) == true { channel.commitWrites() }
    }

    public func open(_ channel: ChannelEndpoint, userData: [UInt8]) -> UInt32 {
        open[channel.relid] = channel
        // Sub-channels are offered only while the primary is open; anything else is a new primary.
        if self.channel == nil {
            self.channel = channel
            phase = .idle
            protocolVersion = 0
            packetSize = VStorPacket.size
        }
        return 0
    }

    public func close(_ channel: ChannelEndpoint) {
        open[channel.relid] = nil
        pendingCompletions[channel.relid] = nil
        throttled.remove(channel.relid)
        if self.channel === channel {
            phase = .idle
            self.channel = nil
        }
    }

    /// Writes completions that waited for room. Returns false if some still do not fit.
    @discardableResult
    private func flushCompletions(_ channel: ChannelEndpoint) -> Bool {
        while let next = pendingCompletions[channel.relid]?.first {
            guard (try? channel.writer.tryWrite(type: .completion, transactionID: next.transactionID, payload: next.packet)) == true else {
                _ = channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: next.packet.count))
                channel.commitWrites()
                return false
            }
            pendingCompletions[channel.relid]?.removeFirst()
        }
        channel.writer.clearSpaceRequest()
        channel.commitWrites()
        return true
    }

    /// Sends a completion from the executor (or queues it until the ring has room).
    private func complete(_ transactionID: UInt64, _ reply: VStorPacket, on endpoint: ChannelEndpoint) {
        inFlight -= 1
        guard open[endpoint.relid] === endpoint else { return }  // the channel closed meanwhile
        pendingCompletions[endpoint.relid, default: []].append((transactionID, reply.encode(size: packetSize)))
        flushCompletions(endpoint)
        if throttled.contains(endpoint.relid) && outstanding(endpoint.relid) <= maximumOutstanding / 2 {
            throttled.remove(endpoint.relid)
            channelSignalled(endpoint)
        }
    }

    public func channelSignalled(_ channel: ChannelEndpoint) {
        flushCompletions(channel)
        channel.reader.mask()
        while true {
            var blocked = false
            do {
                while true {
                    guard outstanding(channel.relid) < maximumOutstanding else {
                        throttled.insert(channel.relid)
                        blocked = true
                        break
                    }
                    guard let packet = try channel.reader.next() else { break }
                    if !serve(packet, channel) {
                        try channel.reader.putBack(packet)
                        channel.commitWrites()
                        blocked = !channel.writer.requestSpace(RingWriter.space(extensionSize: 0, payloadSize: VStorPacket.size))
                        if blocked { break }
                    } else if pendingCompletions[channel.relid]?.isEmpty ?? true {
                        channel.writer.clearSpaceRequest()
                    }
                }
            } catch {
                protocolErrors &+= 1
                logger.warning("storvsp: corrupt ring: \(error); channel abandoned")
                _ = channel.reader.unmask()
                return
            }
            channel.commitWrites()
            channel.commitReads()
            if !blocked && pollNanoseconds > 0 {
                // Poll briefly with interrupts still masked: a busy guest then needs no signal.
                let deadline = viridian_now_ns() + pollNanoseconds
                var arrived = false
                while !arrived && viridian_now_ns() < deadline { arrived = channel.reader.hasData() }
                if arrived { continue }
            }
            let more = channel.reader.unmask()
            if blocked || !more { return }
        }
    }

    /// How long the VSP keeps polling its ring (interrupts masked) after it ran dry.
    public var pollNanoseconds: UInt64 = 0

    /// Handles one packet; false when the completion does not fit (try again later).
    private func serve(_ packet: IncomingPacket, _ channel: ChannelEndpoint) -> Bool {
        guard packet.type == .dataInBand || packet.type == .dataUsingGPADirect else {
            protocolErrors &+= 1
            return true
        }
        var payload = [UInt8](repeating: 0, count: min(packet.payloadLength, VStorPacket.size))
        _ = payload.withUnsafeMutableBytes { packet.copyPayload(into: $0) }
        guard let request = try? VStorPacket(decoding: payload, minimumSize: VStorPacket.legacySize) else {
            protocolErrors &+= 1
            logger.warning("storvsp: short vstor packet (\(packet.payloadLength) bytes) dropped")
            return true
        }
        requests &+= 1
        var reply = VStorPacket(operation: .completeIO, flags: 0, status: NTStatus.success)
        let isPrimary = self.channel === channel
        switch request.op {
        case let op? where op != .executeSRB && !isPrimary:
            reply.status = NTStatus.invalidDeviceRequest  // sub-channels carry I/O only
        case .createSubChannels?:
            let wanted = Int(request.body.le(UInt16.self, at: 0))
            guard phase == .begun || phase == .ready, protocolVersion >= VStorVersion.win8, let subChannels,
                wanted >= 1, wanted <= maximumSubChannels
            else {
                reply.status = NTStatus.invalidParameter
                break
            }
            _ = subChannels.offerSubChannels(of: self, count: wanted)
        case .beginInitialization?:
            phase = .begun
        case .queryProtocolVersion?:
            let version = request.body.le(UInt16.self, at: 0)
            if phase == .begun && Self.supportedVersions.contains(version) {
                protocolVersion = version
                packetSize = version >= VStorVersion.win8 ? VStorPacket.size : VStorPacket.legacySize
            } else {
                reply.status = NTStatus.revisionMismatch
            }
            reply.body.replaceSubrange(0..<2, with: request.body[0..<2])
        case .queryProperties?:
            guard phase == .begun, protocolVersion != 0 else { reply.status = NTStatus.invalidDeviceState; break }
            let multi = subChannels != nil && maximumSubChannels > 0 && protocolVersion >= VStorVersion.win8
            reply.body.replaceSubrange(0..<24, with: VStorChannelProperties(
                maximumChannelCount: multi ? UInt16(maximumSubChannels) : 0, supportsMultiChannel: multi,
                maximumTransferBytes: Self.maximumTransferBytes).encoded)
        case .endInitialization?:
            if phase == .begun && protocolVersion != 0 { phase = .ready } else { reply.status = NTStatus.invalidDeviceState }
        case .executeSRB?:
            guard phase == .ready else {
                reply.status = NTStatus.invalidDeviceState
                break
            }
            guard let done = execute(request, packet, channel) else { return true }  // completes later
            reply = done
        case .resetLUN?, .resetAdapter?, .resetBus?:
            break
        default:
            reply.status = NTStatus.invalidDeviceRequest
        }
        do {
            return try channel.writer.tryWrite(type: .completion, transactionID: packet.transactionID,
                                               payload: reply.encode(size: packetSize))
        } catch {
            protocolErrors &+= 1
            return true
        }
    }

    /// Runs one SRB against its LUN, with data in the packet's GPA-direct pages. Commands that
    /// touch the image go to the executor and return nil; the completion is sent when they finish.
    private func execute(_ request: VStorPacket, _ packet: IncomingPacket, _ channel: ChannelEndpoint) -> VStorPacket? {
        var reply = VStorPacket(operation: .completeIO, flags: 0, status: NTStatus.success)
        guard var srb = try? SCSIRequest(decoding: request.body) else {
            protocolErrors &+= 1
            reply.status = NTStatus.invalidParameter
            return reply
        }
        let senseCapacity = packetSize == VStorPacket.size ? SCSIRequest.senseCapacity : SCSIRequest.legacySenseCapacity
        func finish(_ srbStatus: UInt8, scsi: UInt8 = 0, sense: [UInt8] = [], transferred: Int = 0, status: UInt32 = NTStatus.success) -> VStorPacket {
            srb.srbStatus = srbStatus
            srb.scsiStatus = scsi
            srb.dataTransferLength = UInt32(transferred)
            srb.cdbOrSense = Array((sense + [UInt8](repeating: 0, count: 20)).prefix(20))
            srb.senseInfoLength = UInt8(min(sense.count, senseCapacity))
            reply.status = status
            reply.body = srb.encoded
            return reply
        }
        let cdb = srb.cdb
        // Data pages: every byte the SRB claims must lie in guest memory and in the GPA-direct range.
        var data = SCSIData.empty
        let length = Int(srb.dataTransferLength)
        if length > 0 {
            guard packet.type == .dataUsingGPADirect, let segments = segments(of: packet, length: length) else {
                refusedPages &+= 1
                return finish(SRBStatus.error, status: NTStatus.invalidParameter)
            }
            data = SCSIData(segments: segments)
        }
        // REPORT LUNS is answered on every path and target: Linux's storvsc takes INVALID_LUN as
        // "this LUN was removed" and removes the device of that target and LUN on path 0, whatever
        // path the command went to, so the scan of path 1 would take away disk 0:0:0:0.
        if cdb.first == 0xA0 {
            return finish(SRBStatus.success, transferred: data.fill(reportLUNs(cdb, present: srb.pathID == 0 && srb.targetID == 0)))
        }
        guard srb.pathID == 0, srb.targetID == 0 else {
            if cdb.first == 0x12 { return finish(SRBStatus.success, transferred: data.fill(absentLUNInquiry(cdb))) }
            return finish(SRBStatus.invalidLUN)
        }
        guard let disk = luns[srb.lun] else {
            if cdb.first == 0x12 { return finish(SRBStatus.success, transferred: data.fill(absentLUNInquiry(cdb))) }
            return finish(SRBStatus.invalidLUN)
        }
        if Self.touchesImage(cdb), !(executor is InlineExecutor), let cached = disk.readIfCached(cdb: cdb, data: data) {
            // Cached data needs no worker: answer at once.
            cachedReads &+= 1
            return finish(SRBStatus.success, transferred: cached.transferred)
        }
        if Self.touchesImage(cdb), !(executor is InlineExecutor), let memory {
            // The image I/O runs on a worker; `memory` stays mapped until it is done.
            let tid = packet.transactionID
            nonisolated(unsafe) let job = (disk, cdb, data)
            nonisolated(unsafe) var result = SCSIResult.good()
            inFlight += 1
            executor.run({
                withExtendedLifetime(memory) { result = job.0.execute(cdb: job.1, data: job.2) }
            }, then: { [self] in
                let reply = result.status == 0 ? finish(SRBStatus.success, transferred: result.transferred)
                    : finish(SRBStatus.error | SRBStatus.autosenseValid, scsi: result.status, sense: result.sense?.bytes ?? [])
                complete(tid, reply, on: channel)
            })
            return nil
        }
        let result = disk.execute(cdb: cdb, data: data)
        if result.status == 0 { return finish(SRBStatus.success, transferred: result.transferred) }
        return finish(SRBStatus.error | SRBStatus.autosenseValid, scsi: result.status, sense: result.sense?.bytes ?? [])
    }

    /// READ/WRITE 6–16, SYNCHRONIZE CACHE, UNMAP, WRITE SAME: the commands that block on the image.
    static func touchesImage(_ cdb: [UInt8]) -> Bool {
        guard let op = cdb.first else { return false }
        return [0x08, 0x0A, 0x28, 0x2A, 0xA8, 0xAA, 0x88, 0x8A, 0x35, 0x91, 0x42, 0x93].contains(op)
    }

    /// Host views of the first `length` bytes described by the packet's single GPA range, coalescing
    /// consecutive pages. Nil if the range is malformed, too short, or leaves guest memory.
    private func segments(of packet: IncomingPacket, length: Int) -> [UnsafeMutableRawBufferPointer]? {
        guard let memory, length <= Int(Self.maximumTransferBytes) * 4 else { return nil }
        let ext = packet.extensionBytes()
        guard let ranges = try? ext.withUnsafeBytes({ try GpaDirectHeader.parse(extension: $0) }), ranges.count == 1,
            Int(ranges[0].byteCount) >= length
        else { return nil }
        let range = ranges[0]
        var out: [UnsafeMutableRawBufferPointer] = []
        var left = length
        var offset = Int(range.byteOffset)
        var i = 0
        while left > 0 && i < range.pfns.count {
            // The page bound first: a PFN near 2^64 would overflow the run test below.
            guard range.pfns[i] < UInt64(memory.pageCount) else { return nil }
            var run = 1
            while i + run < range.pfns.count && range.pfns[i + run] == range.pfns[i] + UInt64(run) { run += 1 }
            let n = min(left, run * GpaRange.pageSize - offset)
            guard let buffer = try? memory.buffer(gpa: range.pfns[i] * UInt64(GpaRange.pageSize) + UInt64(offset), count: n)
            else { return nil }
            out.append(buffer)
            left -= n
            offset = 0
            i += run
        }
        return left == 0 ? out : nil
    }

    /// The LUN list of path 0, target 0 (`present`), or an empty one for any other target.
    private func reportLUNs(_ cdb: [UInt8], present: Bool) -> [UInt8] {
        let list = present ? luns.keys.sorted() : []
        var b = [UInt8](repeating: 0, count: 8 + 8 * list.count)
        b.putBE(UInt32(8 * list.count), at: 0)
        for (i, lun) in list.enumerated() { b[8 + 8 * i + 1] = lun }
        let allocation = cdb.count >= 10 ? Int(cdb.be(UInt32.self, at: 6)) : b.count
        return Array(b.prefix(allocation))
    }

    /// INQUIRY data for a LUN that is not there: peripheral qualifier 3, type 0x1F.
    private func absentLUNInquiry(_ cdb: [UInt8]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 36)
        b[0] = 0x7F
        b[2] = 0x06
        b[3] = 0x02
        b[4] = 31
        return Array(b.prefix(cdb.count >= 5 ? Int(cdb.be(UInt16.self, at: 3)) : 36))
    }
}
