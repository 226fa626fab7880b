// Where a guest service does what must not hold the bus (freezing file systems, file I/O, network
// tools): in order, on a worker thread of its own, its answers sent with the bus locked.

/// A guest service's slow work, kept off the bus lock. Without a worker (in-memory tests, where
/// nothing waits on the bus) everything runs inline instead.
final class OffBusWork: @unchecked Sendable {
    private let withBus: @Sendable (@escaping @Sendable () -> Void) -> Void
    private let worker: SerialWorker?

    /// `withBus` runs a closure with the bus locked; `background` false runs everything inline.
    init(name: String, background: Bool, withBus: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void) {
        self.withBus = withBus
        worker = background ? SerialWorker(name: name) : nil
    }

    deinit { worker?.stop() }

    /// Runs `job` after the work queued before it.
    func async(_ job: @escaping @Sendable () -> Void) {
        if let worker { worker.async(job) } else { job() }
    }

    /// Runs `job` after the work queued before it and waits for it (call without the bus locked).
    func sync(_ job: @escaping @Sendable () -> Void) {
        if let worker { worker.sync(job) } else { job() }
    }

    /// Answers the request `packet` with what `work` makes of it (the packet edited in place and
    /// the status). Inline, the caller's packet is edited and the status returned, as
    /// `ICGuestService.handle` does; on the worker, nil is returned and the answer goes out when
    /// the work is done.
    func answer(_ packet: inout [UInt8], transactionID: UInt64, client: ICClient,
                _ work: @escaping @Sendable (inout [UInt8]) -> UInt32) -> UInt32? {
        guard let worker else { return work(&packet) }
        let request = packet, withBus = self.withBus
        nonisolated(unsafe) let answer = client
        worker.async {
            var edited = request
            let status = work(&edited)
            let reply = edited
            withBus { answer.respond(reply, status: status, transactionID: transactionID) }
        }
        return nil
    }
}
