// The running host: partition services, the control socket for `status`, and signal-driven shutdown.

import CSystem
import Foundation
import Glibc
import Logging
import Hypervisor
import PartitionLink
import QEMUCarrier
import Synchronization

/// `viridian-host run`: starts one service per partition and answers `status` on the control
/// socket until SIGTERM, SIGINT or SIGHUP; then rescinds, tells agents, removes its sockets.
public final class ViridianHostService: @unchecked Sendable {
    public let configuration: HostConfiguration
    public let partitions: [PartitionService]
    let logger: Logger
    let trace: TraceWriter?
    let controlFD: Int32
    let controlPath: String
    let stopRequest: EventFD
    /// Control connections being served now.
    let activeControl = Atomic<Int>(0)

    public init(configuration: HostConfiguration, tracePath: String?, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let dir = configuration.resolvedRuntimeDir
        try RuntimeDirectory.prepare(dir)
        let trace = try tracePath.map { try TraceWriter(path: $0) }
        self.trace = trace
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
            return try PartitionService(configuration: p, id: id, carrier: carrier, imageDirectory: configuration.resolvedImageDir,
                                        logger: logger, trace: trace)
        }
        controlPath = configuration.controlSocketPath
        controlFD = try UnixSocket.listen(path: controlPath, type: Int32(SOCK_STREAM.rawValue))
        stopRequest = try EventFD()
    }

    deinit {
        close(controlFD)
        unlink(controlPath)
    }

    /// Runs until a stop signal or `requestStop()`.
    public func run(handleSignals: Bool = true) throws {
        if handleSignals { _ = viridian_route_signals_to(stopRequest.fd) }
        for p in partitions { p.start() }
        for p in partitions { logger.notice("partition \(p.configuration.name) (\(p.carrier.kind)) listening on unix:\(p.carrier.address)") }
        logger.notice("control socket unix:\(controlPath)")
        var fds = [pollfd(fd: controlFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stopRequest.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { break } }
            if fds[1].revents != 0 { break }
            if fds[0].revents != 0 { serveControl() }
        }
        logger.notice("shutting down: rescinding channels, detaching agents")
        for p in partitions { p.stop() }
    }

    public func requestStop() { stopRequest.ring() }

    public func status() -> HostStatus {
        HostStatus(pid: getpid(), partitions: partitions.map { $0.status() })
    }

    /// One request per connection, each on its own thread (a copy-file runs for minutes while
    /// `status` keeps answering): a line (JSON `ControlRequest`, or "status") in, JSON out.
    private func serveControl() {
        let client = viridian_accept(controlFD)
        guard client >= 0 else { return }
        guard activeControl.add(1, ordering: .relaxed).newValue <= Self.maximumControlConnections else {
            activeControl.subtract(1, ordering: .relaxed)
            Self.writeAll(client, Data("{\"ok\":false,\"error\":\"too many control requests at once\"}".utf8))
            close(client)
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
        defer { close(client) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 8192)
        var length = 0
        while length < buffer.count, !buffer[0..<length].contains(UInt8(ascii: "\n")) {
            let n = buffer.withUnsafeMutableBytes { read(client, $0.baseAddress! + length, $0.count - length) }
            if n <= 0 { break }
            length += n
        }
        let line = String(decoding: buffer[0..<length], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let request = line == "status" ? ControlRequest(op: "status") : (try? JSONDecoder().decode(ControlRequest.self, from: Data(line.utf8)))
        // A requester that closed its end (or sent more than its one line) is gone: progress stops there.
        let emit: (Data) -> Bool = { data in
            var p = pollfd(fd: client, events: Int16(POLLIN) | 0x2000 /* POLLRDHUP */, revents: 0)
            if poll(&p, 1, 0) > 0 { return false }
            return Self.writeAll(client, data)
        }
        let reply = request.map { answer($0, emit: emit) } ?? Data("{\"ok\":false,\"error\":\"malformed request\"}".utf8)
        Self.writeAll(client, reply)
    }

    @discardableResult
    static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let w = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { return false }
                sent += w
            }
            return true
        }
    }

    /// Asks a running host for its status over the control socket.
    public static func queryStatus(controlPath: String) throws -> HostStatus {
        try JSONDecoder().decode(HostStatus.self, from: send(ControlRequest(op: "status"), controlPath: controlPath))
    }
}
