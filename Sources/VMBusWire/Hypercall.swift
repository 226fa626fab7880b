// The hypercall ABI: call codes, the 64-bit control value, the result value and status codes.

/// Hypercall call codes: those VMBus uses, and the partition-management calls a parent issues
/// for its children (TLFS; Linux's hvgdk_mini.h).
public enum HypercallCode: UInt16, Sendable, CaseIterable {
    case createPartition = 0x0040
    case initializePartition = 0x0041
    case finalizePartition = 0x0042
    case deletePartition = 0x0043
    case getPartitionID = 0x0046
    case depositMemory = 0x0048
    case withdrawMemory = 0x0049
    case createVp = 0x004E
    case deleteVp = 0x004F
    case getVpRegisters = 0x0050
    case setVpRegisters = 0x0051
    case postMessage = 0x005C
    case signalEvent = 0x005D
    case signalEventDirect = 0x00C0
    case postMessageDirect = 0x00C1
}

/// The hypercall input value (RCX on x86-64): call code, fast bit, sizes and rep fields.
public struct HypercallControl: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public init(code: UInt16, fast: Bool = false, variableHeaderSize: UInt16 = 0, nested: Bool = false,
                repCount: UInt16 = 0, repStartIndex: UInt16 = 0) {
        rawValue = UInt64(code)
            | (fast ? 1 << 16 : 0)
            | (UInt64(variableHeaderSize) & 0x3FF) << 17
            | (nested ? 1 << 31 : 0)
            | (UInt64(repCount) & 0xFFF) << 32
            | (UInt64(repStartIndex) & 0xFFF) << 48
    }

    public init(_ code: HypercallCode, fast: Bool = false) { self.init(code: code.rawValue, fast: fast) }

    /// Bits 15:0.
    public var code: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
    /// Bit 16: parameters in registers.
    public var isFast: Bool { rawValue & (1 << 16) != 0 }
    /// Bits 26:17, in 8-byte units.
    public var variableHeaderSize: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 17) & 0x3FF }
    /// Bit 31.
    public var isNested: Bool { rawValue & (1 << 31) != 0 }
    /// Bits 43:32.
    public var repCount: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 32) & 0xFFF }
    /// Bits 59:48.
    public var repStartIndex: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 48) & 0xFFF }
    /// Bits 30:27, 47:44 and 63:60, which must be zero.
    public static let reservedMask: UInt64 = 0x7800_0000 | 0xF << 44 | 0xF << 60
    public var hasReservedBits: Bool { rawValue & Self.reservedMask != 0 }
}

/// A Hyper-V hypercall status code (bits 15:0 of the result).
public struct HvStatus: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let success = HvStatus(rawValue: 0x00)
    public static let invalidHypercallCode = HvStatus(rawValue: 0x02)
    public static let invalidHypercallInput = HvStatus(rawValue: 0x03)
    public static let invalidAlignment = HvStatus(rawValue: 0x04)
    public static let invalidParameter = HvStatus(rawValue: 0x05)
    public static let accessDenied = HvStatus(rawValue: 0x06)
    public static let invalidPartitionState = HvStatus(rawValue: 0x07)
    public static let operationDenied = HvStatus(rawValue: 0x08)
    public static let unknownProperty = HvStatus(rawValue: 0x09)
    public static let propertyValueOutOfRange = HvStatus(rawValue: 0x0A)
    public static let insufficientMemory = HvStatus(rawValue: 0x0B)
    public static let invalidPartitionID = HvStatus(rawValue: 0x0D)
    public static let invalidVPIndex = HvStatus(rawValue: 0x0E)
    public static let notFound = HvStatus(rawValue: 0x10)
    public static let invalidPortID = HvStatus(rawValue: 0x11)
    public static let invalidConnectionID = HvStatus(rawValue: 0x12)
    public static let insufficientBuffers = HvStatus(rawValue: 0x13)
    public static let notAcknowledged = HvStatus(rawValue: 0x14)
    public static let invalidVPState = HvStatus(rawValue: 0x15)
    public static let objectInUse = HvStatus(rawValue: 0x19)
    public static let noResources = HvStatus(rawValue: 0x1D)
    public static let processorFeatureNotSupported = HvStatus(rawValue: 0x20)
    public static let invalidLPIndex = HvStatus(rawValue: 0x41)
    public static let invalidRegisterValue = HvStatus(rawValue: 0x50)
    public static let operationFailed = HvStatus(rawValue: 0x71)
    public static let timeOut = HvStatus(rawValue: 0x78)
    public static let callPending = HvStatus(rawValue: 0x79)
    public static let vtlAlreadyEnabled = HvStatus(rawValue: 0x86)

    public var description: String {
        let names: [UInt16: String] = [
            0x00: "SUCCESS", 0x02: "INVALID_HYPERCALL_CODE", 0x03: "INVALID_HYPERCALL_INPUT",
            0x04: "INVALID_ALIGNMENT", 0x05: "INVALID_PARAMETER", 0x06: "ACCESS_DENIED",
            0x07: "INVALID_PARTITION_STATE", 0x08: "OPERATION_DENIED", 0x0B: "INSUFFICIENT_MEMORY",
            0x0D: "INVALID_PARTITION_ID", 0x0E: "INVALID_VP_INDEX", 0x15: "INVALID_VP_STATE", 0x10: "NOT_FOUND", 0x11: "INVALID_PORT_ID", 0x12: "INVALID_CONNECTION_ID",
            0x13: "INSUFFICIENT_BUFFERS", 0x19: "OBJECT_IN_USE", 0x1D: "NO_RESOURCES", 0x71: "OPERATION_FAILED",
            0x78: "TIME_OUT",
        ]
        return names[rawValue] ?? "HV_STATUS(0x\(String(rawValue, radix: 16)))"
    }
}

/// The hypercall result value (RAX): status and reps completed.
public struct HypercallResult: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(status: HvStatus, repsCompleted: UInt16 = 0) {
        rawValue = UInt64(status.rawValue) | (UInt64(repsCompleted) & 0xFFF) << 32
    }
    /// Bits 15:0.
    public var status: HvStatus { HvStatus(rawValue: UInt16(truncatingIfNeeded: rawValue)) }
    /// Bits 43:32.
    public var repsCompleted: UInt16 { UInt16(truncatingIfNeeded: rawValue >> 32) & 0xFFF }
}
