// The running host: the partitions (worker processes or threads), the control socket, signal-driven shutdown.

import CSystem
import Foundation
import Glibc
import Logging
import Hypervisor
import PartitionLink
import QEMUCarrier
import Synchronization

/// `viridian-host run`: serves every configured partition and answers the control socket until
/// SIGTERM, SIGINT or SIGHUP; then rescinds, tells agents, removes its sockets.
///
/// With isolation = "process" (the default) the host is a supervisor: each partition runs in a
/// worker process of its own (`SupervisedPartition`, `PartitionWorker`), confined, holding only
/// that partition's images, TAPs and sockets. A worker that dies is reported in `status`, the
/// others go on serving, and it starts again by the partition's restart policy. Control requests
/// are handed to the worker with their connection; `status` asks every worker, each for at most
/// two seconds. With isolation = "none" the partitions are threads of this process.
public final class ViridianHostService: @unchecked Sendable {
    public let configuration: HostConfiguration
    let partitions: [any PartitionHandle]
    let logger: Logger
    let controlFD: Int32
    let controlPath: String
    let stopRequest: EventFD
    /// Control connections being served now.
    let activeControl = Atomic<Int>(0)
    let traceFD: Int32?

    public init(configuration: HostConfiguration, tracePath: String?, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let dir = configuration.resolvedRuntimeDir
        try RuntimeDirectory.prepare(dir)
        if configuration.isolated {
            // One trace file for all workers, appended to (each line is one write).
            let traceFD = try tracePath.map { path in
                let fd = viridian_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o644)
                guard fd >= 0 else { throw ConfigurationError.invalid("cannot open trace file \(path): \(String(cString: strerror(errno)))") }
                return fd
            }
            self.traceFD = traceFD
            partitions = try configuration.partition.enumerated().map { i, p in
                let start = WorkerStart(partition: p, id: UInt32(i + 1), imageDirectory: configuration.resolvedImageDir,
                                        socketPath: p.carrier == "qemu" ? configuration.ivshmemSocketPath(for: p) : configuration.socketPath(for: p),
                                        ramFile: configuration.ramFilePath(for: p), trace: traceFD != nil)
                return try SupervisedPartition(configuration: p, id: UInt32(i + 1), start: start, traceFD: traceFD, logger: logger, logLevel: logger.logLevel)
            }
        } else {
            traceFD = nil
            let trace = try tracePath.map { try TraceWriter(path: $0) }
            partitions = try configuration.partition.enumerated().map { i, p in
                let id = UInt32(i + 1)
                let carrier: any HostCarrier
                if p.carrier == "qemu" {
                    carrier = try QEMUHostCarrier(socketPath: configuration.ivshmemSocketPath(for: p), ramFile: configuration.ramFilePath(for: p),
                                                  partitionID: id, name: p.name, vps: p.vps, memoryBytes: UInt64(p.memoryMiB) << 20, logger: logger)
                } else {
                    carrier = try LinkHostCarrier(socketPath: configuration.socketPath(for: p),
                                                  welcome: .init(partitionID: id, vpCount: UInt32(p.vps), memoryBytes: UInt64(p.memoryMiB) << 20,
                                                                 cpuMask: p.cpuMask, name: p.name), logger: logger)
                }
                return ThreadPartition(try PartitionService(configuration: p, id: id, carrier: carrier, imageDirectory: configuration.resolvedImageDir,
                                                            logger: logger, trace: trace))
            }
        }
        controlPath = configuration.controlSocketPath
        stopRequest = try EventFD()
        // The workers start before the control socket appears: once it does, every partition serves.
        do {
            for p in partitions {
                if let supervised = p as? SupervisedPartition { try supervised.spawn() } else { (p as? ThreadPartition)?.service.start() }
            }
        } catch {
            Self.stop(partitions)
            throw error
        }
        controlFD = try UnixSocket.listen(path: controlPath, type: Int32(SOCK_STREAM.rawValue))
    }

    deinit {
        close(controlFD)
        unlink(controlPath)
        if let traceFD { close(traceFD) }
    }

    /// Runs until a stop signal or `requestStop()`.
    public func run(handleSignals: Bool = true) throws {
        if handleSignals { _ = viridian_route_signals_to(stopRequest.fd) }
        for p in partitions {
            let address = configuration.partition.first { $0.name == p.configuration.name }.map {
                $0.carrier == "qemu" ? configuration.ivshmemSocketPath(for: $0) : configuration.socketPath(for: $0)
            } ?? ""
            logger.notice("partition \(p.configuration.name) (\(p.configuration.carrier)\(configuration.isolated ? ", worker process" : "")) listening on unix:\(address)")
        }
        logger.notice("control socket unix:\(controlPath)")
        let supervised = partitions.compactMap { $0 as? SupervisedPartition }
        while true {
            var fds = [pollfd(fd: controlFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stopRequest.fd, events: Int16(POLLIN), revents: 0)]
            var owners: [SupervisedPartition] = []
            for p in supervised {
                for fd in p.watchedDescriptors {
                    fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    owners.append(p)
                }
            }
            let now = viridian_now_ns()
            let timeout = supervised.compactMap(\.deadline).min().map { Int32(clamping: ($0 > now ? $0 - now : 0) / 1_000_000 + 1) } ?? -1
            if poll(&fds, nfds_t(fds.count), timeout) < 0 { if errno == EINTR { continue } else { break } }
            if fds[1].revents != 0 { break }
            if fds[0].revents != 0 { serveControl() }
            for (i, p) in owners.enumerated() where fds[i + 2].revents != 0 { p.descriptorReady(fds[i + 2].fd) }
            let later = viridian_now_ns()
            for p in supervised { p.tick(now: later) }
        }
        logger.notice("shutting down: rescinding channels, detaching agents")
        Self.stop(partitions)
    }

    /// Stops every partition at once (workers stop in parallel).
    private static func stop(_ all: [any PartitionHandle]) {
        DispatchQueue.concurrentPerform(iterations: all.count) { all[$0].stop() }
    }

    public func requestStop() { stopRequest.ring() }

    public func status() -> HostStatus {
        let all = partitions
        let results = Mutex([PartitionStatus?](repeating: nil, count: all.count))
        DispatchQueue.concurrentPerform(iterations: all.count) { i in
            let s = all[i].status()
            results.withLock { $0[i] = s }
        }
        return HostStatus(pid: getpid(), partitions: results.withLock { $0.compactMap { $0 } })
    }

    /// One request per connection, each on its own thread (a copy-file runs for minutes while
    /// `status` keeps answering): a line (JSON `ControlRequest`, or "status") in, JSON out.
    private func serveControl() {
        let client = viridian_accept(controlFD)
        guard client >= 0 else { return }
        // The socket is 0600; anyone else who reaches it anyway (root, or a passed descriptor) is checked too.
        guard viridian_peer_trusted(client) != 0 else {
            logger.warning("control socket: refused pid \(viridian_peer_pid(client)): not root and not this host's user")
            return ControlConnection.finish(client, Data("{\"ok\":false,\"error\":\"not allowed\"}".utf8))
        }
        guard activeControl.add(1, ordering: .relaxed).newValue <= Self.maximumControlConnections else {
            activeControl.subtract(1, ordering: .relaxed)
            ControlConnection.finish(client, Data("{\"ok\":false,\"error\":\"too many control requests at once\"}".utf8))
            return
        }
        Thread.detachNewThread { [self] in
            serveConnection(client)
            activeControl.subtract(1, ordering: .relaxed)
        }
    }

    /// Concurrent control connections served; more are refused.
    static let maximumControlConnections = 32

    private func serveConnection(_ client: Int32) {
        guard let request = ControlConnection.readRequest(client) else {
            return ControlConnection.finish(client, Data("{\"ok\":false,\"error\":\"malformed request\"}".utf8))
        }
        if request.op == "status" { return ControlConnection.finish(client, ControlConnection.encode(status())) }
        guard let name = request.partition, let partition = partitions.first(where: { $0.configuration.name == name }) else {
            return ControlConnection.finish(client, ControlConnection.encode(ControlReply.failure("no partition named '\(request.partition ?? "")'")))
        }
        switch ControlResource.open(for: request) {
        case .failure(let failure): ControlConnection.finish(client, ControlConnection.encode(ControlReply.failure(failure.why)))
        case .success(let resource): partition.serve(request, client: client, resource: resource)
        }
    }

    /// Asks a running host for its status over the control socket.
    public static func queryStatus(controlPath: String) throws -> HostStatus {
        try JSONDecoder().decode(HostStatus.self, from: send(ControlRequest(op: "status"), controlPath: controlPath))
    }
}
