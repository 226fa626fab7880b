// An eventfd used as a doorbell between two threads: ring and wait, counted.

import CSystem
import Glibc

/// One eventfd: `ring()` wakes the waiter, `wait()` blocks until rung. The signal of the
/// benchmarks, and the same primitive PartitionLink uses between processes.
final class Doorbell: @unchecked Sendable {
    let fd: Int32

    init() {
        fd = viridian_eventfd(0)
        precondition(fd >= 0, "eventfd failed: errno \(errno)")
    }

    deinit { close(fd) }

    func ring() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    func wait() {
        var value: UInt64 = 0
        while read(fd, &value, 8) < 0 && errno == EINTR {}
    }
}

/// Runs `body` on a new POSIX thread.
final class BenchThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<BenchThread>.fromOpaque(arg!).takeRetainedValue()
            me.body()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    func join() { pthread_join(thread, nil) }
}
