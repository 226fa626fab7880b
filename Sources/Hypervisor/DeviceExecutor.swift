// Where a device runs slow work (disk I/O) and how the result comes back to the partition's thread.

/// Runs device work off the thread that owns the partition, and brings completions back to it.
public protocol DeviceExecutor: AnyObject {
    /// Runs `work` somewhere (possibly another thread), then `completion` on the partition's thread.
    func run(_ work: @escaping @Sendable () -> Void, then completion: @escaping () -> Void)
}

/// Runs work and completion at once, on the caller's thread (in-memory machines, tests).
public final class InlineExecutor: DeviceExecutor {
    public init() {}
    public func run(_ work: @escaping @Sendable () -> Void, then completion: @escaping () -> Void) {
        work()
        completion()
    }
}
