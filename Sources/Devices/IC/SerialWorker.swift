// One thread of a service's own that runs its jobs in order (file-system work kept off the bus lock).

import Foundation

/// Runs closures one at a time, in the order given, on a thread started with the first one.
final class SerialWorker: @unchecked Sendable {
    private let name: String
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var thread: Thread?
    private var stopping = false

    init(name: String) { self.name = name }

    /// Queues `job`.
    func async(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        defer { condition.unlock() }
        jobs.append(job)
        if thread == nil {
            let t = Thread { [self] in loop() }
            t.name = name
            thread = t
            t.start()
        }
        condition.broadcast()
    }

    /// Queues `job` and waits until it ran (inline when called from the worker itself).
    func sync(_ job: @escaping @Sendable () -> Void) {
        if Thread.current == thread { return job() }
        let done = Done()
        async {
            job()
            done.set()
        }
        done.wait()
    }

    /// Lets the thread end once its queue is empty.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                thread = nil
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    /// A one-shot flag to wait on.
    private final class Done: @unchecked Sendable {
        private let condition = NSCondition()
        private var isSet = false
        func set() {
            condition.lock()
            isSet = true
            condition.broadcast()
            condition.unlock()
        }
        func wait() {
            condition.lock()
            while !isSet { condition.wait() }
            condition.unlock()
        }
    }
}
