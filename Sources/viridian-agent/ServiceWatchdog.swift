// systemd's service watchdog (WatchdogSec=): the agent pets it from every loop that can run long,
// so a wedged agent is restarted and a waiting one is not.

import Glibc
import IntegrationServices

/// Sends WATCHDOG=1 to systemd at half the period systemd gave in WATCHDOG_USEC; does nothing
/// when the agent is not a service with a watchdog.
struct ServiceWatchdog {
    private let periodUs: UInt64?
    private var last: UInt64 = 0

    init() {
        periodUs = getenv("WATCHDOG_USEC").flatMap { UInt64(String(cString: $0)) }.flatMap { $0 > 0 ? $0 : nil }
    }

    /// Pets the watchdog when half its period has passed since the last time.
    mutating func pet() {
        guard let periodUs else { return }
        let now = viridianNow()
        if now &- last >= periodUs / 2 {
            systemdNotify("WATCHDOG=1")
            last = now
        }
    }

    /// Tells systemd what the agent is doing (`systemctl status` shows it).
    func status(_ text: String) {
        systemdNotify("STATUS=\(text)")
    }
}
