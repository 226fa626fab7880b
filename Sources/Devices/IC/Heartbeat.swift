// Heartbeat, both ends: the host sends sequence numbers; a healthy guest answers with seq + 1.

import Logging
import VMBusWire

/// How the host sees a partition's heartbeat.
public enum HeartbeatState: String, Sendable, Codable {
    /// No heartbeat channel open yet.
    case unknown
    /// Answered within 1.5 intervals.
    case ok
    /// No answer for more than 1.5 intervals.
    case late
    /// No answer for more than 3 intervals.
    case lost
}

/// Host end: a request every `interval`; the state follows the age of the last good answer.
public final class HeartbeatProvider: ICProvider {
    public let intervalNs: UInt64
    public private(set) var state = HeartbeatState.unknown
    public private(set) var sequence: UInt64 = 0
    public private(set) var answers: UInt64 = 0
    private var lastAnswer: UInt64 = 0
    private var nextSend: UInt64?
    /// Called on every state change (old, new).
    public var onStateChange: ((HeartbeatState, HeartbeatState) -> Void)?

    public init(instanceID: GUID, intervalNs: UInt64, logger: Logger, now: @escaping () -> UInt64) {
        self.intervalNs = intervalNs
        super.init(deviceClass: .heartbeat, instanceID: instanceID, serviceType: .heartbeat,
                   serviceVersions: [ICVersion(1, 0), ICVersion(3, 0)], logger: logger, now: now)
        requestTimeoutNs = 2 * intervalNs
    }

    public override func connected() {
        lastAnswer = now()
        nextSend = now()
        set(.ok)
        tick(now: now())
    }

    public override func disconnected() {
        nextSend = nil
        set(.unknown)
    }

    public override func tick(now: UInt64) {
        super.tick(now: now)
        guard let due = nextSend else { return }
        if now >= due {
            nextSend = now + intervalNs
            if !isBusy { send() }
        }
        let age = now - lastAnswer
        set(age <= intervalNs * 3 / 2 ? .ok : age <= intervalNs * 3 ? .late : .lost)
    }

    public override var nextDeadline: UInt64? {
        [super.nextDeadline, nextSend, state == .ok ? lastAnswer + intervalNs * 3 / 2 + 1 : nil,
         state == .late ? lastAnswer + intervalNs * 3 + 1 : nil].compactMap { $0 }.min()
    }

    private func send() {
        sequence &+= 1
        let sent = sequence
        var body = [UInt8](repeating: 0, count: 40)
        body.putLE(sent, at: 0)
        request(.heartbeat, body: body) { [weak self] outcome in
            guard let self, case .answered(_, let packet) = outcome, packet.count >= ICHeader.size + 8 else { return }
            // An answer to an earlier request (delivered late) still proves the guest alive now.
            let answered = packet.le(UInt64.self, at: ICHeader.size)
            guard answered >= 2, answered <= sent &+ 1 else {
                logger.warning("heartbeat: guest answered \(answered) to \(sent)")
                return
            }
            answers &+= 1
            lastAnswer = self.now()
            set(.ok)
        }
    }

    private func set(_ new: HeartbeatState) {
        guard new != state else { return }
        let old = state
        state = new
        onStateChange?(old, new)
    }
}

/// Guest end: answers seq + 1, but only while `isHealthy()` says the agent is responsive.
public final class HeartbeatService: ICGuestService {
    public let serviceType = ICMessageType.heartbeat
    public let frameworkVersions = [ICVersion(3, 0), ICVersion(1, 0)]
    public let serviceVersions = [ICVersion(3, 0), ICVersion(1, 0)]
    let isHealthy: () -> Bool
    public private(set) var withheld: UInt64 = 0

    public init(isHealthy: @escaping () -> Bool) { self.isHealthy = isHealthy }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        guard packet.count >= ICHeader.size + 8 else { return ICStatus.fail }
        guard isHealthy() else {
            withheld &+= 1
            return nil
        }
        packet.putLE(packet.le(UInt64.self, at: ICHeader.size) &+ 1, at: ICHeader.size)
        return ICStatus.ok
    }
}
