// Integration-component framing: vmbuspipe_hdr + icmsg_hdr, version negotiation, status codes.

import VMBusWire

/// IC message types (`icmsgtype`).
public enum ICMessageType: UInt16, Sendable {
    case negotiate = 0
    case heartbeat = 1
    case kvpExchange = 2
    case shutdown = 3
    case timeSync = 4
    case vss = 5
    case fileCopy = 7
}

/// HRESULT-style statuses carried in `icmsg_hdr.status`.
public enum ICStatus {
    public static let ok: UInt32 = 0
    public static let fail: UInt32 = 0x8000_4005
    /// "No more items": ends a KVP enumeration.
    public static let noMoreItems: UInt32 = 0x8007_0103
    public static let notSupported: UInt32 = 0x8007_0032
    public static let invalidArgument: UInt32 = 0x8007_0057
    public static let guidNotFound: UInt32 = 0x8004_1002
    /// HV_ERROR_ALREADY_EXISTS: FCOPY's destination exists and overwrite was not asked for.
    public static let alreadyExists: UInt32 = 0x8007_0050
    /// HV_ERROR_DISK_FULL: FCOPY ran out of space (ENOSPC, EDQUOT).
    public static let diskFull: UInt32 = 0x8007_0070
}

/// `icflags` bits.
public enum ICFlags {
    public static let transaction: UInt8 = 1
    public static let request: UInt8 = 2
    public static let response: UInt8 = 4
}

/// A `{major, minor}` IC version.
public struct ICVersion: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt16
    public var minor: UInt16
    public init(_ major: UInt16, _ minor: UInt16) {
        self.major = major
        self.minor = minor
    }
    public var description: String { "\(major).\(minor)" }
}

/// The 28-byte IC header: pipe header (flags, msgsize) and icmsg_hdr.
public struct ICHeader: Equatable, Sendable {
    public static let size = 28
    public static let pipeDataFlag: UInt32 = 1

    public var framework: ICVersion
    public var type: UInt16
    public var version: ICVersion
    /// Body bytes after the header (`icmsgsize`).
    public var bodySize: UInt16
    public var status: UInt32
    public var transactionID: UInt8
    public var flags: UInt8

    public init(framework: ICVersion, type: ICMessageType, version: ICVersion, bodySize: Int, status: UInt32 = 0,
                transactionID: UInt8 = 0, flags: UInt8 = ICFlags.transaction | ICFlags.request) {
        self.framework = framework
        self.type = type.rawValue
        self.version = version
        self.bodySize = UInt16(clamping: bodySize)
        self.status = status
        self.transactionID = transactionID
        self.flags = flags
    }

    /// Reads the header of an IC packet, refusing short packets and bodies that overrun it.
    public init(decoding b: [UInt8]) throws(WireError) {
        guard b.count >= Self.size else { throw .truncated(needed: Self.size, got: b.count) }
        framework = ICVersion(b.le(at: 8), b.le(at: 10))
        type = b.le(at: 12)
        version = ICVersion(b.le(at: 14), b.le(at: 16))
        bodySize = b.le(at: 18)
        status = b.le(at: 20)
        transactionID = b[24]
        flags = b[25]
        guard Self.size + Int(bodySize) <= b.count else { throw .truncated(needed: Self.size + Int(bodySize), got: b.count) }
    }

    /// Writes the header into the first 28 bytes of `b` (which holds header + body).
    public func write(into b: inout [UInt8]) {
        b.putLE(Self.pipeDataFlag, at: 0)
        b.putLE(UInt32(b.count - 8), at: 4)
        b.putLE(framework.major, at: 8)
        b.putLE(framework.minor, at: 10)
        b.putLE(type, at: 12)
        b.putLE(version.major, at: 14)
        b.putLE(version.minor, at: 16)
        b.putLE(bodySize, at: 18)
        b.putLE(status, at: 20)
        b[24] = transactionID
        b[25] = flags
        b[26] = 0
        b[27] = 0
    }

    public var messageType: ICMessageType? { ICMessageType(rawValue: type) }
    public var isResponse: Bool { flags & ICFlags.response != 0 }

    /// A whole packet: header then `body`.
    public static func packet(_ header: ICHeader, body: [UInt8]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size + body.count)
        b.replaceSubrange(size..<b.count, with: body)
        var h = header
        h.bodySize = UInt16(clamping: body.count)
        h.write(into: &b)
        return b
    }
}

/// The negotiate body: framework versions, then service versions.
public struct ICNegotiation: Equatable, Sendable {
    public var frameworks: [ICVersion]
    public var services: [ICVersion]
    /// Most versions of each kind a peer may list (Linux's limit).
    public static let maximumCount = 100

    public init(frameworks: [ICVersion], services: [ICVersion]) {
        self.frameworks = frameworks
        self.services = services
    }

    public var encoded: [UInt8] {
        var b = [UInt8](repeating: 0, count: 8 + 4 * (frameworks.count + services.count))
        b.putLE(UInt16(frameworks.count), at: 0)
        b.putLE(UInt16(services.count), at: 2)
        for (i, v) in (frameworks + services).enumerated() {
            b.putLE(v.major, at: 8 + 4 * i)
            b.putLE(v.minor, at: 10 + 4 * i)
        }
        return b
    }

    /// Parses a negotiate body (everything after the 28-byte header).
    public init(decoding body: ArraySlice<UInt8>) throws(WireError) {
        let b = Array(body)
        guard b.count >= 8 else { throw .truncated(needed: 8, got: b.count) }
        let f = Int(b.le(UInt16.self, at: 0)), m = Int(b.le(UInt16.self, at: 2))
        guard f <= Self.maximumCount, m <= Self.maximumCount else { throw .invalidField("version count", UInt64(max(f, m))) }
        guard b.count >= 8 + 4 * (f + m) else { throw .truncated(needed: 8 + 4 * (f + m), got: b.count) }
        let all = (0..<(f + m)).map { ICVersion(b.le(at: 8 + 4 * $0), b.le(at: 10 + 4 * $0)) }
        frameworks = Array(all[0..<f])
        services = Array(all[f...])
    }

    /// Linux's choice: the first of `preferred` present in `offered`.
    public static func choose(_ preferred: [ICVersion], from offered: [ICVersion]) -> ICVersion? {
        preferred.first { offered.contains($0) }
    }
}
