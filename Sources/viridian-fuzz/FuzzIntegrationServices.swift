// Target "ic-wire": the integration-service decoders: ICMSG header, negotiation, VSS, FCOPY start
// and fragment, KVP IP info, fixed UTF-16 fields, the IP plan checks and the time conversion.

import Glibc
import IntegrationServices
import VMBusWire

let icWireTarget = FuzzTarget(
    name: "ic-wire",
    summary: "ICHeader, ICNegotiation, VSSMessage, FCopyStart/FCopyFragment, KVPIPInfo, UTF16Field, IPPlan, HyperVTime; round trips where the format allows"
) { data in
    ICWireFuzz.run([UInt8](data))
}

enum ICWireFuzz {
    static func run(_ bytes: [UInt8]) {
        header(bytes)
        if let n = try? ICNegotiation(decoding: bytes[...]) { negotiation(n) }
        for offset in [0, ICHeader.size] {
            if let m = try? VSSMessage(decoding: bytes, at: offset) {
                fuzzCheck((try? VSSMessage(decoding: m.encoded, at: 0)) == m, "VSS message does not survive")
                _ = VSSOperation(rawValue: m.operation)
            }
        }
        fcopy(bytes)
        ipInfo(bytes)
        fields(bytes)
        time(bytes)
    }

    static func header(_ bytes: [UInt8]) {
        guard let h = try? ICHeader(decoding: bytes) else { return }
        _ = h.messageType
        fuzzConsume(UInt64(h.isResponse ? 1 : 0) ^ UInt64(h.status) ^ UInt64(h.transactionID))
        let body = Array(bytes[ICHeader.size..<(ICHeader.size + Int(h.bodySize))])
        let packet = ICHeader.packet(h, body: body)
        fuzzCheck(packet.count == ICHeader.size + body.count, "IC packet of \(packet.count) bytes")
        fuzzCheck((try? ICHeader(decoding: packet)) == h, "IC header does not survive")
        if bytes.count > ICHeader.size, let n = try? ICNegotiation(decoding: bytes[ICHeader.size...]) { negotiation(n) }
    }

    static func negotiation(_ n: ICNegotiation) {
        fuzzCheck(n.frameworks.count <= ICNegotiation.maximumCount && n.services.count <= ICNegotiation.maximumCount, "too many versions")
        let encoded = n.encoded
        fuzzCheck((try? ICNegotiation(decoding: encoded[...])) == n, "negotiation does not survive")
        let preferred = [ICVersion(4, 0), ICVersion(3, 0), ICVersion(1, 0)]
        if let chosen = ICNegotiation.choose(preferred, from: n.services) {
            fuzzCheck(n.services.contains(chosen) && preferred.contains(chosen), "chose \(chosen), which one side does not have")
        }
        for v in n.frameworks + n.services { fuzzConsume(v.description) }
    }

    static func fcopy(_ bytes: [UInt8]) {
        var start = bytes
        if start.count < FCopyLayout.startSize { start += [UInt8](repeating: 0, count: FCopyLayout.startSize - start.count) }
        if let s = try? FCopyStart(decoding: start) {
            fuzzConsume(s.fileName + s.pathName)
            if let encoded = try? s.encoded() {
                fuzzCheck((try? FCopyStart(decoding: encoded)) == s, "FCOPY start does not survive")
            } else {
                fuzzCheck(false, "a decoded FCOPY start does not encode")
            }
        }
        if let f = try? FCopyFragment(decoding: bytes) {
            fuzzCheck(f.size <= FCopyLayout.fragment && FCopyLayout.writeData + f.size <= bytes.count, "fragment of \(f.size) bytes")
            _ = FCopyOperation(rawValue: bytes.le(UInt32.self, at: 0))
        }
    }

    static func ipInfo(_ bytes: [UInt8]) {
        var message = bytes
        if message.count < KVPIPInfo.size { message += [UInt8](repeating: 0, count: KVPIPInfo.size - message.count) }
        guard let info = try? KVPIPInfo(decoding: message) else { return }
        // What decodes writes back (lists joined) and decodes to the same configuration. Checked for
        // ASCII text only: splitting at ';' works on characters, and joining can change where
        // other scripts' grapheme clusters end.
        var out = [UInt8](repeating: 0, count: KVPIPInfo.size)
        let texts = [info.adapterID] + info.addresses + info.subnets + info.gateways + info.dns
        if (try? info.write(into: &out)) != nil, texts.allSatisfy({ $0.utf8.allSatisfy { $0 < 0x80 } }) {
            fuzzCheck((try? KVPIPInfo(decoding: out)) == info, "KVP IP info does not survive")
        }
        for interface in ["eth0", ""] {
            if let plan = try? IPPlan(info, interface: interface) {
                fuzzCheck(plan.dhcp || plan.addresses.count == info.addresses.count, "a plan lost addresses")
                for a in plan.addresses { fuzzCheck((0...128).contains(a.prefix), "prefix \(a.prefix)") }
            }
        }
        for text in info.addresses + info.subnets + info.gateways + info.dns {
            let family = IPPlan.family(text)
            for f in [AF_INET, AF_INET6] {
                if let p = IPPlan.prefix(text, family: f) { fuzzCheck(p >= 0 && p <= (f == AF_INET ? 32 : 128), "prefix \(p)") }
            }
            fuzzConsume(UInt64(truncatingIfNeeded: family ?? 0))
        }
    }

    /// A UTF-16 field at an offset and size the first bytes choose, inside the input.
    static func fields(_ bytes: [UInt8]) {
        var r = FuzzReader(bytes: bytes)
        let units = 1 + r.below(300)
        let offset = r.below(64)
        var b = r.rest()
        if b.count < offset + 2 * units { b += [UInt8](repeating: 0, count: offset + 2 * units - b.count) }
        let field = UTF16Field("fuzz", offset: offset, units: units)
        guard let text = try? field.read(b) else { return }
        var out = [UInt8](repeating: 0xEE, count: field.end)
        if (try? field.write(text, into: &out)) != nil {
            fuzzCheck((try? field.read(out)) == text, "UTF-16 field does not survive")
        }
        for prefix in [0, 1, 8, 24, 31, 32] { fuzzConsume(IPPlan.mask(prefix)) }
    }

    /// Host times as the guest checks them before converting.
    static func time(_ bytes: [UInt8]) {
        var r = FuzzReader(bytes: bytes)
        let ticks = r.u64()
        if HyperVTime.acceptedTicks.contains(ticks) {
            let ns = HyperVTime.unixNanoseconds(ticks: ticks)
            fuzzCheck(HyperVTime.ticks(unixNanoseconds: ns) == ticks, "time conversion does not survive")
        }
        let ns = Int64(bitPattern: r.u64()) / 4
        fuzzConsume(HyperVTime.ticks(unixNanoseconds: ns))
        fuzzConsume(ShutdownProvider.body(kind: ShutdownKind.allCases[Int(r.u8()) % ShutdownKind.allCases.count], force: r.bool(),
                                          reason: String(decoding: r.rest(), as: UTF8.self)))
    }
}
