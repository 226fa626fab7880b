// `viridian-agent echo`: opens echo channels on chosen VPs and moves packets with content checks.

import CSystem
import EchoDevice
import Glibc
import VMBusClient
import VMBusWire

/// Result of an echo run.
public struct EchoReport: Codable, Sendable {
    public var packets: Int
    public var payloadBytes: Int
    public var completions: Int
    public var mismatches: Int
    public var seconds: Double
    public var packetsPerSecond: Double
    public var channels: [EchoChannelReport]
    public var interruptsPerVP: [UInt64]
}

/// One channel of the run.
public struct EchoChannelReport: Codable, Sendable {
    public var relid: UInt32
    public var targetVP: UInt32
    public var completions: Int
}

extension AgentSession {
    /// Opens `channels` echo channels (channel i targets VP i mod VPs) and echoes `packets`
    /// packets of `payloadBytes` spread over them. Every completion is checked.
    public func echo(packets: Int, payloadBytes: Int, channels wanted: Int, ringPages: Int = 32,
                     timeoutMs: Int = 30_000) throws -> EchoReport {
        let offers = withBus { $0.channels.values.filter { $0.deviceClass == .viridianEcho && $0.state == .offered }.sorted { $0.relid < $1.relid } }
        guard offers.count >= wanted, wanted >= 1 else {
            throw AgentError.protocolFailure("\(offers.count) echo device(s) offered, \(wanted) wanted")
        }
        let chosen = Array(offers.prefix(wanted))
        for (i, channel) in chosen.enumerated() {
            try withBus { try $0.open(channel, sendPages: ringPages, receivePages: ringPages, targetVP: UInt32(i % link.vpCount)) }
        }
        guard try wait(timeoutMs: timeoutMs, until: { _ in chosen.allSatisfy { $0.state != .creatingRingGPADL && $0.state != .opening } }) else {
            throw AgentError.timeout("opening echo channels")
        }
        if let failed = chosen.first(where: { $0.state != .open }) {
            throw AgentError.protocolFailure("echo channel \(failed.relid) did not open: \(failed.state)")
        }

        let size = max(payloadBytes, 8)
        var quota = [Int](repeating: packets / wanted, count: wanted)
        for i in 0..<(packets % wanted) { quota[i] += 1 }
        var sent = [Int](repeating: 0, count: wanted)
        var received = [Int](repeating: 0, count: wanted)
        var mismatches = 0
        let clients: [EchoClient] = withBus { _ in
            chosen.enumerated().map { index, channel in
                let client = EchoClient(channel: channel)
                client.onCompletion = { id, payload in
                    // Completion k of channel i carries sequence k in its first 8 bytes and pattern bytes after.
                    let k = received[index]
                    if id != UInt64(k) || payload.count < size || payload.load(as: UInt64.self) != id
                        || payload[size - 1] != UInt8(truncatingIfNeeded: k &* 31 &+ index) {
                        mismatches += 1
                    }
                    received[index] += 1
                }
                return client
            }
        }
        var buffer = [UInt8](repeating: 0x5A, count: size)
        let start = viridian_now_ns()
        var total = 0
        while total < packets {
            var moved = false
            var interruptsBefore: UInt64 = 0
            try withBus { _ in
                interruptsBefore = interruptsPerVP.reduce(0, +)
                for (i, client) in clients.enumerated() where sent[i] < quota[i] {
                    while sent[i] < quota[i] {
                        let k = sent[i]
                        buffer.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(k), as: UInt64.self) }
                        buffer[size - 1] = UInt8(truncatingIfNeeded: k &* 31 &+ i)
                        let ok = try buffer.withUnsafeBytes { try client.send($0, transactionID: UInt64(k)) }
                        if !ok {
                            if client.requestRoom(payloadSize: size) { continue }
                            break
                        }
                        client.roomGranted()
                        sent[i] += 1
                        moved = true
                    }
                    client.flush()
                }
                total = received.reduce(0, +)
            }
            if total >= packets { break }
            if !moved {
                // Nothing could be sent: wait for the next interrupt (completions, or room signalled).
                let before = total
                guard try wait(timeoutMs: timeoutMs, until: { _ in interruptsPerVP.reduce(0, +) > interruptsBefore }) else {
                    throw AgentError.timeout("echo stalled at \(before) of \(packets) completions")
                }
                total = withBus { _ in received.reduce(0, +) }
            }
        }
        let seconds = Double(viridian_now_ns() - start) / 1e9
        for channel in chosen { withBus { $0.close(channel) } }
        _ = try wait(timeoutMs: 2000) { _ in chosen.allSatisfy { $0.state == .offered } }
        return EchoReport(
            packets: packets, payloadBytes: size, completions: received.reduce(0, +), mismatches: mismatches, seconds: seconds,
            packetsPerSecond: Double(packets) / seconds,
            channels: zip(chosen, received).map { EchoChannelReport(relid: $0.relid, targetVP: $0.targetVP, completions: $1) },
            interruptsPerVP: interruptsPerVP)
    }
}
