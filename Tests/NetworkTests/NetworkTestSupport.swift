// Shared pieces of the network tests: a frame port in memory, frame builders, a machine with a NIC.

import Glibc
import GuestMemory
import Hypervisor
import Logging
import Loopback
import SyntheticNetwork
import Testing
import VMBusClient
import VMBusWire

let quiet: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .critical
    return l
}()

/// A FramePort in memory: records what the NIC sends, hands it queued frames.
final class QueuePort: FramePort {
    var sent: [(header: VirtioNetHeader, frame: [UInt8])] = []
    var inbound: [(header: VirtioNetHeader, frame: [UInt8])] = []
    var offload: UInt32 = 0
    var carrier = true
    let descriptor: Int32 = -1

    func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool {
        var bytes: [UInt8] = []
        for v in iov { bytes += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) }
        let header = bytes.withUnsafeBytes { VirtioNetHeader(loading: $0.baseAddress!) }
        sent.append((header, Array(bytes[VirtioNetHeader.size...])))
        return true
    }

    func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? {
        guard !inbound.isEmpty else { return nil }
        let (header, frame) = inbound.removeFirst()
        var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size)
        bytes.withUnsafeMutableBytes { header.store(to: $0.baseAddress!) }
        bytes += frame
        var at = 0
        for v in iov where at < bytes.count {
            let n = min(v.iov_len, bytes.count - at)
            bytes.withUnsafeBytes { v.iov_base!.copyMemory(from: $0.baseAddress! + at, byteCount: n) }
            at += n
        }
        return at
    }

    func setOffload(_ flags: UInt32) { offload = flags }
    func setCarrier(_ on: Bool) { carrier = on }
}

/// Deterministic pseudo-random bytes.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

func fold(_ sum: UInt32) -> UInt16 {
    var s = sum
    while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
    return UInt16(s)
}

func be16(_ b: [UInt8], _ at: Int) -> UInt32 { UInt32(b[at]) << 8 | UInt32(b[at + 1]) }

/// An Ethernet + IPv4 (or IPv6) + TCP frame as the kernel hands a CHECKSUM_PARTIAL packet to a TAP:
/// valid IPv4 header checksum, real lengths, TCP checksum field = pseudo-header sum with the length.
func tcpFrame(payload: Int, ipv6: Bool = false, seed: UInt64 = 1) -> [UInt8] {
    var rng = SplitMix64(state: seed)
    let ipHeader = ipv6 ? 40 : 20
    var f = [UInt8](repeating: 0, count: 14 + ipHeader + 20)
    f[0..<6] = [0x00, 0x15, 0x5D, 1, 2, 3]
    f[6..<12] = [0x00, 0x15, 0x5D, 9, 9, 9]
    f[12] = ipv6 ? 0x86 : 0x08
    f[13] = ipv6 ? 0xDD : 0x00
    let tcpLength = 20 + payload
    var sum: UInt32 = 6 + UInt32(tcpLength)
    if ipv6 {
        f[14] = 0x60
        f[18] = UInt8(tcpLength >> 8); f[19] = UInt8(tcpLength & 0xFF)
        f[20] = 6; f[21] = 64
        for i in 0..<32 { f[22 + i] = UInt8(i + 1) }
        for i in stride(from: 0, to: 32, by: 2) { sum += be16(f, 22 + i) }
    } else {
        let total = 20 + tcpLength
        f[14] = 0x45
        f[16] = UInt8(total >> 8); f[17] = UInt8(total & 0xFF)
        f[20] = 0x40; f[22] = 64; f[23] = 6
        f[26..<34] = [10, 77, 0, 2, 10, 77, 0, 1]
        var ip: UInt32 = 0
        for i in stride(from: 0, to: 20, by: 2) { ip += be16(f, 14 + i) }
        let c = ~fold(ip)
        f[24] = UInt8(c >> 8); f[25] = UInt8(c & 0xFF)
        for i in stride(from: 0, to: 8, by: 2) { sum += be16(f, 26 + i) }
    }
    let t = 14 + ipHeader
    f[t] = 0x9C; f[t + 1] = 0x40; f[t + 2] = 0x14; f[t + 3] = 0x51
    f[t + 12] = 5 << 4; f[t + 13] = 0x18; f[t + 14] = 0xFF
    let pseudo = fold(sum)
    f[t + 16] = UInt8(pseudo >> 8); f[t + 17] = UInt8(pseudo & 0xFF)
    return f + rng.bytes(payload)
}

/// A loopback machine with one NetworkVSP on a QueuePort and a ready NetworkClient.
final class NICMachine {
    let machine: LoopbackMachine
    let port = QueuePort()
    let vsp: NetworkVSP
    let client: NetworkClient
    var received: [(frame: [UInt8], info: PacketInfo)] = []
    var linkChanges: [Bool] = []

    /// Ports of the sub-channel queues (index 1, 2, …).
    var queuePorts: [QueuePort] = []
    var receivedQueues: [Int] = []

    init(mtu: Int = 1500, queues: Int = 1, versions: [UInt32] = NVSPVersion.linuxPreference) throws {
        machine = try LoopbackMachine(memoryBytes: 64 << 20, vpCount: queues, logger: quiet)
        vsp = NetworkVSP(instanceID: GUID(low: 7, high: 7), port: port, mac: [0x00, 0x15, 0x5D, 0x0A, 0x0B, 0x0C], mtu: mtu, logger: quiet)
        vsp.maximumQueues = queues
        machine.server.offer(vsp)
        try machine.connect()
        let channel = try #require(machine.client.channels.values.first)
        try machine.client.open(channel, sendPages: 130, receivePages: 130)
        try machine.run(until: { channel.state == .open }, "open")
        client = try NetworkClient(channel: channel, bus: machine.client, queues: queues, versions: versions, logger: quiet)
        client.onFrame = { [unowned self] frame, info, queue in
            received.append((Array(frame), info))
            receivedQueues.append(queue)
        }
        client.onLinkChange = { [unowned self] up in linkChanges.append(up) }
        vsp.openQueuePort = { [unowned self] _ in
            let p = QueuePort()
            queuePorts.append(p)
            return p
        }
        try machine.run(until: { [client] in client.state != .initializing }, "netvsc init")
        if client.grantedSubChannels > 0 {
            let bus = machine.client!
            try machine.run(until: { bus.channels.values.filter { $0.offer.subChannelIndex > 0 }.count == client.grantedSubChannels }, "sub-channel offers")
            for sub in bus.channels.values.filter({ $0.offer.subChannelIndex > 0 }).sorted(by: { $0.offer.subChannelIndex < $1.offer.subChannelIndex }) {
                try bus.open(sub, sendPages: 130, receivePages: 130, targetVP: UInt32(sub.offer.subChannelIndex) % UInt32(queues))
                try machine.run(until: { sub.state == .open }, "sub-channel open")
                client.addSubChannel(sub)
            }
            client.enableReceiveScaling()
            _ = machine.pump()
        }
    }

    /// Sends `frame` from the guest as if read from its TAP with virtio header `v`.
    func transmit(_ frame: [UInt8], _ v: VirtioNetHeader = VirtioNetHeader(), queue: Int = 0) throws -> Bool {
        let slot = try #require(client.takeSlot())
        frame.withUnsafeBytes { slot.frame.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
        let head = UnsafeMutableRawBufferPointer(rebasing: slot.frame[0..<min(frame.count, OffloadTranslation.headerBytes)])
        guard let info = OffloadTranslation.packetInfo(transmit: v, headers: head, frameLength: frame.count) else {
            client.returnSlot(slot.index)
            return false
        }
        let ok = client.send(slot: slot.index, length: frame.count, info: info, queue: queue)
        client.flush(queue: queue)
        _ = machine.pump()
        return ok
    }
}
