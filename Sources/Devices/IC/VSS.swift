// Backup (VSS), both ends: the host asks the guest to freeze and thaw its file systems around a
// snapshot; the guest freezes them (FIFREEZE), answers, and thaws by itself if THAW never comes.

import Logging
import Synchronization
import VMBusWire

/// What the host learns from one VSS request: the guest's status and the flags it answered with.
public struct VSSAnswer: Equatable, Sendable {
    public var status: UInt32
    public var flags: UInt32

    public init(status: UInt32, flags: UInt32) {
        self.status = status
        self.flags = flags
    }
}

/// Host end (framework 3.0, service 5.0: the only versions Linux accepts).
public final class VSSProvider: ICProvider {
    /// As long as Linux lets its daemon take for a FREEZE (VSS_FREEZE_TIMEOUT, 15 minutes).
    public static let freezeTimeoutNs: UInt64 = 15 * 60 * 1_000_000_000

    public init(instanceID: GUID, logger: Logger, now: @escaping () -> UInt64) {
        super.init(deviceClass: .vss, instanceID: instanceID, serviceType: .vss, serviceVersions: [ICVersion(5, 0)], logger: logger, now: now)
        requestTimeoutNs = Self.freezeTimeoutNs
    }

    /// Sends `operation`; `completion` gets the guest's answer, nil when none came.
    public func send(_ operation: VSSOperation, completion: @escaping (VSSAnswer?) -> Void) {
        request(.vss, body: VSSMessage(operation).encoded) { outcome in
            guard case .answered(let header, let packet) = outcome else { return completion(nil) }
            let flags = (try? VSSMessage(decoding: packet, at: ICHeader.size))?.flags ?? 0
            completion(VSSAnswer(status: header.status, flags: flags))
        }
    }
}

/// Guest end. FREEZE freezes every selected file system (or none: a failure thaws those already
/// frozen and reports HV_E_FAIL); THAW thaws them in reverse; HOT_BACKUP answers
/// VSS_HBU_NO_AUTO_RECOVERY and GET_DM_INFO flags 0, as Linux does; the rest are acknowledged.
/// A freeze the host does not end within `autoThawNs` is ended here.
///
/// Freezing and thawing run on a thread of their own, never with the bus locked: a file system
/// on one of the agent's own synthetic disks (an NBD export) writes through the agent while it
/// syncs, and that needs the bus.
public final class VSSService: ICGuestService, @unchecked Sendable {
    public let serviceType = ICMessageType.vss
    public let frameworkVersions = [ICVersion(3, 0)]
    public let serviceVersions = [ICVersion(5, 0)]
    let freezer: any FileSystemFreezer
    let autoThawNs: UInt64
    let now: () -> UInt64
    let logger: Logger
    private let work: OffBusWork
    /// When the freeze in force ends by itself.
    private let deadline = Mutex<UInt64?>(nil)
    private let thawsByTimeout = Atomic<UInt64>(0)

    /// `withBus` runs a closure with the bus locked (to answer); `background` false runs freeze and
    /// thaw inline (in-memory tests, where nothing waits on the bus).
    public init(freezer: any FileSystemFreezer, autoThawNs: UInt64, now: @escaping () -> UInt64, logger: Logger,
                withBus: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void = { $0() }, background: Bool = true) {
        self.freezer = freezer
        self.autoThawNs = autoThawNs
        self.now = now
        self.logger = logger
        work = OffBusWork(name: "viridian-vss", background: background, withBus: withBus)
    }

    // Queued jobs hold the service, so none is left by now: thaw here, on this thread.
    deinit { endFreeze("the service stopped") }

    public var autoThaws: UInt64 { thawsByTimeout.load(ordering: .relaxed) }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        guard let message = try? VSSMessage(decoding: packet, at: ICHeader.size) else {
            logger.warning("vss: short request (\(packet.count) bytes) refused")
            return ICStatus.invalidArgument
        }
        let operation = VSSOperation(rawValue: message.operation)
        switch operation {
        case .freeze, .thaw:
            packet.putLE(UInt32(0), at: ICHeader.size + 8)
            return work.answer(&packet, transactionID: transactionID, client: client) { [self] _ in
                operation == .freeze ? freeze() : (endFreeze(nil) ? ICStatus.ok : ICStatus.fail)
            }
        case .hotBackup:
            packet.putLE(VSSMessage.noAutoRecovery, at: ICHeader.size + 8)
        default:
            packet.putLE(UInt32(0), at: ICHeader.size + 8)
        }
        return ICStatus.ok
    }

    public func tick(now: UInt64) {
        let due = deadline.withLock { d -> Bool in
            guard let t = d, now >= t else { return false }
            d = nil
            return true
        }
        guard due else { return }
        thawsByTimeout.add(1, ordering: .relaxed)
        work.async { [self] in endFreeze("the host sent no THAW within \(autoThawNs / 1_000_000_000) s") }
    }

    /// Thaws at once and waits for it (call without the bus locked).
    public func channelClosed() { work.sync { [self] in endFreeze("the host closed the backup channel") } }

    private func freeze() -> UInt32 {
        do {
            let frozen = try freezer.freeze()
            deadline.withLock { $0 = now() &+ autoThawNs }
            logger.notice("vss: froze \(frozen.count) file systems for the host's backup: \(frozen.joined(separator: ", "))")
            return ICStatus.ok
        } catch {
            logger.error("vss: freeze failed, nothing left frozen: \(error)")
            deadline.withLock { $0 = nil }
            return ICStatus.fail
        }
    }

    /// Thaws what is frozen; `why` is logged when the host did not ask. False if a thaw failed.
    @discardableResult
    private func endFreeze(_ why: String?) -> Bool {
        deadline.withLock { $0 = nil }
        guard freezer.isFrozen else { return true }
        if let why { logger.warning("vss: thawing: \(why)") }
        let failures = freezer.thaw()
        for f in failures { logger.error("vss: thaw: \(f)") }
        if why == nil && failures.isEmpty { logger.notice("vss: thawed") }
        return failures.isEmpty
    }
}
