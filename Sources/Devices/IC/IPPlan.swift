// A SET_IP_INFO request checked before anything is changed: every address, mask, gateway and DNS
// server parsed, masks as prefix lengths, and no request that would leave the adapter unreachable.

import Glibc

/// A checked SET_IP_INFO request: addresses with prefix lengths, gateways, DNS servers.
public struct IPPlan: Equatable, Sendable {
    public var interface: String
    public var dhcp: Bool
    public var addresses: [(address: String, prefix: Int)]
    public var gateways: [String]
    public var dns: [String]

    public static func == (a: IPPlan, b: IPPlan) -> Bool {
        a.interface == b.interface && a.dhcp == b.dhcp && a.addresses.map { "\($0.address)/\($0.prefix)" } == b.addresses.map { "\($0.address)/\($0.prefix)" }
            && a.gateways == b.gateways && a.dns == b.dns
    }

    /// Checks `info` as the host sent it: every address, mask, gateway and server must parse;
    /// masks pair with addresses; no DHCP and no address would cut the guest off.
    public init(_ info: KVPIPInfo, interface: String) throws(IPConfigError) {
        self.interface = interface
        dhcp = info.dhcp
        let limit = 64
        guard info.addresses.count <= limit, info.gateways.count <= limit, info.dns.count <= limit else { throw .invalid("more than \(limit) entries in a list") }
        if !dhcp {
            guard !info.addresses.isEmpty else { throw .wouldDisconnect }
            guard info.subnets.count == info.addresses.count else {
                throw .invalid("\(info.addresses.count) addresses but \(info.subnets.count) subnets")
            }
        }
        var addresses: [(String, Int)] = []
        if !dhcp {
            for (address, subnet) in zip(info.addresses, info.subnets) {
                guard let family = Self.family(address) else { throw .invalid("'\(address)' is not an IP address") }
                guard let prefix = Self.prefix(subnet, family: family) else { throw .invalid("'\(subnet)' is not a subnet for \(address)") }
                addresses.append((address, prefix))
            }
        }
        self.addresses = addresses
        for g in info.gateways where Self.family(g) == nil { throw .invalid("gateway '\(g)' is not an IP address") }
        for d in info.dns where Self.family(d) == nil { throw .invalid("DNS server '\(d)' is not an IP address") }
        gateways = info.gateways
        dns = info.dns
    }

    /// AF_INET or AF_INET6 if `text` is an address of that family.
    public static func family(_ text: String) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, text, &buffer) == 1 { return AF_INET }
        if inet_pton(AF_INET6, text, &buffer) == 1 { return AF_INET6 }
        return nil
    }

    /// A prefix length from a contiguous dotted mask or a number.
    public static func prefix(_ subnet: String, family: Int32) -> Int? {
        let maximum = family == AF_INET ? 32 : 128
        if let n = Int(subnet) { return (0...maximum).contains(n) ? n : nil }
        guard family == AF_INET else { return nil }
        var mask = in_addr()
        guard inet_pton(AF_INET, subnet, &mask) == 1 else { return nil }
        let bits = UInt32(bigEndian: mask.s_addr)
        let ones = bits.leadingZeroBitCount == 0 ? (~bits).leadingZeroBitCount : 0
        guard bits == 0 || (ones > 0 && bits << ones == 0) else { return nil }
        return bits == 0 ? 0 : ones
    }

    /// A dotted mask for an IPv4 prefix length.
    public static func mask(_ prefix: Int) -> String {
        let bits: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << (32 - prefix)
        return "\(bits >> 24).\(bits >> 16 & 255).\(bits >> 8 & 255).\(bits & 255)"
    }
}
