// KVP IP injection wire layout: hv_kvp_ip_msg (7428 bytes, packed) for GET_IP_INFO and SET_IP_INFO.

import VMBusWire

/// An adapter's IP configuration as GET_IP_INFO reports and SET_IP_INFO asks for it. Lists are
/// ';'-separated on the wire; `subnets` pairs with `addresses` (dotted masks for IPv4, prefix
/// lengths for IPv6).
public struct KVPIPInfo: Equatable, Sendable {
    /// SET: the NIC's VMBus instance id ("{…}") as Hyper-V sends it, or its MAC; GET: the MAC.
    public var adapterID: String
    /// 0 none, 1 IPv4, 2 IPv6 (Linux's ADDR_FAMILY_*); 3 both, as openvmm allows.
    public var family: UInt8
    public var dhcp: Bool
    public var addresses: [String]
    public var subnets: [String]
    public var gateways: [String]
    public var dns: [String]

    public init(adapterID: String, family: UInt8 = 1, dhcp: Bool = false, addresses: [String] = [], subnets: [String] = [],
                gateways: [String] = [], dns: [String] = []) {
        self.adapterID = adapterID
        self.family = family
        self.dhcp = dhcp
        self.addresses = addresses
        self.subnets = subnets
        self.gateways = gateways
        self.dns = dns
    }

    public static let size = 7428
    static let adapter = UTF16Field("adapter_id", offset: 2, units: 128)
    static let familyOffset = 258
    static let dhcpOffset = 259
    static let ip = UTF16Field("ip_addr", offset: 260, units: 1024)
    static let subnet = UTF16Field("sub_net", offset: 2308, units: 1024)
    static let gateway = UTF16Field("gate_way", offset: 4356, units: 512)
    static let dnsField = UTF16Field("dns_addr", offset: 5380, units: 1024)

    /// Reads the message (operation at 0, pool at 1) from the start of the KVP body.
    public init(decoding b: [UInt8]) throws(UTF16FieldError) {
        guard b.count >= Self.size else { throw .unterminated("hv_kvp_ip_msg of \(b.count) bytes") }
        adapterID = try Self.adapter.read(b)
        family = b[Self.familyOffset]
        dhcp = b[Self.dhcpOffset] != 0
        func list(_ f: UTF16Field) throws(UTF16FieldError) -> [String] {
            try f.read(b).split(separator: ";").map(\.trimmedSpaces).filter { !$0.isEmpty }
        }
        addresses = try list(Self.ip)
        subnets = try list(Self.subnet)
        gateways = try list(Self.gateway)
        dns = try list(Self.dnsField)
    }

    /// Writes the fields into `b` (a KVP body of at least `size` bytes), leaving operation and pool.
    public func write(into b: inout [UInt8]) throws(UTF16FieldError) {
        try Self.adapter.write(adapterID, into: &b)
        b[Self.familyOffset] = family
        b[Self.dhcpOffset] = dhcp ? 1 : 0
        try Self.ip.write(addresses.joined(separator: ";"), into: &b)
        try Self.subnet.write(subnets.joined(separator: ";"), into: &b)
        try Self.gateway.write(gateways.joined(separator: ";"), into: &b)
        try Self.dnsField.write(dns.joined(separator: ";"), into: &b)
    }
}

extension Substring {
    /// Without leading and trailing spaces.
    fileprivate var trimmedSpaces: String {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}

/// What applies and reads a guest adapter's IP configuration (the agent's network manager glue).
public protocol IPConfigurator: AnyObject {
    /// The configuration of the adapter `adapterID` names (MAC or instance id); nil: no such adapter.
    func read(adapterID: String) throws(IPConfigError) -> KVPIPInfo
    /// Applies `info` to the adapter it names.
    func apply(_ info: KVPIPInfo) throws(IPConfigError)
}

/// Why an IP configuration could not be read or applied; `status` is what the host gets.
public enum IPConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    case noSuchAdapter(String)
    case invalid(String)
    case wouldDisconnect
    case failed(String)

    public var status: UInt32 {
        switch self {
        case .noSuchAdapter: ICStatus.guidNotFound
        case .invalid, .wouldDisconnect: ICStatus.invalidArgument
        case .failed: ICStatus.fail
        }
    }

    public var description: String {
        switch self {
        case .noSuchAdapter(let a): "no adapter '\(a)'"
        case .invalid(let why): why
        case .wouldDisconnect: "refused: the adapter would be left with no address and no DHCP"
        case .failed(let why): why
        }
    }
}
