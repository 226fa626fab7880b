// VSS (backup) wire layout: the 12-byte hv_vss_msg after the IC header.

import VMBusWire

/// VSS operations (`hv_vss_hdr.operation`).
public enum VSSOperation: UInt8, Sendable, CaseIterable {
    case create = 0, delete = 1, hotBackup = 2, getDMInfo = 3, backupComplete = 4, freeze = 5, thaw = 6, autoRecover = 7
}

/// The VSS message: an 8-byte header (operation, 7 reserved bytes) and a 32-bit flags word
/// (check-feature or DM-info flags, by operation).
public struct VSSMessage: Equatable, Sendable {
    public static let size = 12
    /// HOT_BACKUP answer: the guest supports backup without auto-recovery (VSS_HBU_NO_AUTO_RECOVERY).
    public static let noAutoRecovery: UInt32 = 5

    public var operation: UInt8
    public var flags: UInt32

    public init(_ operation: VSSOperation, flags: UInt32 = 0) {
        self.operation = operation.rawValue
        self.flags = flags
    }

    /// Reads the message at `offset` (after the IC header) of a whole packet.
    public init(decoding packet: [UInt8], at offset: Int) throws(WireError) {
        guard offset >= 0, packet.count >= offset + Self.size else {
            throw .truncated(needed: offset + Self.size, got: packet.count)
        }
        operation = packet[offset]
        flags = packet.le(UInt32.self, at: offset + 8)
    }

    public var encoded: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.size)
        b[0] = operation
        b.putLE(flags, at: 8)
        return b
    }
}
