// vstor wire formats: the 64-byte vstor_packet, its operations, vmscsi_request, protocol versions, statuses.

import VMBusWire

/// `vstor_packet.operation`.
public enum VStorOperation: UInt32, Sendable {
    case completeIO = 1, removeDevice = 2, executeSRB = 3, resetLUN = 4, resetAdapter = 5, resetBus = 6
    case beginInitialization = 7, endInitialization = 8, queryProtocolVersion = 9, queryProperties = 10
    case enumerateBus = 11, fcHBAData = 12, createSubChannels = 13, eventNotification = 14
}

/// vstor protocol versions, `major << 8 | minor`.
public enum VStorVersion {
    public static let win6: UInt16 = 0x0200
    public static let win7: UInt16 = 0x0402
    public static let win8: UInt16 = 0x0501
    public static let win8_1: UInt16 = 0x0600
    public static let win10: UInt16 = 0x0602
    /// What current Linux offers, in order.
    public static let linuxPreference: [UInt16] = [win10, win8_1, win8]
}

/// NTSTATUS values a VSP returns in `vstor_packet.status`.
public enum NTStatus {
    public static let success: UInt32 = 0
    public static let unsuccessful: UInt32 = 0xC000_0001
    public static let invalidParameter: UInt32 = 0xC000_000D
    public static let invalidDeviceRequest: UInt32 = 0xC000_0010
    public static let revisionMismatch: UInt32 = 0xC000_0059
    public static let invalidDeviceState: UInt32 = 0xC000_0184
    public static let ioDeviceError: UInt32 = 0xC000_0185
}

/// SRB status byte: low 6 bits a code, 0x80 AUTOSENSE_VALID.
public enum SRBStatus {
    public static let success: UInt8 = 0x01
    public static let aborted: UInt8 = 0x02
    public static let error: UInt8 = 0x04
    public static let invalidRequest: UInt8 = 0x06
    public static let dataOverrun: UInt8 = 0x12
    public static let invalidLUN: UInt8 = 0x20
    public static let internalError: UInt8 = 0x30
    public static let autosenseValid: UInt8 = 0x80
}

/// `vmscsi_request.data_in`.
public enum SCSIDataDirection: UInt8, Sendable {
    case write = 0, read = 1, none = 2
}

/// The 64-byte `vstor_packet` (Win8+ size; 48 bytes before Win8).
public struct VStorPacket: Equatable, Sendable {
    public static let size = 64
    /// Size for protocols before Win8 (no 16-byte request extension, 18-byte sense).
    public static let legacySize = 48
    public static let requestOffset = 12
    public static let flagRequestCompletion: UInt32 = 1

    public var operation: UInt32
    public var flags: UInt32
    public var status: UInt32
    /// The 52-byte union (vmscsi_request, properties, version, …).
    public var body: [UInt8]

    public init(operation: VStorOperation, flags: UInt32 = flagRequestCompletion, status: UInt32 = 0, body: [UInt8] = []) {
        self.operation = operation.rawValue
        self.flags = flags
        self.status = status
        self.body = Array((body + [UInt8](repeating: 0, count: 52)).prefix(52))
    }

    /// Decodes a packet of at least `minimumSize` bytes (48 or 64); shorter bodies are zero-padded.
    public init(decoding b: [UInt8], minimumSize: Int = legacySize) throws(WireError) {
        guard b.count >= minimumSize else { throw .truncated(needed: minimumSize, got: b.count) }
        operation = b.le(at: 0)
        flags = b.le(at: 4)
        status = b.le(at: 8)
        body = Array((Array(b[12..<min(b.count, 64)]) + [UInt8](repeating: 0, count: 52)).prefix(52))
    }

    public var op: VStorOperation? { VStorOperation(rawValue: operation) }

    /// The packet's bytes: 64, or the first 48 for legacy protocols.
    public func encode(size: Int = size) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64)
        b.putLE(operation, at: 0)
        b.putLE(flags, at: 4)
        b.putLE(status, at: 8)
        b.replaceSubrange(12..<64, with: body)
        return Array(b.prefix(size))
    }
}

/// `vmscsi_request`, the EXECUTE_SRB / COMPLETE_IO body (offsets within the 52-byte union).
public struct SCSIRequest: Equatable, Sendable {
    public static let size = 52
    public static let senseCapacity = 20
    public static let legacySenseCapacity = 18

    public var length: UInt16 = 52
    public var srbStatus: UInt8 = 0
    public var scsiStatus: UInt8 = 0
    public var portNumber: UInt8 = 0
    public var pathID: UInt8 = 0
    public var targetID: UInt8 = 0
    public var lun: UInt8 = 0
    public var cdbLength: UInt8 = 0
    public var senseInfoLength: UInt8 = 20
    public var dataIn: UInt8 = SCSIDataDirection.none.rawValue
    public var dataTransferLength: UInt32 = 0
    /// CDB on the way in, sense data on the way back (20 bytes).
    public var cdbOrSense = [UInt8](repeating: 0, count: 20)
    public var queueTag: UInt8 = 0xFF
    public var queueAction: UInt8 = 0x20
    public var srbFlags: UInt32 = 0
    public var timeOutValue: UInt32 = 60

    public init() {}

    public init(decoding b: [UInt8]) throws(WireError) {
        guard b.count >= 36 else { throw .truncated(needed: 36, got: b.count) }
        length = b.le(at: 0)
        srbStatus = b[2]
        scsiStatus = b[3]
        portNumber = b[4]
        pathID = b[5]
        targetID = b[6]
        lun = b[7]
        cdbLength = b[8]
        senseInfoLength = b[9]
        dataIn = b[10]
        dataTransferLength = b.le(at: 12)
        cdbOrSense = Array(b[16..<36])
        if b.count >= 52 {
            queueTag = b[38]
            queueAction = b[39]
            srbFlags = b.le(at: 40)
            timeOutValue = b.le(at: 44)
        }
        guard cdbLength <= 16 else { throw .invalidField("cdb_length", UInt64(cdbLength)) }
    }

    public var encoded: [UInt8] {
        var b = [UInt8](repeating: 0, count: 52)
        b.putLE(length, at: 0)
        b[2] = srbStatus
        b[3] = scsiStatus
        b[4] = portNumber
        b[5] = pathID
        b[6] = targetID
        b[7] = lun
        b[8] = cdbLength
        b[9] = senseInfoLength
        b[10] = dataIn
        b.putLE(dataTransferLength, at: 12)
        b.replaceSubrange(16..<36, with: Array((cdbOrSense + [UInt8](repeating: 0, count: 20)).prefix(20)))
        b[38] = queueTag
        b[39] = queueAction
        b.putLE(srbFlags, at: 40)
        b.putLE(timeOutValue, at: 44)
        return b
    }

    public var cdb: [UInt8] { Array(cdbOrSense.prefix(Int(cdbLength))) }
}

/// QUERY_PROPERTIES answer (the first 24 bytes of the union).
public struct VStorChannelProperties: Equatable, Sendable {
    public var maximumChannelCount: UInt16
    public var supportsMultiChannel: Bool
    public var maximumTransferBytes: UInt32

    public init(maximumChannelCount: UInt16, supportsMultiChannel: Bool, maximumTransferBytes: UInt32) {
        self.maximumChannelCount = maximumChannelCount
        self.supportsMultiChannel = supportsMultiChannel
        self.maximumTransferBytes = maximumTransferBytes
    }

    public var encoded: [UInt8] {
        var b = [UInt8](repeating: 0, count: 24)
        b.putLE(maximumChannelCount, at: 4)
        b.putLE(UInt32(supportsMultiChannel ? 1 : 0), at: 8)
        b.putLE(maximumTransferBytes, at: 12)
        return b
    }

    public init(decoding b: [UInt8]) throws(WireError) {
        guard b.count >= 24 else { throw .truncated(needed: 24, got: b.count) }
        maximumChannelCount = b.le(at: 4)
        supportsMultiChannel = b.le(UInt32.self, at: 8) & 1 != 0
        maximumTransferBytes = b.le(at: 12)
    }
}
