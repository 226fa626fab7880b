// Input and output blocks of the partition-management hypercalls (TLFS; Linux's hvhdk_mini.h and hyperv-tlfs.h).

/// HV_PARTITION_ID_SELF: "the calling partition" wherever a partition id is asked for.
public let hvPartitionIDSelf = UInt64.max

/// HvCreatePartition's 56-byte input: flags (8), proximity domain info (8), compatibility
/// version (4), padding (4), creation properties (24: two words of disabled processor features,
/// one of disabled XSAVE features), isolation properties (8). The output is the new id (8 bytes).
public struct CreatePartitionInput: Equatable, Sendable {
    public static let size = 56
    public var flags: UInt64
    public var compatibilityVersion: UInt32
    /// Bits 4:0 of the isolation properties; only 0 (no isolation) is served.
    public var isolationType: UInt8

    public init(flags: UInt64 = 0, compatibilityVersion: UInt32 = 0, isolationType: UInt8 = 0) {
        self.flags = flags
        self.compatibilityVersion = compatibilityVersion
        self.isolationType = isolationType
    }

    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        flags = bytes.le(UInt64.self, at: 0)
        compatibilityVersion = bytes.le(UInt32.self, at: 16)
        guard bytes.le(UInt32.self, at: 20) == 0 else { throw .reservedNonZero("padding") }
        isolationType = UInt8(truncatingIfNeeded: bytes.le(UInt64.self, at: 48) & 0x1F)
    }

    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(flags, at: 0)
        out.putLE(compatibilityVersion, at: 16)
        out.putLE(UInt64(isolationType & 0x1F), at: 48)
        return out
    }
}

/// The 8-byte input of HvInitializePartition, HvFinalizePartition and HvDeletePartition, and the
/// output of HvCreatePartition and HvGetPartitionId: one partition id.
public struct PartitionIDBlock: Equatable, Sendable {
    public static let size = 8
    public var partitionID: UInt64
    public init(partitionID: UInt64) { self.partitionID = partitionID }
    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        partitionID = bytes.le(UInt64.self, at: 0)
    }
    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(partitionID, at: 0)
        return out
    }
}

/// HvDepositMemory's input, a rep call: the target partition (8) and one guest page number of
/// the caller's per rep (8 each), all within one 4 KiB input page.
public enum DepositMemoryLayout {
    public static let headerSize = 8
    public static let elementSize = 8
    /// Reps that fit one input page after the header.
    public static let maximumReps = (4096 - headerSize) / elementSize
}

/// HvWithdrawMemory: input partition id (8) and proximity domain info (8); the output is a rep
/// list of the caller's page numbers handed back (8 each).
public enum WithdrawMemoryLayout {
    public static let inputSize = 16
    public static let elementSize = 8
    public static let maximumReps = 4096 / elementSize
}

/// HvCreateVp's 40-byte input: partition id (8), VP index (4), padding (3), subnode type (1),
/// subnode id (8), proximity domain info (8), flags (8).
public struct CreateVPInput: Equatable, Sendable {
    public static let size = 40
    public var partitionID: UInt64
    public var vpIndex: UInt32
    public var flags: UInt64

    public init(partitionID: UInt64, vpIndex: UInt32, flags: UInt64 = 0) {
        self.partitionID = partitionID
        self.vpIndex = vpIndex
        self.flags = flags
    }

    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        partitionID = bytes.le(UInt64.self, at: 0)
        vpIndex = bytes.le(UInt32.self, at: 8)
        guard bytes[12] == 0, bytes[13] == 0, bytes[14] == 0 else { throw .reservedNonZero("padding") }
        flags = bytes.le(UInt64.self, at: 32)
    }

    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(partitionID, at: 0)
        out.putLE(vpIndex, at: 8)
        out.putLE(flags, at: 32)
        return out
    }
}

/// HvDeleteVp's 16-byte input: partition id (8), VP index (4), reserved (4).
public struct DeleteVPInput: Equatable, Sendable {
    public static let size = 16
    public var partitionID: UInt64
    public var vpIndex: UInt32

    public init(partitionID: UInt64, vpIndex: UInt32) {
        self.partitionID = partitionID
        self.vpIndex = vpIndex
    }

    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        partitionID = bytes.le(UInt64.self, at: 0)
        vpIndex = bytes.le(UInt32.self, at: 8)
        guard bytes.le(UInt32.self, at: 12) == 0 else { throw .reservedNonZero("reserved") }
    }

    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(partitionID, at: 0)
        out.putLE(vpIndex, at: 8)
        return out
    }
}

/// HvPostMessageDirect's 280-byte input: partition id (8), VP index (4), VTL (1), padding (3),
/// SINT (4), the 256-byte hv_message, padding (4).
public struct PostMessageDirectInput: Equatable, Sendable {
    public static let size = 280
    public var partitionID: UInt64
    public var vpIndex: UInt32
    public var sint: UInt32
    /// The whole 256-byte message (header and payload) to place in the target's slot.
    public var message: [UInt8]

    public init(partitionID: UInt64, vpIndex: UInt32, sint: UInt32, message: [UInt8]) {
        self.partitionID = partitionID
        self.vpIndex = vpIndex
        self.sint = sint
        self.message = message
    }

    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        partitionID = bytes.le(UInt64.self, at: 0)
        vpIndex = bytes.le(UInt32.self, at: 8)
        sint = bytes.le(UInt32.self, at: 16)
        message = Array(bytes[20..<276])
    }

    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(partitionID, at: 0)
        out.putLE(vpIndex, at: 8)
        out.putLE(sint, at: 16)
        out.replaceSubrange(20..<(20 + min(message.count, 256)), with: message.prefix(256))
        return out
    }
}

/// HvSignalEventDirect's 16-byte input: target partition (8), target VP (4), VTL (1), SINT (1),
/// flag number (2). The output is one byte: whether the flag was newly set.
public struct SignalEventDirectInput: Equatable, Sendable {
    public static let size = 16
    public var partitionID: UInt64
    public var vpIndex: UInt32
    public var sint: UInt8
    public var flagNumber: UInt16

    public init(partitionID: UInt64, vpIndex: UInt32, sint: UInt8, flagNumber: UInt16) {
        self.partitionID = partitionID
        self.vpIndex = vpIndex
        self.sint = sint
        self.flagNumber = flagNumber
    }

    public init(decoding bytes: UnsafeRawBufferPointer) throws(WireError) {
        guard bytes.count >= Self.size else { throw .truncated(needed: Self.size, got: bytes.count) }
        partitionID = bytes.le(UInt64.self, at: 0)
        vpIndex = bytes.le(UInt32.self, at: 8)
        sint = bytes[13]
        flagNumber = bytes.le(UInt16.self, at: 14)
    }

    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.putLE(partitionID, at: 0)
        out.putLE(vpIndex, at: 8)
        out[13] = sint
        out.putLE(flagNumber, at: 14)
        return out
    }
}
