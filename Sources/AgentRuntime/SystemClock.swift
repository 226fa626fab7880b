// The real clock for timesync mode "clock": steps with clock_settime, slews with adjtime (needs CAP_SYS_TIME).

import Glibc
import IntegrationServices
import Logging

/// CLOCK_REALTIME as a `DisciplinableClock`.
public final class SystemClock: DisciplinableClock {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    public func step(by ns: Int64) {
        let target = now() + ns
        var ts = timespec(tv_sec: Int(target / 1_000_000_000), tv_nsec: Int(target % 1_000_000_000))
        if clock_settime(CLOCK_REALTIME, &ts) != 0 {
            logger.warning("timesync: cannot step the clock (errno \(errno); CAP_SYS_TIME needed)")
        } else {
            logger.notice("timesync: stepped the clock by \(Double(ns) / 1e6) ms")
        }
    }

    public func slew(by ns: Int64) {
        var delta = timeval(tv_sec: Int(ns / 1_000_000_000), tv_usec: Int((ns % 1_000_000_000) / 1000))
        if adjtime(&delta, nil) != 0 { logger.warning("timesync: cannot slew the clock (errno \(errno))") }
    }
}
