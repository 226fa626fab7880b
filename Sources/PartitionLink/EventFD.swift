// eventfd doorbells and plain POSIX threads: the signalling primitives of the process boundary.

import CSystem
import Glibc

/// An eventfd: `ring()` adds one, `wait()` blocks until non-zero and resets it. Owned: closed on deinit.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32

    /// Creates a new blocking eventfd.
    public init() throws(LinkError) {
        fd = viridian_eventfd(0)
        guard fd >= 0 else { throw .system(call: "eventfd", errno: errno) }
    }

    /// Adopts a descriptor received from the peer.
    public init(adopting fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    @inline(__always)
    public func ring() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }

    /// Blocks until rung; returns the count (0 if interrupted by an error other than EINTR).
    @discardableResult @inline(__always)
    public func wait() -> UInt64 {
        var value: UInt64 = 0
        while read(fd, &value, 8) < 0 {
            if errno != EINTR { return 0 }
        }
        return value
    }

    /// Waits up to `timeoutMs` (negative: for ever) until the eventfd is rung, resuming with the
    /// time left when a signal interrupts; true if it was rung. The count stays for `wait()`.
    public func poll(timeoutMs: Int) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = viridian_now_ns() &+ UInt64(max(timeoutMs, 0)) &* 1_000_000
        while true {
            let now = viridian_now_ns()
            let left = timeoutMs < 0 ? -1 : Int32(clamping: now < deadline ? (deadline - now) / 1_000_000 + 1 : 0)
            let n = Glibc.poll(&entry, 1, left)
            if n > 0 { return true }
            if n == 0 || errno != EINTR { return false }
        }
    }
}

/// A POSIX thread running one closure; `join()` waits for it.
public final class OSThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: @Sendable () -> Void

    public init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<OSThread>.fromOpaque(arg!).takeRetainedValue()
            me.body()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
    }

    public func join() { pthread_join(thread, nil) }
}

/// Routes SIGTERM, SIGINT and SIGHUP to `doorbell` (and ignores SIGPIPE).
@discardableResult
public func viridianRouteSignals(_ doorbell: EventFD) -> Bool {
    viridian_route_signals_to(doorbell.fd) == 0
}
