// A pool of I/O threads for a partition's devices; completions return to the partition thread.

import Glibc
import Hypervisor
import PartitionLink

/// Worker threads for blocking device work (pread, pwrite, fsync, fallocate). Completions are
/// queued and the partition loop runs them when `completions` (an eventfd in its epoll set) rings.
final class WorkerPool: DeviceExecutor, @unchecked Sendable {
    /// A completion crossing back to the partition thread, which alone runs it.
    struct Completion: @unchecked Sendable { let run: () -> Void }

    let completions: EventFD
    private var jobs: [(work: @Sendable () -> Void, then: Completion)] = []
    private var done: [Completion] = []
    private var mutex = pthread_mutex_t()
    private var ready = pthread_cond_t()
    private var stopping = false
    private var threads: [OSThread] = []

    init(threads count: Int) throws {
        completions = try EventFD()
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&ready, nil)
        for _ in 0..<count { threads.append(OSThread { [self] in work() }) }
    }

    func run(_ work: @escaping @Sendable () -> Void, then completion: @escaping () -> Void) {
        pthread_mutex_lock(&mutex)
        jobs.append((work, Completion(run: completion)))
        pthread_cond_signal(&ready)
        pthread_mutex_unlock(&mutex)
    }

    /// Runs the completions that are ready (on the partition thread).
    func drainCompletions() {
        var count: UInt64 = 0
        _ = read(completions.fd, &count, 8)
        pthread_mutex_lock(&mutex)
        let batch = done
        done.removeAll(keepingCapacity: true)
        pthread_mutex_unlock(&mutex)
        for c in batch { c.run() }
    }

    func stop() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_broadcast(&ready)
        pthread_mutex_unlock(&mutex)
        for t in threads { t.join() }
        threads.removeAll()
    }

    private func work() {
        while true {
            pthread_mutex_lock(&mutex)
            while jobs.isEmpty && !stopping { pthread_cond_wait(&ready, &mutex) }
            if jobs.isEmpty {
                pthread_mutex_unlock(&mutex)
                return
            }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(&mutex)
            job.work()
            pthread_mutex_lock(&mutex)
            done.append(job.then)
            pthread_mutex_unlock(&mutex)
            completions.ring()
        }
    }
}
