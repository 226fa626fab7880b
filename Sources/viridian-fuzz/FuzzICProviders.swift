// Target "ic-host": the host ends of the integration services (heartbeat, time sync, shutdown, KVP,
// VSS, FCOPY) over a channel whose guest answers with the input: negotiation, requests, timeouts.

import CSystem
import Glibc
import IntegrationServices
import VMBusWire

let icHostTarget = FuzzTarget(
    name: "ic-host",
    summary: "ICProvider subclasses: negotiation, request/answer matching, KVP enumerate/get-IP parsing, VSS/shutdown/FCOPY answers, ticks and timeouts"
) { data in
    var r = FuzzReader(data)
    ICHostFuzz.run(&r)
}

/// The host's clock and partition reference time, both from the fuzz clock.
final class FuzzTimeSource: HostTimeSource {
    let clock: FuzzClock
    init(clock: FuzzClock) { self.clock = clock }
    func utcNanoseconds() -> Int64 { 1_700_000_000_000_000_000 + Int64(clock.ns % 1_000_000_000_000) }
    func referenceNanoseconds() -> UInt64 { clock.ns }
}

enum ICHostFuzz {
    /// What FCOPY copies from: zeros.
    static let source: Int32 = viridian_open("/dev/zero", O_RDONLY, 0)
    static let statuses: [UInt32] = [ICStatus.ok, ICStatus.fail, ICStatus.noMoreItems, ICStatus.notSupported, ICStatus.invalidArgument]

    static func run(_ r: inout FuzzReader) {
        let setup = r.u8()
        let clock = FuzzClock()
        let now: () -> UInt64 = { clock.now() }
        let id = GUID(low: 0x4943_4849_5354, high: UInt64(setup % 6))
        var heartbeat: HeartbeatProvider?
        var timeSync: TimeSyncProvider?
        var shutdown: ShutdownProvider?
        var kvp: KVPProvider?
        var vss: VSSProvider?
        var fcopy: FCopyProvider?
        let provider: ICProvider
        switch setup % 6 {
        case 0:
            let p = HeartbeatProvider(instanceID: id, intervalNs: 1_000_000_000, logger: fuzzLogger, now: now)
            p.onStateChange = { old, new in fuzzConsume(UInt64(old.rawValue.count ^ new.rawValue.count)) }
            heartbeat = p
            provider = p
        case 1:
            let p = TimeSyncProvider(instanceID: id, intervalNs: 5_000_000_000, source: FuzzTimeSource(clock: clock), logger: fuzzLogger, now: now)
            timeSync = p
            provider = p
        case 2:
            let p = ShutdownProvider(instanceID: id, logger: fuzzLogger, now: now)
            shutdown = p
            provider = p
        case 3:
            let p = KVPProvider(instanceID: id, logger: fuzzLogger, now: now)
            kvp = p
            provider = p
        case 4:
            let p = VSSProvider(instanceID: id, logger: fuzzLogger, now: now)
            vss = p
            provider = p
        default:
            let p = FCopyProvider(instanceID: id, logger: fuzzLogger, now: now)
            fcopy = p
            provider = p
        }
        guard let channel = try? FuzzChannel(relid: 1, dataBytes: 16384) else { return }
        let answers = FuzzCounter()
        var isOpen = provider.open(channel.endpoint, userData: []) == 0
        var last = latest(channel, nil)
        var steps = 0
        while steps < 128 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 9 {
            case 0, 1:
                // The guest echoes the last request as its answer, edited as the input says.
                guard var reply = last else { continue }
                reply[25] = op & 0x80 != 0 ? r.u8() : ICFlags.transaction | ICFlags.response
                if op & 0x40 != 0 { reply.putLE(op & 0x20 != 0 ? r.u32() : statuses[Int(r.u8()) % statuses.count], at: 20) }
                let at = r.below(reply.count + 1)
                let patch = r.blob(limit: 96)
                if at + patch.count > reply.count { reply += [UInt8](repeating: 0, count: at + patch.count - reply.count) }
                reply.replaceSubrange(at..<(at + patch.count), with: patch)
                answer(channel, provider, reply, isOpen)
            case 2:
                // A correct negotiation answer: one framework and one service version the host offered.
                guard let request = last, let header = try? ICHeader(decoding: request),
                    header.type == ICMessageType.negotiate.rawValue,
                    let offered = try? ICNegotiation(decoding: request[ICHeader.size...])
                else { continue }
                let framework = offered.frameworks.isEmpty ? ICVersion(3, 0) : offered.frameworks[r.below(offered.frameworks.count)]
                let service = offered.services.isEmpty ? ICVersion(1, 0) : offered.services[r.below(offered.services.count)]
                var h = header
                h.flags = ICFlags.transaction | ICFlags.response
                answer(channel, provider, ICHeader.packet(h, body: ICNegotiation(frameworks: [framework], services: [service]).encoded), isOpen)
            case 3:
                // An answer to the last request with a body from the input (KVP records, IP info, …).
                guard let request = last, var header = try? ICHeader(decoding: request) else { continue }
                header.flags = ICFlags.transaction | ICFlags.response
                header.status = op & 0x80 != 0 ? statuses[Int(r.u8()) % statuses.count] : ICStatus.ok
                var body = Array(request.dropFirst(ICHeader.size))
                let at = r.below(min(body.count, 8192) + 1)
                let patch = r.blob(limit: 8000)
                if at + patch.count > body.count { body += [UInt8](repeating: 0, count: at + patch.count - body.count) }
                body.replaceSubrange(at..<(at + patch.count), with: patch)
                answer(channel, provider, ICHeader.packet(header, body: body), isOpen)
            case 4:
                channel.send(FuzzPacketScript.read(&r, pages: 16, payloadLimit: 512))
                if isOpen { provider.channelSignalled(channel.endpoint) }
            case 5:
                request(&r, provider, answers, clock: clock, heartbeat: heartbeat, timeSync: timeSync, shutdown: shutdown, kvp: kvp,
                        vss: vss, fcopy: fcopy)
            case 6:
                clock.advance(UInt64(r.u32()) * (op & 0x80 != 0 ? 1_000_000 : 1000))
                provider.tick(now: clock.now())
                fuzzConsume(provider.nextDeadline ?? 0)
            case 7:
                channel.tamper(&r)
                if isOpen { provider.channelSignalled(channel.endpoint) }
            default:
                if isOpen { provider.close(channel.endpoint) }
                isOpen = op & 0x80 == 0 && provider.open(channel.endpoint, userData: []) == 0
            }
            last = latest(channel, last)
        }
        if isOpen { provider.close(channel.endpoint) }
        channel.drain()
        fuzzConsume(provider.protocolErrors ^ UInt64(truncatingIfNeeded: answers.value) ^ UInt64(provider.isConnected ? 1 : 0))
        withExtendedLifetime((heartbeat, timeSync, shutdown, kvp, vss, fcopy)) {}
    }

    /// The newest in-band packet the host sent (or the one before).
    static func latest(_ channel: FuzzChannel, _ previous: [UInt8]?) -> [UInt8]? {
        var newest = previous
        for p in channel.drain() where p.type == .dataInBand && p.payload.count >= ICHeader.size { newest = p.payload }
        return newest
    }

    static func answer(_ channel: FuzzChannel, _ provider: ICProvider, _ packet: [UInt8], _ isOpen: Bool) {
        channel.send(FuzzPacket(type: .dataInBand, flags: 0, transactionID: 0, ext: [], payload: packet))
        if isOpen { provider.channelSignalled(channel.endpoint) }
    }

    static func text(_ r: inout FuzzReader, limit: Int) -> String {
        String(decoding: r.blob(limit: limit), as: UTF8.self)
    }

    /// A request the host's administrator (or its timers) starts.
    static func request(_ r: inout FuzzReader, _ provider: ICProvider, _ answers: FuzzCounter, clock: FuzzClock, heartbeat: HeartbeatProvider?,
                        timeSync: TimeSyncProvider?, shutdown: ShutdownProvider?, kvp: KVPProvider?, vss: VSSProvider?,
                        fcopy: FCopyProvider?) {
        let sel = r.u8()
        if sel & 0x80 != 0 {
            // Any message type with any body, through the generic request path.
            let types: [ICMessageType] = [.negotiate, .heartbeat, .kvpExchange, .shutdown, .timeSync, .vss, .fileCopy]
            provider.request(types[Int(sel) % types.count], body: r.blob(limit: 2048)) { _ in answers.value += 1 }
            return
        }
        if let heartbeat {
            // The loop's clock reaches the provider's next deadline (it never goes back).
            if let due = heartbeat.nextDeadline, due > clock.ns { clock.ns = due }
            provider.tick(now: clock.now())
        } else if let timeSync {
            timeSync.send(flags: r.u8())
        } else if let shutdown {
            let kind = ShutdownKind.allCases[Int(sel) % ShutdownKind.allCases.count]
            shutdown.shutdown(kind: kind, force: sel & 0x10 != 0, reason: text(&r, limit: 64)) { status in answers.value += Int(status ?? 1) & 1 }
        } else if let kvp {
            let pools = KVPPool.allCases
            let pool = pools[Int(r.u8()) % pools.count]
            switch sel % 5 {
            case 0:
                let key = text(&r, limit: 300)
                let value = text(&r, limit: 1100)
                _ = try? kvp.set(key, value, pool: pool) { _ in answers.value += 1 }
            case 1:
                let key = text(&r, limit: 300)
                _ = try? kvp.delete(key, pool: pool) { _ in answers.value += 1 }
            case 2:
                kvp.enumerate(pool: pool) { result in
                    if case .success(let items) = result { for item in items { fuzzConsume(item.key + item.value) } }
                    answers.value += 1
                }
            case 3:
                _ = try? kvp.getIP(adapterID: text(&r, limit: 40)) { result in
                    if case .success(let info) = result { fuzzConsume(info.adapterID + info.addresses.joined()) }
                    answers.value += 1
                }
            default:
                let info = KVPIPInfo(adapterID: text(&r, limit: 40), family: r.u8(), dhcp: r.bool(), addresses: [text(&r, limit: 40)],
                                     subnets: [text(&r, limit: 20)], gateways: [text(&r, limit: 40)], dns: [text(&r, limit: 40)])
                _ = try? kvp.setIP(info) { _ in answers.value += 1 }
            }
        } else if let vss {
            let operation = VSSOperation.allCases[Int(sel) % VSSOperation.allCases.count]
            vss.send(operation) { answer in fuzzConsume(UInt64(answer?.flags ?? 0)); answers.value += 1 }
        } else if let fcopy {
            let cancel = FuzzCounter()
            cancel.value = sel & 0x40 != 0 ? Int(r.u8() % 4) : -1
            let size = UInt64(r.u16()) << UInt64(sel & 1)
            let destination = sel & 0x20 != 0 ? text(&r, limit: 300) : "/tmp/" + text(&r, limit: 40)
            let mode: UInt32? = sel & 0x08 != 0 ? r.u32() : nil
            fcopy.copy(fd: source, size: size, destination: destination, flags: FCopyFlags(rawValue: r.u32()), mode: mode,
                       progress: { fuzzConsume($0) },
                       cancelled: {
                           guard cancel.value >= 0 else { return false }
                           cancel.value -= 1
                           return cancel.value < 0
                       },
                       completion: { result in fuzzConsume(UInt64(truncatingIfNeeded: "\(result)".utf8.count)); answers.value += 1 })
        }
    }
}
