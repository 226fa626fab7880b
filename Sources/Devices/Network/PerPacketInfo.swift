// RNDIS per-packet info (PPI): checksum, LSO, VLAN and hash records before a frame.

import VMBusWire

/// The per-packet information of one RNDIS PACKET, as far as Viridian uses it.
public struct PacketInfo: Equatable, Sendable {
    /// NDIS_TCP_IP_CHECKSUM_PACKET_INFO (TX request bits or RX result bits).
    public var checksum: UInt32?
    /// NDIS_TCP_LARGE_SEND_OFFLOAD_NET_BUFFER_LIST_INFO (LSOv2).
    public var lso: UInt32?
    /// IEEE 802.1Q tag info.
    public var vlan: UInt32?
    /// RSS hash value.
    public var hash: UInt32?

    public init(checksum: UInt32? = nil, lso: UInt32? = nil, vlan: UInt32? = nil, hash: UInt32? = nil) {
        self.checksum = checksum
        self.lso = lso
        self.vlan = vlan
        self.hash = hash
    }

    /// Bytes the PPIs take when stored (16 each).
    public var storedSize: Int { PerPacketInfo.entrySize * [checksum, lso, vlan, hash].compactMap { $0 }.count }

    /// Stores the records at `p` (hash, VLAN, then LSO or checksum, Linux's order); returns bytes written.
    @discardableResult
    public func store(to p: UnsafeMutableRawPointer) -> Int {
        var at = 0
        for (type, value) in [(PerPacketInfo.hash, hash), (PerPacketInfo.vlan, vlan), (PerPacketInfo.lso, lso), (PerPacketInfo.checksum, checksum)] {
            guard let value else { continue }
            (p + at).putLE(UInt32(PerPacketInfo.entrySize), at: 0)
            (p + at).putLE(type, at: 4)
            (p + at).putLE(UInt32(PerPacketInfo.headerSize), at: 8)
            (p + at).putLE(value, at: 12)
            at += PerPacketInfo.entrySize
        }
        return at
    }
}

/// PPI record layout: `{u32 size, u32 type (bit 31 internal), u32 ppi_offset}` then the value.
public enum PerPacketInfo {
    public static let headerSize = 12
    public static let entrySize = 16
    public static let checksum: UInt32 = 0
    public static let lso: UInt32 = 2
    public static let vlan: UInt32 = 6
    public static let hash: UInt32 = 8
    public static let internalFlag: UInt32 = 0x8000_0000

    /// Parses `length` bytes of records at `p`. Unknown and internal types are skipped; a record
    /// that does not fit, or whose value lies outside it, makes the whole list invalid (nil).
    public static func parse(_ p: UnsafeRawPointer, length: Int) -> PacketInfo? {
        var info = PacketInfo()
        var at = 0
        while at < length {
            guard length - at >= headerSize else { return nil }
            let size = Int(p.le(UInt32.self, at: at))
            let type = p.le(UInt32.self, at: at + 4)
            let offset = Int(p.le(UInt32.self, at: at + 8))
            guard size >= headerSize, size <= length - at, offset >= headerSize, offset <= size else { return nil }
            if type & internalFlag == 0, size - offset >= 4 {
                let value = p.le(UInt32.self, at: at + offset)
                switch type {
                case checksum: info.checksum = value
                case lso: info.lso = value
                case vlan: info.vlan = value
                case hash: info.hash = value
                default: break
                }
            }
            at += size
        }
        return info
    }
}

/// Bits of the checksum PPI.
public enum ChecksumInfo {
    // Transmit (guest asks the host to fill in checksums).
    public static let isIPv4: UInt32 = 1 << 0, isIPv6: UInt32 = 1 << 1
    public static let tcpChecksum: UInt32 = 1 << 2, udpChecksum: UInt32 = 1 << 3, ipHeaderChecksum: UInt32 = 1 << 4
    public static func tcpHeaderOffset(_ v: UInt32) -> Int { Int((v >> 16) & 0x3FF) }
    // Receive (host tells the guest what it verified).
    public static let tcpFailed: UInt32 = 1 << 0, udpFailed: UInt32 = 1 << 1, ipFailed: UInt32 = 1 << 2
    public static let tcpSucceeded: UInt32 = 1 << 3, udpSucceeded: UInt32 = 1 << 4, ipSucceeded: UInt32 = 1 << 5
}

/// Bits of the LSOv2 PPI: MSS 0–19, TCP header offset 20–29, type 30 (1 = LSOv2), IP version 31.
public enum LSOInfo {
    public static func make(mss: Int, tcpHeaderOffset: Int, ipv6: Bool) -> UInt32 {
        UInt32(mss & 0xF_FFFF) | UInt32(tcpHeaderOffset & 0x3FF) << 20 | 1 << 30 | (ipv6 ? 1 << 31 : 0)
    }
    public static func mss(_ v: UInt32) -> Int { Int(v & 0xF_FFFF) }
    public static func tcpHeaderOffset(_ v: UInt32) -> Int { Int((v >> 20) & 0x3FF) }
    public static func isIPv6(_ v: UInt32) -> Bool { v >> 31 != 0 }
}
