// Replies that completions produce together are sent together, by the thread that completed them.

import Glibc

/// Lets the thread that completes pipelined requests send their replies itself, several at once:
/// replies that `done` callbacks queue on a thread inside `together` wait until its outermost call
/// returns, then each connection writes everything it has queued with one non-blocking `sendmsg`.
/// What the socket does not take (or what another thread is writing meanwhile) is left to the
/// connection's sender thread, so replies never interleave and never block the completing thread.
/// Outside `together` a reply goes through the sender thread as before.
public enum NBDReplyGrouping {
    /// Runs `body`; replies queued on this thread meanwhile are sent when the outermost call returns.
    public static func together<T>(_ body: () throws -> T) rethrows -> T {
        let group = ReplyGroup.forThisThread()
        group.depth += 1
        defer {
            group.depth -= 1
            if group.depth == 0 { group.flush() }
        }
        return try body()
    }
}

/// The connections with replies waiting for the end of this thread's `together`.
final class ReplyGroup {
    var depth = 0
    private var connections: [NBDConnection] = []

    /// The group of the calling thread while it is inside `together`, else nil.
    static var active: ReplyGroup? {
        guard let p = pthread_getspecific(replyGroupKey) else { return nil }
        let group = Unmanaged<ReplyGroup>.fromOpaque(p).takeUnretainedValue()
        return group.depth > 0 ? group : nil
    }

    /// The calling thread's group, created on first use (released when the thread exits).
    static func forThisThread() -> ReplyGroup {
        if let p = pthread_getspecific(replyGroupKey) { return Unmanaged<ReplyGroup>.fromOpaque(p).takeUnretainedValue() }
        let group = ReplyGroup()
        pthread_setspecific(replyGroupKey, Unmanaged.passRetained(group).toOpaque())
        return group
    }

    /// Remembers a connection to flush when the group ends (the connection adds itself once per group).
    func add(_ connection: NBDConnection) { connections.append(connection) }

    func flush() {
        for connection in connections { connection.flushGroupedReplies() }
        connections.removeAll(keepingCapacity: true)
    }
}

/// Thread-specific slot holding each thread's `ReplyGroup` (retained; released at thread exit).
private let replyGroupKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key) { p in
        if let p { Unmanaged<ReplyGroup>.fromOpaque(p).release() }
    }
    return key
}()
