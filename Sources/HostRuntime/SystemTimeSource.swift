// The host's time for TimeSync: CLOCK_REALTIME (plus a configured offset) and CLOCK_MONOTONIC as reference.

import CSystem
import Glibc
import IntegrationServices

/// Real host time. The partition reference counter is the host's CLOCK_MONOTONIC, which an agent
/// on the same machine reads directly (as a guest reads its reference TSC page).
final class SystemTimeSource: HostTimeSource {
    let offsetNs: Int64

    init(offsetNs: Int64) { self.offsetNs = offsetNs }

    func utcNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec) + offsetNs
    }

    func referenceNanoseconds() -> UInt64 { viridian_now_ns() }
}
