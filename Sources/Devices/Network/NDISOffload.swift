// NDIS offload structures carried by RNDIS OIDs: hardware capabilities, offload parameters, RSS capabilities.

import VMBusWire

/// `NDIS_OFFLOAD` as a host answers OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: checksum offload for
/// TCP and UDP over IPv4 and IPv6, LSOv2 for both, and receive coalescing (RSC).
public enum NDISOffload {
    public static let objectType: UInt8 = 0xA7
    /// 802.3 encapsulation (`NDIS_OFFLOAD_ENCAP_8023`).
    public static let encap8023: UInt32 = 0x2
    public static let tcp4 = UInt32(0x10), tcp4Options = UInt32(0x04), udp4 = UInt32(0x40)
    public static let ip6Extensions = UInt32(0x01), tcp6Options = UInt32(0x04), tcp6 = UInt32(0x10), udp6 = UInt32(0x40)
    /// Largest LSO segment a guest may hand over (an IPv4 datagram's limit).
    public static let maximumLSOSize: UInt32 = 65535

    /// Revision and size by NVSP version (H.7): rev 3 / 156 from V5, rev 2 / 144 at V4, else rev 1 / 112.
    public static func revision(nvsp version: UInt32) -> (revision: UInt8, size: Int) {
        version >= NVSPVersion.v5 ? (3, 156) : version >= NVSPVersion.v4 ? (2, 144) : (1, 112)
    }

    /// The capability structure for `nvsp` version.
    public static func capabilities(nvsp version: UInt32) -> [UInt8] {
        let (revision, size) = revision(nvsp: version)
        var b = [UInt8](repeating: 0, count: size)
        b[0] = objectType
        b[1] = revision
        b.putLE(UInt16(size), at: 2)
        let v4 = tcp4 | tcp4Options | udp4, v6 = tcp6 | tcp6Options | ip6Extensions | udp6
        for (i, v) in [encap8023, v4, encap8023, v4, encap8023, v6, encap8023, v6].enumerated() { b.putLE(v, at: 4 + 4 * i) }
        // LSOv2: ip4 encap, max size, min segments; ip6 encap, max size, min segments, options.
        for (i, v) in [encap8023, maximumLSOSize, 2, encap8023, maximumLSOSize, 2, ip6Extensions | tcp6Options].enumerated() {
            b.putLE(v, at: 80 + 4 * i)
        }
        if size >= 156 {
            b[144] = 1  // RSC for IPv4
            b[145] = 1  // and IPv6
        }
        return b
    }

    /// Whether `b` is a capability structure a Linux guest accepts (type, revision ≥ 1, 112…156 bytes).
    public static func isValid(_ b: [UInt8]) -> Bool {
        guard b.count >= 112, b[0] == objectType, b[1] >= 1 else { return false }
        let size = Int(b.le(UInt16.self, at: 2))
        return size >= 112 && size <= 156 && size <= b.count
    }
}

/// `NDIS_OFFLOAD_PARAMETERS` as netvsc sets it (type 0x80, revision 3, 28 bytes; 22 at NVSP ≤ V4).
public struct NDISOffloadParameters: Equatable, Sendable {
    public static let objectType: UInt8 = 0x80
    /// Checksum values: 1 disabled, 2 TX only, 3 RX only, 4 both; 0 no change.
    public static let checksumTXRX: UInt8 = 4
    /// LSO and RSC values: 1 disabled, 2 enabled.
    public static let enabled: UInt8 = 2, disabled: UInt8 = 1

    public var ipv4Checksum: UInt8 = 0
    public var tcp4Checksum: UInt8 = 0
    public var udp4Checksum: UInt8 = 0
    public var tcp6Checksum: UInt8 = 0
    public var udp6Checksum: UInt8 = 0
    public var lsoV2IPv4: UInt8 = 0
    public var lsoV2IPv6: UInt8 = 0
    public var rscIPv4: UInt8 = 0
    public var rscIPv6: UInt8 = 0

    public init() {}

    public init(decoding b: [UInt8]) throws(WireError) {
        guard b.count >= 22 else { throw .truncated(needed: 22, got: b.count) }
        guard b[0] == Self.objectType else { throw .invalidField("header.type", UInt64(b[0])) }
        ipv4Checksum = b[4]
        tcp4Checksum = b[5]
        udp4Checksum = b[6]
        tcp6Checksum = b[7]
        udp6Checksum = b[8]
        lsoV2IPv4 = b[11]
        lsoV2IPv6 = b[12]
        if b.count >= 24 {
            rscIPv4 = b[22]
            rscIPv6 = b[23]
        }
    }

    /// 28 bytes from NVSP V5 on, else 22 (UDP fields zero then, as Linux does).
    public func encode(nvsp version: UInt32) -> [UInt8] {
        let size = version >= NVSPVersion.v5 ? 28 : 22
        var b = [UInt8](repeating: 0, count: size)
        b[0] = Self.objectType
        b[1] = version >= NVSPVersion.v5 ? 3 : 2
        b.putLE(UInt16(size), at: 2)
        b[4] = ipv4Checksum
        b[5] = tcp4Checksum
        b[6] = size == 28 ? udp4Checksum : 0
        b[7] = tcp6Checksum
        b[8] = size == 28 ? udp6Checksum : 0
        b[11] = lsoV2IPv4
        b[12] = lsoV2IPv6
        if size == 28 {
            b[22] = rscIPv4
            b[23] = rscIPv6
        }
        return b
    }

    /// Receive checksum offload is on for TCP (RX or both).
    public var receiveChecksum: Bool { tcp4Checksum == 3 || tcp4Checksum == 4 || tcp6Checksum == 3 || tcp6Checksum == 4 }
}

/// Receive-side scaling structures: the capabilities a multi-queue device reports and the header
/// of the parameters netvsc sets (the indirection table itself is not used: the TAP's own queue
/// selection spreads the flows).
public enum NDISReceiveScale {
    public static let capabilitiesType: UInt8 = 0x88
    public static let parametersType: UInt8 = 0x89
    /// Toeplitz hashing of IPv4, TCP/IPv4, IPv6 and TCP/IPv6.
    public static let hashInfo: UInt32 = 0x1701

    /// NDIS_RECEIVE_SCALE_CAPABILITIES (18 bytes, revision 2).
    public static func capabilities(queues: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 18)
        b[0] = capabilitiesType
        b[1] = 2
        b.putLE(UInt16(18), at: 2)
        b.putLE(UInt32(0x0100 | 0x0200 | 0x0400), at: 4)  // TCP over IPv4, IPv6, IPv6 with extensions
        b.putLE(UInt32(queues), at: 8)
        b.putLE(UInt32(queues), at: 12)
        b.putLE(UInt16(128), at: 16)
        return b
    }

    /// NDIS_RECEIVE_SCALE_PARAMETERS as netvsc sets it: 40-byte header, 128 u32 queue numbers, 40-byte key.
    public static func parameters(queues: Int, disable: Bool) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 592)
        b[0] = parametersType
        b[1] = 2
        b.putLE(UInt16(40), at: 2)
        b.putLE(UInt16(disable ? 0x0010 : 0), at: 4)
        b.putLE(hashInfo, at: 8)
        b.putLE(UInt16(512), at: 12)
        b.putLE(UInt32(40), at: 16)
        b.putLE(UInt16(40), at: 20)
        b.putLE(UInt32(552), at: 24)
        for i in 0..<128 { b.putLE(UInt32(i % max(queues, 1)), at: 40 + 4 * i) }
        let key: [UInt8] = [0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
                            0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
                            0xbe, 0xac, 0x01, 0xfa]
        b.replaceSubrange(552..<592, with: key)
        return b
    }
}
