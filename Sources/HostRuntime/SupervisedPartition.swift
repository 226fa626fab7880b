// The supervisor's side of one partition worker: start, watch, reap, restart, talk to it.

import CSandbox
import CSystem
import Foundation
import Glibc
import Logging
import PartitionLink
import Synchronization

/// A partition the host serves, wherever it runs: in a worker process or on a thread of its own.
protocol PartitionHandle: AnyObject, Sendable {
    var configuration: PartitionConfiguration { get }
    /// A snapshot; never waits on the partition for more than a few seconds.
    func status() -> PartitionStatus
    /// Answers `request` on `client`, with the `resource` opened for it (both taken over).
    func serve(_ request: ControlRequest, client: Int32, resource: Int32?)
    /// Rescinds, tells the guest, ends.
    func stop()
}

/// A partition served on a thread of the host process (isolation = "none").
final class ThreadPartition: PartitionHandle, @unchecked Sendable {
    let service: PartitionService
    var configuration: PartitionConfiguration { service.configuration }
    init(_ service: PartitionService) { self.service = service }
    func status() -> PartitionStatus { service.status() }
    func serve(_ request: ControlRequest, client: Int32, resource: Int32?) {
        let reply = service.answer(request, resource: resource, emit: ControlConnection.emitter(client))
        ControlConnection.finish(client, ControlConnection.encode(reply))
    }
    func stop() { service.stop() }
}

/// One partition served by a worker process (`viridian-host worker`). The supervisor owns the
/// partition's listening socket and keeps it across workers: a guest that connects while no
/// worker runs waits in its backlog, and (restart = "on-attach") makes the next worker start.
/// Every call but `status` and `serve` comes on the supervisor's main thread, which must be the
/// one that spawns: a worker gets SIGTERM when the thread that started it ends.
final class SupervisedPartition: PartitionHandle, @unchecked Sendable {
    let configuration: PartitionConfiguration
    let id: UInt32
    let start: WorkerStart
    let listenFD: Int32
    let traceFD: Int32?
    let logger: Logger
    let executable: String
    let logLevel: Logger.Level

    enum Phase: String { case starting, serving, failed, stopped }

    struct State {
        var phase = Phase.starting
        var pid: Int32 = 0
        var pidfd: Int32 = -1
        var channel: WorkerChannel?
        var starts = 0
        var lastExit: String?
        var startedAt: UInt64 = 0
        var confined = false
        /// When the next start may happen (restart = "always", or after a quick death).
        var notBefore: UInt64 = 0
        /// NICs whose TAP the worker lost; the supervisor reopens each once it exists again.
        var lostTAPs: Set<Int> = []
        var nextTAPTry: UInt64 = 0
    }
    private let state = Mutex(State())

    /// How long a worker may take to set up its partition.
    static let startTimeoutMs: Int32 = 15_000
    /// Two starts of one partition's worker are at least this far apart.
    static let restartSpacingNs: UInt64 = 1_000_000_000

    init(configuration: PartitionConfiguration, id: UInt32, start: WorkerStart, traceFD: Int32?, logger: Logger, logLevel: Logger.Level) throws {
        self.configuration = configuration
        self.id = id
        self.start = start
        self.traceFD = traceFD
        self.logger = logger
        self.logLevel = logLevel
        let type = configuration.carrier == "qemu" ? SOCK_STREAM : SOCK_SEQPACKET
        listenFD = try UnixSocket.listen(path: start.socketPath, type: Int32(type.rawValue), backlog: configuration.carrier == "qemu" ? 4 : 16)
        executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        // Swift's crash backtracer starts a helper process, which a confined worker may not: the
        // crash would end in SIGSEGV inside the failed attempt instead of its own signal.
        setenv("SWIFT_BACKTRACE", "enable=no", 1)
    }

    deinit {
        close(listenFD)
        unlink(start.socketPath)
    }

    var phase: Phase { state.withLock { $0.phase } }

    /// Starts a worker and waits for its report. Throws with the worker's reason if it cannot serve.
    func spawn() throws {
        let (channel, workerEnd) = try WorkerChannel.pair()
        defer { close(workerEnd) }
        let argv = [executable, "worker", "--log-level", logLevel.rawValue]
        let copies = argv.map { strdup($0) } + [nil]
        defer { copies.forEach { free($0) } }
        let fds = [workerEnd, listenFD] + (traceFD.map { [$0] } ?? [])
        var pidfd: Int32 = -1
        let pid = fds.withUnsafeBufferPointer { viridian_spawn_worker(executable, copies, $0.baseAddress, Int32($0.count), &pidfd) }
        guard pid > 0 else { throw WorkerError.system("starting the worker of \(configuration.name)", errno) }
        state.withLock {
            $0 = State(phase: .starting, pid: pid, pidfd: pidfd, channel: channel, starts: $0.starts + 1, lastExit: $0.lastExit,
                       startedAt: viridian_now_ns(), confined: false, notBefore: 0)
        }
        guard channel.send(start) else { throw WorkerError.failed("\(configuration.name): the worker (pid \(pid)) died before it was told its partition") }
        guard channel.wait(timeoutMs: Self.startTimeoutMs), let (report, extra) = channel.receive(WorkerReport.self) else {
            kill(pid, SIGKILL)
            throw WorkerError.failed("\(configuration.name): the worker (pid \(pid)) did not report within \(Self.startTimeoutMs) ms")
        }
        extra.forEach { close($0) }
        guard report.ready else { throw WorkerError.failed(report.error ?? "\(configuration.name): the worker could not start") }
        state.withLock {
            $0.phase = .serving
            $0.confined = report.confined
        }
        logger.info("\(configuration.name): worker pid \(pid) serving (start \(state.withLock { $0.starts }))")
    }

    /// What the main loop should watch for this partition: the worker's pidfd and channel while
    /// one runs, the listening socket while it waits to restart on attach, nothing otherwise.
    var watchedDescriptors: [Int32] {
        state.withLock { s in
            switch s.phase {
            case .serving where s.pidfd >= 0: return [s.pidfd] + (s.channel.map { [$0.fd] } ?? [])
            case .starting where s.pidfd >= 0: return [s.pidfd]
            case .failed where configuration.restart == "on-attach" && viridian_now_ns() >= s.notBefore: return [listenFD]
            default: return []
            }
        }
    }

    /// When the main loop should call `tick` (a restart or a TAP retry waits for it), if ever.
    var deadline: UInt64? {
        state.withLock { s in
            if s.phase == .serving && !s.lostTAPs.isEmpty { return s.nextTAPTry }
            return s.phase == .failed && configuration.restart != "never" && s.notBefore > 0 ? s.notBefore : nil
        }
    }

    /// A watched descriptor is ready: the worker ended (reap it), asked for something, or a guest
    /// knocks (start one).
    func descriptorReady(_ fd: Int32) {
        let (phase, pidfd, channel) = state.withLock { ($0.phase, $0.pidfd, $0.channel) }
        if phase == .failed {
            // Only the listening socket means a guest: the dead worker's channel and pidfd can be
            // reported ready in the same pass that reaped it (that restarted it with no guest).
            if fd == listenFD { restart(reason: "a guest is connecting") }
            return
        }
        if let channel, fd == channel.fd {
            // EOF: the worker is going; its pidfd tells the rest.
            guard let (request, fds) = channel.receive(ControlRequest.self) else { return state.withLock { $0.channel = nil } }
            fds.forEach { close($0) }
            if request.op == "tap-lost", let index = request.nic.flatMap({ Int($0) }), configuration.nic.indices.contains(index) {
                logger.warning("\(configuration.name): the worker lost NIC \(index)'s TAP \(configuration.nic[index].tap); reopening it when it exists again")
                state.withLock {
                    $0.lostTAPs.insert(index)
                    $0.nextTAPTry = viridian_now_ns()
                }
            }
            return
        }
        guard pidfd >= 0 else { return }
        reap()
    }

    /// How often a lost TAP is looked for.
    static let tapRetryNs: UInt64 = 500_000_000

    /// Time passed: a worker due to restart (restart = "always", or one spaced out) starts; lost TAPs are looked for.
    func tick(now: UInt64) {
        let (lost, due, channel) = state.withLock { ($0.lostTAPs, $0.nextTAPTry <= now, $0.channel) }
        if !lost.isEmpty && due, let channel {
            for index in lost.sorted() {
                let nic = configuration.nic[index]
                guard let fds = TapRecovery.reopen(nic, queues: configuration.queueCount(nic)) else { continue }
                _ = channel.send(ControlRequest(op: "tap-restored", nic: String(index)), fds: fds)
                fds.forEach { close($0) }
                logger.notice("\(configuration.name): TAP \(nic.tap) exists again; handed to the worker")
                _ = state.withLock { $0.lostTAPs.remove(index) }
            }
            state.withLock { $0.nextTAPTry = now + Self.tapRetryNs }
        }
        tickRestart(now: now)
    }

    private func tickRestart(now: UInt64) {
        let due = state.withLock { $0.phase == .failed && $0.notBefore > 0 && now >= $0.notBefore }
        guard due else { return }
        if configuration.restart == "always" {
            restart(reason: "restart = \"always\"")
        } else {
            state.withLock { $0.notBefore = 0 }
        }
    }

    private func restart(reason: String) {
        do {
            logger.notice("\(configuration.name): starting a new worker (\(reason))")
            try spawn()
        } catch {
            logger.error("\(configuration.name): \(error)")
            // No process at all (clone3 failed): wait before the next try, or a knocking guest would spin here.
            if state.withLock({ $0.pid == 0 }) {
                state.withLock {
                    $0.lastExit = "could not start: \(error)"
                    $0.notBefore = viridian_now_ns() + Self.restartSpacingNs
                }
            }
            reap(startFailed: "\(error)")
        }
    }

    /// Collects the ended worker: how it ended, the partition marked failed.
    func reap(startFailed: String? = nil) {
        let (pid, pidfd, startedAt) = state.withLock { ($0.pid, $0.pidfd, $0.startedAt) }
        guard pid > 0 else { return }
        var code: Int32 = 0, signal: Int32 = 0
        var waited = viridian_reap(pid, &code, &signal)
        if waited == 0 && startFailed != nil {
            // A worker that failed to start exits on its own; give it a moment, then make sure.
            var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 2000) == 0 { kill(pid, SIGKILL); _ = poll(&p, 1, 2000) }
            waited = viridian_reap(pid, &code, &signal)
        }
        guard waited > 0 else { return }
        let how = Self.describe(code: code, signal: signal) + (startFailed.map { ": \($0)" } ?? "")
        if pidfd >= 0 { close(pidfd) }
        let now = viridian_now_ns()
        let quick = now &- startedAt < Self.restartSpacingNs
        state.withLock {
            $0.phase = .failed
            $0.pid = 0
            $0.pidfd = -1
            $0.channel = nil
            $0.confined = false
            $0.lastExit = how
            $0.notBefore = configuration.restart == "always" || quick ? max(now, startedAt + Self.restartSpacingNs) : 0
        }
        let next = switch configuration.restart {
        case "on-attach": "it starts again when a guest connects"
        case "always": "it starts again now"
        default: "restart = \"never\": it stays down"
        }
        logger.error("\(configuration.name): worker pid \(pid) \(how); the other partitions go on; \(next)")
    }

    static func describe(code: Int32, signal: Int32) -> String {
        guard signal != 0 else { return "exited with status \(code)" }
        let names: [Int32: String] = [SIGKILL: "SIGKILL", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGSYS: "SIGSYS", SIGBUS: "SIGBUS",
                                      SIGTERM: "SIGTERM", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGFPE: "SIGFPE", SIGINT: "SIGINT"]
        return "killed by signal \(signal) (\(names[signal] ?? "signal \(signal)"))"
    }

    var workerStatus: WorkerStatus {
        state.withLock { s in
            WorkerStatus(pid: s.pid > 0 ? s.pid : nil, state: s.phase.rawValue, starts: s.starts, lastExit: s.lastExit, confined: s.confined,
                         restart: configuration.restart)
        }
    }

    /// The most a worker's status answer may take (64 channels of counters are a few hundred KiB).
    static let maximumStatusBytes = 16 << 20

    /// How long `status` waits for a worker.
    static let statusTimeoutMs: Int32 = 2000

    func status() -> PartitionStatus {
        let (phase, channel) = state.withLock { ($0.phase, $0.channel) }
        var status: PartitionStatus
        if phase == .serving, let channel, let reply = ask(channel, timeoutMs: Self.statusTimeoutMs),
           let decoded = try? JSONDecoder().decode(PartitionStatus.self, from: reply) {
            status = decoded
        } else {
            status = .bare(id: id, configuration: configuration, socket: start.socketPath, state: phase == .serving ? "not answering" : phase.rawValue)
        }
        status.worker = workerStatus
        return status
    }

    /// Sends a status request over a private socket pair and reads the whole answer, or nil.
    private func ask(_ channel: WorkerChannel, timeoutMs: Int32) -> Data? {
        var pair: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return nil }
        defer { close(pair[0]) }
        let sent = channel.send(ControlRequest(op: "status"), fds: [pair[1]])
        close(pair[1])
        guard sent else { return nil }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = viridian_now_ns() + UInt64(timeoutMs) * 1_000_000
        while true {
            let now = viridian_now_ns()
            guard now < deadline else { return nil }
            var p = pollfd(fd: pair[0], events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { return nil }
            let n = read(pair[0], &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return data }
            // A worker is a peer too (a compromised one may send without end): status fits in far less.
            guard data.count + n <= Self.maximumStatusBytes else { return nil }
            data.append(contentsOf: chunk[0..<n])
        }
    }

    func serve(_ request: ControlRequest, client: Int32, resource: Int32?) {
        defer { if let resource { close(resource) } }
        let (phase, channel, lastExit) = state.withLock { ($0.phase, $0.channel, $0.lastExit) }
        if phase == .serving, let channel, channel.send(request, fds: [client] + (resource.map { [$0] } ?? [])) {
            close(client)
            return
        }
        let why = "partition \(configuration.name) is not running (\(phase.rawValue)"
            + (lastExit.map { ": its worker \($0)" } ?? "") + (configuration.restart == "on-attach" ? "; it starts again when a guest connects)" : ")")
        ControlConnection.finish(client, ControlConnection.encode(ControlReply.failure(why)))
    }

    func stop() {
        let (pid, pidfd) = state.withLock { ($0.pid, $0.pidfd) }
        guard pid > 0 else {
            state.withLock { $0.phase = .stopped }
            return
        }
        kill(pid, SIGTERM)
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        // The worker's own stop waits up to 5 s for its partition thread.
        if poll(&p, 1, 7000) == 0 {
            logger.error("\(configuration.name): worker pid \(pid) did not stop within 7 s; killing it")
            kill(pid, SIGKILL)
            _ = poll(&p, 1, 2000)
        }
        var code: Int32 = 0, signal: Int32 = 0
        _ = viridian_reap(pid, &code, &signal)
        close(pidfd)
        state.withLock {
            $0.phase = .stopped
            $0.pid = 0
            $0.pidfd = -1
            $0.channel = nil
        }
    }
}
