// VMBus protocol versions, encoded (major << 16) | minor, and what each one changes.

/// A VMBus protocol version as INITIATE_CONTACT carries it.
public struct VMBusVersion: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(major: UInt16, minor: UInt16) { rawValue = UInt32(major) << 16 | UInt32(minor) }

    /// Parses "MAJOR.MINOR", e.g. "5.3" or "0.13".
    public init(parsing text: some StringProtocol) throws(WireError) {
        let parts = text.split(separator: ".")
        guard parts.count == 2, let major = UInt16(parts[0]), let minor = UInt16(parts[1]) else {
            throw .invalidField("version '\(text)' (use MAJOR.MINOR, e.g. 5.3)", 0)
        }
        self.init(major: major, minor: minor)
    }

    public var major: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 16) }
    public var minor: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
    public var description: String { "\(major).\(minor)" }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    public static let ws2008 = VMBusVersion(rawValue: 0x0000_000D)
    public static let win7 = VMBusVersion(rawValue: 0x0001_0001)
    public static let win8 = VMBusVersion(rawValue: 0x0002_0004)
    public static let win8_1 = VMBusVersion(rawValue: 0x0003_0000)
    public static let win10 = VMBusVersion(rawValue: 0x0004_0000)
    public static let win10_v4_1 = VMBusVersion(rawValue: 0x0004_0001)
    public static let win10_v5 = VMBusVersion(rawValue: 0x0005_0000)
    public static let win10_v5_1 = VMBusVersion(rawValue: 0x0005_0001)
    public static let win10_v5_2 = VMBusVersion(rawValue: 0x0005_0002)
    public static let win10_v5_3 = VMBusVersion(rawValue: 0x0005_0003)

    /// Every version from WS2008 to WIN10 v5.3, oldest first.
    public static let all: [VMBusVersion] = [
        .ws2008, .win7, .win8, .win8_1, .win10, .win10_v4_1, .win10_v5, .win10_v5_1, .win10_v5_2, .win10_v5_3,
    ]

    /// The order current Linux tries, newest first (WS2008 and WIN7 dropped).
    public static let linuxPreference: [VMBusVersion] = [
        .win10_v5_3, .win10_v5_2, .win10_v5_1, .win10_v5, .win10_v4_1, .win10, .win8_1, .win8,
    ]

    /// Linux's name for the version, for logs and status output.
    public var linuxName: String {
        switch self {
        case .ws2008: "VERSION_WS2008"
        case .win7: "VERSION_WIN7"
        case .win8: "VERSION_WIN8"
        case .win8_1: "VERSION_WIN8_1"
        case .win10: "VERSION_WIN10"
        case .win10_v4_1: "VERSION_WIN10_V4_1"
        case .win10_v5: "VERSION_WIN10_V5"
        case .win10_v5_1: "VERSION_WIN10_V5_1"
        case .win10_v5_2: "VERSION_WIN10_V5_2"
        case .win10_v5_3: "VERSION_WIN10_V5_3"
        default: "unknown(\(description))"
        }
    }

    /// From 1.1: offers carry a per-channel signal connection id and UNLOAD_RESPONSE exists.
    public var hasChannelConnectionIDs: Bool { self >= .win7 }
    /// From 2.4: host→guest signals set event flag = relid; OPENCHANNEL target_vp honoured; sub-channels.
    public var usesPerChannelEventFlags: Bool { self >= .win8 }
    /// From 3.0: INITIATE_CONTACT target_vcpu honoured; guests may UNLOAD.
    public var honoursTargetVCPU: Bool { self >= .win8_1 }
    /// From 4.1: MODIFYCHANNEL exists.
    public var hasModifyChannel: Bool { self >= .win10_v4_1 }
    /// From 5.0: INITIATE_CONTACT goes to connection 4 and carries msg_sint/msg_vtl.
    public var usesMessageConnection4: Bool { self >= .win10_v5 }
    /// From 5.3: MODIFYCHANNEL is always answered.
    public var answersModifyChannel: Bool { self >= .win10_v5_3 }
}

/// Well-known VMBus connection ids (the hypervisor routes posts and signals by these).
public enum VMBusConnectionID {
    /// Messages before 5.0 (and after, unless the server names another).
    public static let message: UInt32 = 1
    /// Guest → host signals of protocol 0.13 guests.
    public static let event: UInt32 = 2
    /// INITIATE_CONTACT from 5.0 on.
    public static let message4: UInt32 = 4
}
