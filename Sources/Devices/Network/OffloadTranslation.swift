// Translates offload requests between RNDIS per-packet info (NDIS semantics) and virtio_net_hdr (TAP semantics).

/// NDIS and virtio describe the same offloads differently. For LSOv2, NDIS wants the IPv4 total
/// length (or IPv6 payload length) and IPv4 header checksum zero and the TCP checksum seeded with
/// a pseudo-header sum *without* the length; a TAP (like the kernel's CHECKSUM_PARTIAL) wants the
/// real lengths and a pseudo-header sum *with* the TCP length. These functions rewrite the frame
/// headers (a private copy of the first bytes of the frame) and build the other side's metadata.
/// A request that does not match the frame (offsets outside the headers, wrong IP version) is
/// refused with nil and the frame is dropped, never trusted.
public enum OffloadTranslation {
    /// Bytes of a frame copied out and fixed up: enough for Ethernet + VLAN + IPv6 + TCP with options.
    public static let headerBytes = 192

    struct Layout {
        var ipOffset: Int
        var ipv6: Bool
        var transportOffset: Int
        var protocolNumber: UInt8
    }

    static func be16(_ h: UnsafeRawBufferPointer, _ at: Int) -> Int { Int(h[at]) << 8 | Int(h[at + 1]) }
    static func putBE16(_ h: UnsafeMutableRawBufferPointer, _ at: Int, _ v: Int) {
        h[at] = UInt8(truncatingIfNeeded: v >> 8)
        h[at + 1] = UInt8(truncatingIfNeeded: v)
    }

    /// Ones'-complement fold of a 32-bit sum to 16 bits.
    static func fold(_ sum: UInt32) -> Int {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xFFFF) + (s >> 16) }
        return Int(s)
    }

    /// Finds the IP and transport headers (Ethernet, optional 802.1Q tag, IPv4 or IPv6 without
    /// extension headers). nil when the headers are not all inside `h`.
    static func layout(_ h: UnsafeRawBufferPointer) -> Layout? {
        guard h.count >= 14 else { return nil }
        var ipOffset = 14
        var ethertype = be16(h, 12)
        if ethertype == 0x8100 {
            guard h.count >= 18 else { return nil }
            ethertype = be16(h, 16)
            ipOffset = 18
        }
        switch ethertype {
        case 0x0800:
            guard h.count >= ipOffset + 20, h[ipOffset] >> 4 == 4 else { return nil }
            let ihl = Int(h[ipOffset] & 0xF) * 4
            guard ihl >= 20, h.count >= ipOffset + ihl else { return nil }
            return Layout(ipOffset: ipOffset, ipv6: false, transportOffset: ipOffset + ihl, protocolNumber: h[ipOffset + 9])
        case 0x86DD:
            guard h.count >= ipOffset + 40, h[ipOffset] >> 4 == 6 else { return nil }
            return Layout(ipOffset: ipOffset, ipv6: true, transportOffset: ipOffset + 40, protocolNumber: h[ipOffset + 6])
        default:
            return nil
        }
    }

    static func ipv4HeaderChecksum(_ h: UnsafeMutableRawBufferPointer, ipOffset: Int) {
        let ihl = Int(h[ipOffset] & 0xF) * 4
        putBE16(h, ipOffset + 10, 0)
        var sum: UInt32 = 0
        for i in stride(from: 0, to: ihl, by: 2) { sum += UInt32(be16(UnsafeRawBufferPointer(h), ipOffset + i)) }
        putBE16(h, ipOffset + 10, ~fold(sum) & 0xFFFF)
    }

    /// Adds (or with `subtract`, removes) `value` to the ones'-complement sum stored at `at`.
    static func adjustSum(_ h: UnsafeMutableRawBufferPointer, at: Int, by value: Int, subtract: Bool) {
        let old = UInt32(be16(UnsafeRawBufferPointer(h), at))
        let delta = UInt32(subtract ? ~value & 0xFFFF : value & 0xFFFF)
        putBE16(h, at, fold(old + delta))
    }

    // MARK: Host transmit: a guest's RNDIS packet to a TAP write

    /// The virtio header for a frame the guest sent with `info`; fixes `h` (the frame's first bytes)
    /// for LSO. nil when the request does not fit the frame.
    public static func virtioHeader(transmit info: PacketInfo, headers h: UnsafeMutableRawBufferPointer, frameLength: Int) -> VirtioNetHeader? {
        var v = VirtioNetHeader()
        if let lso = info.lso {
            guard let l = layout(UnsafeRawBufferPointer(h)), l.protocolNumber == 6, LSOInfo.isIPv6(lso) == l.ipv6,
                LSOInfo.tcpHeaderOffset(lso) == l.transportOffset, h.count >= l.transportOffset + 20 else { return nil }
            let tcpLength = frameLength - l.transportOffset
            let tcpHeader = Int(h[l.transportOffset + 12] >> 4) * 4
            let mss = LSOInfo.mss(lso)
            guard tcpHeader >= 20, tcpLength >= tcpHeader, mss > 0, mss <= 0xFFFF else { return nil }
            if l.ipv6 {
                putBE16(h, l.ipOffset + 4, frameLength - l.ipOffset - 40)
            } else {
                putBE16(h, l.ipOffset + 2, frameLength - l.ipOffset)
                ipv4HeaderChecksum(h, ipOffset: l.ipOffset)
            }
            adjustSum(h, at: l.transportOffset + 16, by: tcpLength, subtract: false)
            v.flags = VirtioNetHeader.needsChecksum
            v.gsoType = l.ipv6 ? VirtioNetHeader.gsoTCPv6 : VirtioNetHeader.gsoTCPv4
            v.gsoSize = UInt16(mss)
            v.checksumStart = UInt16(l.transportOffset)
            v.checksumOffset = 16
            v.headerLength = UInt16(min(l.transportOffset + tcpHeader, frameLength))
            return v
        }
        if let c = info.checksum, c & (ChecksumInfo.tcpChecksum | ChecksumInfo.udpChecksum | ChecksumInfo.ipHeaderChecksum) != 0 {
            guard let l = layout(UnsafeRawBufferPointer(h)) else { return nil }
            if c & ChecksumInfo.ipHeaderChecksum != 0 && !l.ipv6 { ipv4HeaderChecksum(h, ipOffset: l.ipOffset) }
            if c & (ChecksumInfo.tcpChecksum | ChecksumInfo.udpChecksum) != 0 {
                let tcp = c & ChecksumInfo.tcpChecksum != 0
                guard l.protocolNumber == (tcp ? 6 : 17), frameLength >= l.transportOffset + (tcp ? 20 : 8) else { return nil }
                v.flags = VirtioNetHeader.needsChecksum
                v.checksumStart = UInt16(l.transportOffset)
                v.checksumOffset = tcp ? 16 : 6
            }
        }
        return v
    }

    // MARK: Guest transmit: a TAP read to an RNDIS packet

    /// The PPIs for a frame read from the guest's TAP with `v`; rewrites `h` into NDIS LSO form.
    /// nil when the kernel asked for something NDIS cannot carry (the frame is dropped).
    public static func packetInfo(transmit v: VirtioNetHeader, headers h: UnsafeMutableRawBufferPointer, frameLength: Int) -> PacketInfo? {
        var info = PacketInfo()
        let gso = v.gsoType & ~VirtioNetHeader.gsoECN
        if gso == VirtioNetHeader.gsoTCPv4 || gso == VirtioNetHeader.gsoTCPv6 {
            guard let l = layout(UnsafeRawBufferPointer(h)), l.protocolNumber == 6, l.ipv6 == (gso == VirtioNetHeader.gsoTCPv6),
                Int(v.checksumStart) == l.transportOffset, h.count >= l.transportOffset + 20 else { return nil }
            let tcpLength = frameLength - l.transportOffset
            if l.ipv6 {
                putBE16(h, l.ipOffset + 4, 0)
            } else {
                putBE16(h, l.ipOffset + 2, 0)
                putBE16(h, l.ipOffset + 10, 0)
            }
            adjustSum(h, at: l.transportOffset + 16, by: tcpLength, subtract: true)
            info.lso = LSOInfo.make(mss: Int(v.gsoSize), tcpHeaderOffset: l.transportOffset, ipv6: l.ipv6)
            return info
        }
        guard gso == VirtioNetHeader.gsoNone else { return nil }
        if v.flags & VirtioNetHeader.needsChecksum != 0 {
            guard let l = layout(UnsafeRawBufferPointer(h)), Int(v.checksumStart) == l.transportOffset else { return nil }
            let tcp = v.checksumOffset == 16 && l.protocolNumber == 6
            let udp = v.checksumOffset == 6 && l.protocolNumber == 17
            guard tcp || udp else { return nil }
            info.checksum = (l.ipv6 ? ChecksumInfo.isIPv6 : ChecksumInfo.isIPv4) | (tcp ? ChecksumInfo.tcpChecksum : ChecksumInfo.udpChecksum)
                | UInt32(l.transportOffset) << 16
        }
        return info
    }

    // MARK: Receive, both ends

    /// Host receive: what to tell the guest about a frame read from the host TAP with `v`.
    public static func receiveInfo(_ v: VirtioNetHeader, headers h: UnsafeRawBufferPointer) -> PacketInfo {
        guard v.flags & (VirtioNetHeader.needsChecksum | VirtioNetHeader.dataValid) != 0, let l = layout(h) else { return PacketInfo() }
        var bits = l.ipv6 ? 0 : ChecksumInfo.ipSucceeded
        switch l.protocolNumber {
        case 6: bits |= ChecksumInfo.tcpSucceeded
        case 17: bits |= ChecksumInfo.udpSucceeded
        default: break
        }
        return PacketInfo(checksum: bits)
    }

    /// Guest receive: the virtio header for writing a received frame to the guest's TAP. A TAP has
    /// no way to say "checksum verified" (tun ignores DATA_VALID), so a frame the host vouched for
    /// goes in as CHECKSUM_PARTIAL, which the kernel also accepts without checking — the same
    /// trust Linux's netvsc gives the host (CHECKSUM_UNNECESSARY). Frames the host coalesced beyond
    /// the MTU go back to the kernel as a TCP GSO packet.
    public static func virtioHeader(receive info: PacketInfo, headers h: UnsafeRawBufferPointer, frameLength: Int, mtu: Int) -> VirtioNetHeader {
        var v = VirtioNetHeader()
        let bits = info.checksum ?? 0
        guard let l = layout(h) else { return v }
        let tcp = l.protocolNumber == 6 && bits & ChecksumInfo.tcpSucceeded != 0 && h.count >= l.transportOffset + 20
        let udp = l.protocolNumber == 17 && bits & ChecksumInfo.udpSucceeded != 0 && h.count >= l.transportOffset + 8
        guard tcp || udp else { return v }
        v.flags = VirtioNetHeader.needsChecksum
        v.checksumStart = UInt16(l.transportOffset)
        v.checksumOffset = tcp ? 16 : 6
        guard tcp, frameLength > l.ipOffset + mtu else { return v }
        let tcpHeader = Int(h[l.transportOffset + 12] >> 4) * 4
        let mss = mtu - (l.transportOffset - l.ipOffset) - tcpHeader
        guard tcpHeader >= 20, mss > 0 else { return v }
        v.gsoType = l.ipv6 ? VirtioNetHeader.gsoTCPv6 : VirtioNetHeader.gsoTCPv4
        v.gsoSize = UInt16(mss)
        v.headerLength = UInt16(l.transportOffset + tcpHeader)
        return v
    }
}
