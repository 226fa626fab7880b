// Target "ic-guest": the guest ends of the integration services (heartbeat, time sync with clock
// discipline, KVP with its store and IP requests, VSS, FCOPY) behind ICClient, on a channel the
// guest's own VMBus client opened, with a hostile host writing the requests.

import Foundation
import Glibc
import IntegrationServices
import VMBusChannel
import VMBusClient
import VMBusRing
import VMBusWire

let icGuestTarget = FuzzTarget(
    name: "ic-guest",
    summary: "ICClient with HeartbeatService, TimeSyncService+ClockDiscipline, KVPService (store in a scratch directory), VSSService, FCopyService on host requests"
) { data in
    var r = FuzzReader(data)
    ICGuestFuzz.run(&r)
}

/// A freezer that freezes nothing (and fails when told to).
final class FuzzFreezer: FileSystemFreezer {
    var fail = false
    private(set) var isFrozen = false
    func freeze() throws(FreezeError) -> [String] {
        if fail { throw .failed("/", errno: EIO) }
        isFrozen = true
        return ["/"]
    }
    func thaw() -> [String] {
        isFrozen = false
        return []
    }
}

/// A clock the time service may step and slew.
final class FuzzDisciplinedClock: DisciplinableClock {
    var value: Int64 = 1_700_000_000_000_000_000
    func now() -> Int64 { value }
    func step(by ns: Int64) { value = value &+ ns }
    func slew(by ns: Int64) { value = value &+ ns / 2 }
}

/// An adapter configuration without an adapter: SET checks the plan, GET answers a fixed configuration.
final class FuzzIPConfigurator: IPConfigurator {
    func read(adapterID: String) throws(IPConfigError) -> KVPIPInfo {
        guard !adapterID.isEmpty else { throw .noSuchAdapter(adapterID) }
        return KVPIPInfo(adapterID: adapterID, family: 1, dhcp: false, addresses: ["192.0.2.10", "2001:db8::10"],
                         subnets: ["255.255.255.0", "64"], gateways: ["192.0.2.1"], dns: ["192.0.2.53"])
    }

    func apply(_ info: KVPIPInfo) throws(IPConfigError) {
        let plan = try IPPlan(info, interface: "eth0")
        fuzzConsume(UInt64(plan.addresses.count))
    }
}

/// The host's ends of the guest's rings, and the guest driver that answers on them.
final class FuzzICHost {
    var writer: RingWriter
    var replies: RingReader
    let endpoint: ChannelEndpoint
    private(set) var client: ICClient?

    init(channel: ClientChannel, service: any ICGuestService) throws {
        guard let endpoint = channel.endpoint else { throw RingError.corruptPacket("the channel is not open") }
        self.endpoint = endpoint
        writer = try RingWriter(ring: endpoint.reader.ring)
        replies = try RingReader(ring: endpoint.writer.ring)
        client = ICClient(channel: channel, service: service, logger: fuzzLogger)
    }

    /// One host packet, the guest's drain, and the replies taken.
    func deliver(_ type: PacketType, _ payload: [UInt8], transactionID: UInt64) {
        _ = try? writer.tryWrite(type: type, transactionID: transactionID, payload: payload)
        _ = writer.commit()
        client?.drain()
        var n = 0
        while n < 64, let p = try? replies.next() {
            n += 1
            fuzzConsume(p.payloadBytes())
        }
        _ = replies.commit()
    }

    /// The host scribbles over a shared field of the guest's inbound ring.
    func scribble(field: Int, value: UInt32) {
        let fields = [RingControlPage.writeIndex, RingControlPage.readIndex, RingControlPage.pendingSendSize]
        endpoint.reader.ring.control.storeBytes(of: value, toByteOffset: fields[field % fields.count], as: UInt32.self)
        client?.drain()
    }

    /// Lets go of the guest driver (before the bus it signals through goes).
    func end() { client = nil }
}

enum ICGuestFuzz {
    /// Where the KVP pools and FCOPY files go: a per-process directory in /dev/shm (else /tmp).
    static let scratch: String = {
        var isDirectory: ObjCBool = false
        let base = FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDirectory) && isDirectory.boolValue ? "/dev/shm" : "/tmp"
        return "\(base)/viridian-fuzz-\(getpid())"
    }()
    static var kvpDirectory: String { scratch + "/kvp" }
    static var fcopyDirectory: String { scratch + "/fcopy" }

    static let classes: [DeviceClass] = [.heartbeat, .timeSync, .kvp, .vss, .fileCopy]

    /// Empties the scratch directories, so every input starts from the same files.
    static func clean() {
        let fm = FileManager.default
        _ = try? fm.createDirectory(atPath: fcopyDirectory, withIntermediateDirectories: true)
        _ = try? fm.createDirectory(atPath: kvpDirectory, withIntermediateDirectories: true)
        for directory in [fcopyDirectory, kvpDirectory] {
            for name in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] { _ = try? fm.removeItem(atPath: directory + "/" + name) }
        }
    }

    static func run(_ r: inout FuzzReader) {
        clean()
        let setup = r.u8()
        let kind = Int(setup % 5)
        let clock = FuzzClock()
        let healthy = FuzzCounter()
        let freezer = FuzzFreezer()
        freezer.fail = setup & 0x80 != 0
        let service: any ICGuestService
        switch kind {
        case 0:
            service = HeartbeatService { healthy.value == 0 }
        case 1:
            let sink = ClockDiscipline(clock: FuzzDisciplinedClock(), referenceNow: { clock.now() })
            service = TimeSyncService(referenceNow: { clock.now() }, sink: sink)
        case 2:
            guard let store = try? KVPStore(directory: kvpDirectory) else { return }
            let intrinsic = [KVPRecord(key: "FullyQualifiedDomainName", value: "fuzz.example"), KVPRecord(key: "OSName", value: "Linux")]
            var ip: (any IPConfigurator)?
            if setup & 0x40 == 0 { ip = FuzzIPConfigurator() }
            service = KVPService(store: store, intrinsic: { intrinsic }, ip: ip, logger: fuzzLogger, background: false)
        case 3:
            service = VSSService(freezer: freezer, autoThawNs: 2_000_000_000, now: { clock.now() }, logger: fuzzLogger, background: false)
        default:
            service = FCopyService(allowed: [fcopyDirectory], now: { clock.now() }, logger: fuzzLogger, background: false)
        }
        let rig = FuzzGuestRig(versions: VMBusVersion.linuxPreference)
        defer { rig.finish() }
        guard let channel = rig.openChannel(deviceClass: classes[kind], sendPages: 4, receivePages: 4),
            let host = try? FuzzICHost(channel: channel, service: service)
        else { return }
        defer { host.end() }
        // The host negotiates first, as Hyper-V does.
        let negotiate = ICNegotiation(frameworks: [ICVersion(1, 0), ICVersion(3, 0)],
                                      services: [ICVersion(1, 0), ICVersion(3, 0), ICVersion(4, 0), ICVersion(5, 0), ICVersion(1, 1)])
        if setup & 0x20 == 0 {
            let header = ICHeader(framework: ICVersion(1, 0), type: .negotiate, version: ICVersion(1, 0), bodySize: 0)
            host.deliver(.dataInBand, ICHeader.packet(header, body: negotiate.encoded), transactionID: 1)
        }
        var steps = 0
        while steps < 96 && !r.isAtEnd {
            steps += 1
            let op = r.u8()
            switch op % 8 {
            case 0, 1, 2:
                let body = op & 0x80 != 0 ? r.blob(limit: 8000) : serviceBody(&r, kind: kind)
                let packet = request(&r, service: service, op: op, body: body)
                host.deliver(.dataInBand, packet, transactionID: UInt64(r.u16()))
            case 3:
                let frameworks = versions(&r)
                let services = versions(&r)
                let header = ICHeader(framework: ICVersion(3, 0), type: .negotiate, version: ICVersion(3, 0), bodySize: 0)
                var body = ICNegotiation(frameworks: frameworks, services: services).encoded
                if op & 0x80 != 0 && body.count >= 4 {
                    let at = 2 * Int(r.u8() & 1)
                    body.putLE(r.u16(), at: at)
                }
                host.deliver(.dataInBand, ICHeader.packet(header, body: body), transactionID: 2)
            case 4:
                let p = FuzzPacketScript.read(&r, pages: 16, payloadLimit: 2048)
                host.deliver(p.type, p.payload, transactionID: p.transactionID)
            case 5:
                clock.advance(UInt64(r.u32()) * 1_000_000)
                service.tick(now: clock.now())
                healthy.value = Int(r.u8() & 1)
            case 6:
                host.scribble(field: Int(r.u8()), value: r.u32())
            default:
                service.channelClosed()
            }
        }
        service.channelClosed()
        withExtendedLifetime(freezer) {}
    }

    static func versions(_ r: inout FuzzReader) -> [ICVersion] {
        let known = [ICVersion(1, 0), ICVersion(3, 0), ICVersion(4, 0), ICVersion(5, 0), ICVersion(1, 1), ICVersion(3, 2)]
        let count = Int(r.u8() % 5)
        var out: [ICVersion] = []
        for _ in 0..<count {
            let sel = r.u8()
            out.append(sel & 0x80 != 0 ? ICVersion(r.u16(), r.u16()) : known[Int(sel) % known.count])
        }
        return out
    }

    /// The IC header in front of `body`: the service's type and a version it speaks, mostly.
    static func request(_ r: inout FuzzReader, service: any ICGuestService, op: UInt8, body: [UInt8]) -> [UInt8] {
        let sel = r.u8()
        let type: ICMessageType
        switch sel & 3 {
        case 0, 1: type = service.serviceType
        case 2: type = .negotiate
        default: type = [ICMessageType.heartbeat, .kvpExchange, .shutdown, .timeSync, .vss, .fileCopy][Int(sel >> 2) % 6]
        }
        let versions = service.serviceVersions
        let version = versions.isEmpty ? ICVersion(1, 0) : versions[Int(sel >> 4) % versions.count]
        let flags = op & 0x40 != 0 ? r.u8() : ICFlags.transaction | ICFlags.request
        let header = ICHeader(framework: ICVersion(3, 0), type: type, version: version, bodySize: body.count, status: 0,
                              transactionID: r.u8(), flags: flags)
        var packet = ICHeader.packet(header, body: body)
        if op & 0x20 != 0 { packet.putLE(r.u16(), at: 18) }  // a body size that lies
        return packet
    }

    /// UTF-16LE bytes of a short text from the input, with its NUL.
    static func utf16(_ r: inout FuzzReader, limit: Int) -> [UInt8] {
        let text = String(decoding: r.blob(limit: limit), as: UTF8.self)
        var out: [UInt8] = []
        for unit in text.utf16 { out += [UInt8(truncatingIfNeeded: unit), UInt8(truncatingIfNeeded: unit >> 8)] }
        return out + [0, 0]
    }

    /// A body the service expects, fields from the input.
    static func serviceBody(_ r: inout FuzzReader, kind: Int) -> [UInt8] {
        switch kind {
        case 0:
            var b = [UInt8](repeating: 0, count: 40)
            b.putLE(r.u64(), at: 0)
            return b
        case 1:
            let v4 = r.bool()
            var b = [UInt8](repeating: 0, count: v4 ? 24 : 28)
            let sel = r.u8()
            let ticks = sel & 0x80 != 0 ? r.u64() : HyperVTime.acceptedTicks.lowerBound + UInt64(r.u32()) * 10_000_000
            b.putLE(ticks, at: 0)
            if v4 { b.putLE(r.u64() % 100_000_000_000, at: 8) }
            b[v4 ? 16 : 24] = sel & 3
            return b
        case 2:
            return kvpBody(&r)
        case 3:
            let operation = r.u8()
            var b = [UInt8](repeating: 0, count: VSSMessage.size)
            b[0] = operation & 0x80 != 0 ? operation : operation % 8
            b.putLE(r.u32(), at: 8)
            return b
        default:
            return fcopyBody(&r)
        }
    }

    static func kvpBody(_ r: inout FuzzReader) -> [UInt8] {
        let op = r.u8() % 7
        let pool = r.u8() % 6
        var b: [UInt8]
        switch op {
        case 0, 1:
            // GET or SET: the value record at 4 (type, key size, value size, key, value).
            b = [UInt8](repeating: 0, count: KVPLayout.getSetSize)
            let key = utf16(&r, limit: 300)
            let value = utf16(&r, limit: 1100)
            let types = [KVPLayout.regSZ, KVPLayout.regU32, KVPLayout.regU64, r.u32()]
            b.putLE(types[Int(r.u8()) % types.count], at: 4)
            let lie = r.u8()
            b.putLE(lie & 1 != 0 ? r.u32() : UInt32(key.count), at: 8)
            b.putLE(lie & 2 != 0 ? r.u32() : UInt32(value.count), at: 12)
            for (i, byte) in key.prefix(KVPLayout.maximumKeyBytes).enumerated() { b[16 + i] = byte }
            for (i, byte) in value.prefix(KVPLayout.maximumValueBytes).enumerated() { b[528 + i] = byte }
        case 2:
            b = [UInt8](repeating: 0, count: KVPLayout.deleteSize)
            let key = utf16(&r, limit: 300)
            b.putLE(r.u8() & 1 != 0 ? r.u32() : UInt32(key.count), at: 4)
            for (i, byte) in key.prefix(KVPLayout.maximumKeyBytes).enumerated() { b[8 + i] = byte }
        case 3:
            b = [UInt8](repeating: 0, count: KVPLayout.enumerateSize)
            b.putLE(UInt32(r.u8() % 8), at: 4)
        case 4, 5:
            b = [UInt8](repeating: 0, count: KVPIPInfo.size)
            let text = { (r: inout FuzzReader) -> String in String(decoding: r.blob(limit: 48), as: UTF8.self) }
            let info = KVPIPInfo(adapterID: text(&r), family: r.u8() % 4, dhcp: r.bool(), addresses: [text(&r), text(&r)],
                                 subnets: [text(&r), text(&r)], gateways: [text(&r)], dns: [text(&r)])
            _ = try? info.write(into: &b)
        default:
            b = r.blob(limit: 3000)
            if b.count < 4 { b += [UInt8](repeating: 0, count: 4 - b.count) }
        }
        b[0] = op == 6 ? b[0] : (op == 4 ? KVPOperation.getIPInfo.rawValue : op == 5 ? KVPOperation.setIPInfo.rawValue : op)
        b[1] = pool
        return b
    }

    static func fcopyBody(_ r: inout FuzzReader) -> [UInt8] {
        switch r.u8() % 6 {
        case 0, 1:
            let names = ["a.txt", "..", ".", "x/y", "", "b"]
            let sel = r.u8()
            // Raw names and paths stay inside the scratch directory even if the service's checks
            // failed: no "/" in a raw name, no ".." in a raw path (the fixed ones test those).
            let rawName = String(decoding: r.blob(limit: 80), as: UTF8.self).replacingOccurrences(of: "/", with: "_")
            let name = sel & 0x80 != 0 ? rawName : names[Int(sel) % names.count]
            let paths = [fcopyDirectory, fcopyDirectory + "/sub", fcopyDirectory + "/../x", scratch + "/outside", "relative-fcopy"]
            let rawPath = fcopyDirectory + "/" + String(decoding: r.blob(limit: 120), as: UTF8.self).replacingOccurrences(of: "..", with: "_")
            let path = sel & 0x40 != 0 ? rawPath : paths[Int(sel >> 3) % paths.count]
            let start = FCopyStart(fileName: name, pathName: path, flags: FCopyFlags(rawValue: r.u32() & 7),
                                   fileSize: UInt64(r.u16()) << UInt64(r.u8() % 8), mode: r.bool() ? r.u32() : nil)
            return (try? start.encoded()) ?? FCopyFragment.bare(.start)
        case 2, 3:
            let data = r.blob(limit: 6200)
            let offset = UInt64(r.u16()) << UInt64(r.u8() % 4)
            var b = data.withUnsafeBytes { FCopyFragment.body(offset: offset, data: $0) }
            if r.u8() == 0xFF { b.putLE(r.u32(), at: FCopyLayout.writeSize32) }
            return b
        case 4:
            return FCopyFragment.bare(.complete)
        default:
            return FCopyFragment.bare(r.bool() ? .cancel : .complete)
        }
    }
}
