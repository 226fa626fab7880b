// SynIC and hypervisor MSR numbers and the bit layouts of the registers VMBus programs.

/// Synthetic MSR numbers (x86).
public enum HvMSR {
    public static let guestOSID: UInt32 = 0x4000_0000
    public static let hypercall: UInt32 = 0x4000_0001
    public static let vpIndex: UInt32 = 0x4000_0002
    public static let reset: UInt32 = 0x4000_0003
    public static let vpRuntime: UInt32 = 0x4000_0010
    public static let timeRefCount: UInt32 = 0x4000_0020
    public static let referenceTSC: UInt32 = 0x4000_0021
    public static let scontrol: UInt32 = 0x4000_0080
    public static let sversion: UInt32 = 0x4000_0081
    public static let siefp: UInt32 = 0x4000_0082
    public static let simp: UInt32 = 0x4000_0083
    public static let eom: UInt32 = 0x4000_0084
    public static let sirbp: UInt32 = 0x4000_0085
    /// SINT0 … SINT15 are `sint0 + n`.
    public static let sint0: UInt32 = 0x4000_0090
    public static func sint(_ n: Int) -> UInt32 { sint0 + UInt32(n) }
}

/// SCONTROL: bit 0 enables the whole SynIC.
public struct SControlRegister: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(enabled: Bool) { rawValue = enabled ? 1 : 0 }
    public var enabled: Bool { rawValue & 1 != 0 }
}

/// SIMP and SIEFP: bit 0 enable, bits 63:12 the guest page number of the page.
public struct SynICPageRegister: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(enabled: Bool, pageNumber: UInt64) { rawValue = pageNumber << 12 | (enabled ? 1 : 0) }
    public var enabled: Bool { rawValue & 1 != 0 }
    public var pageNumber: UInt64 { rawValue >> 12 }
    public var gpa: UInt64 { pageNumber << 12 }
}

/// SINTx: vector, masked, auto-EOI, polling, as-intercept and proxy bits.
public struct SintRegister: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(vector: UInt8, masked: Bool = false, autoEOI: Bool = false, polling: Bool = false,
                asIntercept: Bool = false, proxy: Bool = false) {
        rawValue = UInt64(vector) | (masked ? 1 << 16 : 0) | (autoEOI ? 1 << 17 : 0) | (polling ? 1 << 18 : 0)
            | (asIntercept ? 1 << 19 : 0) | (proxy ? 1 << 20 : 0)
    }
    /// Reset state: masked, vector 0.
    public static let reset = SintRegister(rawValue: 1 << 16)
    public var vector: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    public var masked: Bool { rawValue & (1 << 16) != 0 }
    public var autoEOI: Bool { rawValue & (1 << 17) != 0 }
    public var polling: Bool { rawValue & (1 << 18) != 0 }
    public var asIntercept: Bool { rawValue & (1 << 19) != 0 }
    public var proxy: Bool { rawValue & (1 << 20) != 0 }
    /// Vectors 0–15 are invalid for a SINT.
    public var hasValidVector: Bool { vector >= 16 }
}

/// HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, bits 63:12 page number.
public struct HypercallMSRRegister: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(enabled: Bool, locked: Bool = false, pageNumber: UInt64) {
        rawValue = pageNumber << 12 | (locked ? 2 : 0) | (enabled ? 1 : 0)
    }
    public var enabled: Bool { rawValue & 1 != 0 }
    public var locked: Bool { rawValue & 2 != 0 }
    public var pageNumber: UInt64 { rawValue >> 12 }
    /// Bits 11:2 must be zero.
    public var hasReservedBits: Bool { rawValue & 0xFFC != 0 }
    /// The stub the host writes into the page: VMCALL; RET (Intel) or VMMCALL; RET (AMD).
    public static let intelStub: [UInt8] = [0x0F, 0x01, 0xC1, 0xC3]
    public static let amdStub: [UInt8] = [0x0F, 0x01, 0xD9, 0xC3]
}

/// HV_X64_MSR_GUEST_OS_ID: who the guest is. Linux writes bit 63 (open source), OS type 1 in 62:56.
public struct GuestOSID: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(openSource: Bool, osType: UInt8, kernelVersion: UInt32, distro: UInt16) {
        rawValue = (openSource ? 1 << 63 : 0) | (UInt64(osType) & 0x7F) << 56 | UInt64(kernelVersion) << 16
            | UInt64(distro)
    }
    /// The value Linux writes: bits 63:48 = 0x8100.
    public static func linux(kernelVersion: UInt32, distro: UInt16 = 0) -> GuestOSID {
        GuestOSID(openSource: true, osType: 1, kernelVersion: kernelVersion, distro: distro)
    }
    public var isOpenSource: Bool { rawValue >> 63 != 0 }
    public var osType: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 56) & 0x7F }
    public var kernelVersion: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 16) }
    public var distro: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
}
