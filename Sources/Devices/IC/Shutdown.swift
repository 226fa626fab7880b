// Shutdown, both ends: the host asks for power-off, reboot or hibernate; the guest runs the action and reports.

import Foundation
import Logging
import Synchronization
import VMBusWire

/// What the host asks the guest to do.
public enum ShutdownKind: String, Sendable, Codable, CaseIterable {
    case poweroff, reboot, hibernate

    /// The `flags` bit for the kind (force is bit 0).
    var flag: UInt32 {
        switch self {
        case .poweroff: 0
        case .reboot: 2
        case .hibernate: 4
        }
    }
}

/// Host end.
public final class ShutdownProvider: ICProvider {
    public static let bodySize = 2060
    /// SHTDN_REASON_FLAG_PLANNED.
    public static let reasonPlanned: UInt32 = 0x8000_0000

    public init(instanceID: GUID, logger: Logger, now: @escaping () -> UInt64) {
        super.init(deviceClass: .shutdown, instanceID: instanceID, serviceType: .shutdown,
                   serviceVersions: [ICVersion(1, 0), ICVersion(3, 0), ICVersion(3, 1), ICVersion(3, 2)], logger: logger, now: now)
    }

    /// The request body: reason, timeout, flags, and the message as UTF-16LE (at most 1023 units).
    public static func body(kind: ShutdownKind, force: Bool, reason: String) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: bodySize)
        b.putLE(reasonPlanned, at: 0)
        b.putLE(kind.flag | (force ? 1 : 0), at: 8)
        for (i, unit) in reason.utf16.prefix(1023).enumerated() { b.putLE(unit, at: 12 + 2 * i) }
        return b
    }

    /// Asks the guest; `completion` gets the guest's status (nil: no answer).
    public func shutdown(kind: ShutdownKind, force: Bool, reason: String, completion: @escaping (UInt32?) -> Void) {
        request(.shutdown, body: Self.body(kind: kind, force: force, reason: reason)) { outcome in
            if case .answered(let header, _) = outcome { completion(header.status) } else { completion(nil) }
        }
    }
}

/// Guest end: decodes the request and runs the configured action off the interrupt path; the
/// answer (OK, or FAIL when the action failed) goes back when the action has been started.
public final class ShutdownService: ICGuestService {
    public let serviceType = ICMessageType.shutdown
    public let frameworkVersions = [ICVersion(3, 0), ICVersion(1, 0)]
    public let serviceVersions = [ICVersion(3, 2), ICVersion(3, 1), ICVersion(3, 0), ICVersion(1, 0)]
    /// Runs the action (blocking; off the bus lock); true on success.
    let run: @Sendable (ShutdownKind, Bool, String) -> Bool
    /// Runs a closure with the bus locked (to send the answer).
    let withBus: @Sendable (@escaping @Sendable () -> Void) -> Void
    let logger: Logger
    /// Answers still to be sent, in every session of this process. A guest's own `systemctl
    /// poweroff` stops the agent (SIGTERM) while the action is being started; the agent lets these
    /// answers go out before it leaves the bus (`waitForAnswers`).
    static let answersInFlight = Atomic<Int>(0)

    /// Waits up to `timeoutMs` until no shutdown answer is pending; false if one still is.
    public static func waitForAnswers(timeoutMs: Int) -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while answersInFlight.load(ordering: .acquiring) > 0 {
            guard Date() < deadline else { return false }
            usleep(10_000)
        }
        return true
    }

    public init(logger: Logger, run: @escaping @Sendable (ShutdownKind, Bool, String) -> Bool,
                withBus: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void) {
        self.logger = logger
        self.run = run
        self.withBus = withBus
    }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        let body = ICHeader.size
        guard packet.count >= body + ShutdownProvider.bodySize else { return ICStatus.fail }
        let flags = packet.le(UInt32.self, at: body + 8)
        let kind: ShutdownKind
        switch flags {
        case 0, 1: kind = .poweroff
        case 2, 3: kind = .reboot
        case 4, 5: kind = .hibernate
        default:
            logger.warning("shutdown: unknown flags 0x\(String(flags, radix: 16))")
            return ICStatus.fail
        }
        let units = (0..<1024).map { packet.le(UInt16.self, at: body + 12 + 2 * $0) }.prefix { $0 != 0 }
        let reason = String(decoding: units, as: UTF16.self)
        logger.notice("shutdown: host asks for \(kind)\(flags & 1 != 0 ? " (forced)" : "")\(reason.isEmpty ? "" : ": \(reason)")")
        let reply = packet
        let run = self.run, withBus = self.withBus
        let force = flags & 1 != 0
        nonisolated(unsafe) let answer = client
        Self.answersInFlight.add(1, ordering: .acquiringAndReleasing)
        Thread.detachNewThread {
            let ok = run(kind, force, reason)
            withBus { answer.respond(reply, status: ok ? ICStatus.ok : ICStatus.fail, transactionID: transactionID) }
            Self.answersInFlight.subtract(1, ordering: .acquiringAndReleasing)
        }
        return nil
    }
}
