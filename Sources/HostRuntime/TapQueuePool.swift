// The extra queues of a multi-queue TAP, opened when the partition starts and lent to sub-channels.

import CSandbox
import Glibc
import Logging
import SyntheticNetwork

/// A multi-queue TAP's further queue descriptors, opened while the partition may still open
/// devices. A confined worker cannot open `/dev/net/tun` later, and must not be able to:
/// TUNSETIFF on a fresh descriptor reaches any TAP on the host. Queues that no sub-channel uses
/// are detached (TUNSETQUEUE), so the kernel steers no frames to a descriptor nobody reads.
final class TapQueuePool {
    private var idle: [TapDevice]

    /// Opens `count` more queues of TAP `name`; fewer if the kernel refuses some (logged).
    init(name: String, namespace: String?, count: Int, logger: Logger) {
        var queues: [TapDevice] = []
        for _ in 0..<max(count, 0) {
            do {
                let tap = try TapDevice(name: name, namespace: namespace, multiQueue: true)
                _ = viridian_tap_queue_attach(tap.descriptor, 0)
                queues.append(tap)
            } catch {
                logger.warning("TAP \(name): \(queues.count + 1) queues at most: \(error)")
                break
            }
        }
        idle = queues
    }

    /// Idle queues left.
    var available: Int { idle.count }

    /// Lends a queue (attached again); it comes back, detached, when the borrower drops it.
    func take() -> (any FramePort)? {
        guard let tap = idle.popLast() else { return nil }
        _ = viridian_tap_queue_attach(tap.descriptor, 1)
        return LentTapQueue(tap: tap, pool: self)
    }

    fileprivate func giveBack(_ tap: TapDevice) {
        _ = viridian_tap_queue_attach(tap.descriptor, 0)
        idle.append(tap)
    }
}

/// A queue on loan from a `TapQueuePool`: a `FramePort` that returns its TAP when released.
private final class LentTapQueue: FramePort {
    let tap: TapDevice
    let pool: TapQueuePool

    init(tap: TapDevice, pool: TapQueuePool) {
        self.tap = tap
        self.pool = pool
    }

    deinit { pool.giveBack(tap) }

    var descriptor: Int32 { tap.descriptor }
    func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool { tap.send(iov) }
    func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? { tap.receive(iov) }
    func setOffload(_ flags: UInt32) { tap.setOffload(flags) }
    func setCarrier(_ on: Bool) { tap.setCarrier(on) }
}
