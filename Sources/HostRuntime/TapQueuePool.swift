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
    /// Every queue, idle or lent, in opening order.
    let queues: [TapDevice]

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
        self.queues = queues
    }

    /// A TAP of the same name is back: `fds` (one per queue, in order) go behind the queues'
    /// descriptors; idle ones are detached again. Extra descriptors are closed.
    func reattach(_ fds: [Int32]) {
        for (tap, fd) in zip(queues, fds) {
            _ = tap.reattach(fd)
            let lent = !idle.contains { $0 === tap }
            _ = viridian_tap_queue_attach(tap.descriptor, lent ? 1 : 0)
        }
        for fd in fds.dropFirst(queues.count) { close(fd) }
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
    var isLost: Bool { tap.isLost }
}
