// `viridian-host worker`: one partition served in a process of its own, confined, under a supervisor.

import CSystem
import Foundation
import Glibc
import Hypervisor
import Logging
import PartitionLink
import QEMUCarrier

/// The worker side of process isolation. The supervisor starts it with descriptor 3 (its
/// channel), 4 (the partition's listening socket) and, when tracing, 5 (the trace file), then
/// sends a `WorkerStart`. The worker sets up its partition (images, TAPs: nothing of any other
/// partition's), confines itself (`WorkerSandbox`), reports, and serves the control connections
/// the supervisor hands it until the channel closes or SIGTERM.
public enum PartitionWorker {
    static let channelFD: Int32 = 3
    static let listenFD: Int32 = 4
    static let traceFD: Int32 = 5

    /// Runs the worker; returns its exit status.
    public static func run(logger: Logger) -> Int32 {
        let channel = WorkerChannel(adopting: channelFD)
        guard let (start, extra) = channel.receive(WorkerStart.self) else {
            logger.error("worker: no start message from the supervisor")
            return 70
        }
        extra.forEach { close($0) }
        let name = start.partition.name
        let service: PartitionService
        do {
            service = try makeService(start, logger: logger)
        } catch {
            _ = channel.send(WorkerReport(ready: false, error: "\(error)", confined: false))
            return 78
        }
        do throws(WorkerSandbox.Failure) {
            try WorkerSandbox.apply()
        } catch {
            _ = channel.send(WorkerReport(ready: false, error: "\(name): confinement failed: \(error)", confined: false))
            return 71
        }
        guard let stop = try? EventFD() else { return 71 }
        // A confined worker opens no TAP: the supervisor reopens a lost one and hands it back.
        service.tapLostHandler = { index in _ = channel.send(ControlRequest(op: "tap-lost", nic: String(index))) }
        _ = viridian_route_signals_to(stop.fd)
        service.start()
        _ = channel.send(WorkerReport(ready: true, error: nil, confined: true))
        logger.info("\(name): worker set up and confined; serving")
        var fds = [pollfd(fd: channel.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            if poll(&fds, 2, -1) < 0 { if errno == EINTR { continue } else { break } }
            if fds[1].revents != 0 { break }
            guard fds[0].revents != 0 else { continue }
            // EOF: the supervisor is gone (or dropped us); stop as on SIGTERM.
            guard let (request, passed) = channel.receive(ControlRequest.self) else { break }
            if request.op == "tap-restored", let index = request.nic.flatMap({ Int($0) }) {
                if service.perform({ service.restoreTAP(index, passed) }) == nil { passed.forEach { close($0) } }
                continue
            }
            guard let client = passed.first else { continue }
            let resource = passed.count > 1 ? passed[1] : nil
            passed.dropFirst(2).forEach { close($0) }
            Thread.detachNewThread { serve(service, request, client: client, resource: resource) }
        }
        logger.notice("\(name): worker stopping: rescinding channels, detaching the guest")
        service.stop()
        return 0
    }

    /// Answers one control connection handed over by the supervisor.
    static func serve(_ service: PartitionService, _ request: ControlRequest, client: Int32, resource: Int32?) {
        if request.op == "status" {
            if let fd = resource { close(fd) }
            ControlConnection.finish(client, ControlConnection.encode(service.status()))
            return
        }
        let reply = service.answer(request, resource: resource, emit: ControlConnection.emitter(client))
        ControlConnection.finish(client, ControlConnection.encode(reply))
    }

    static func makeService(_ start: WorkerStart, logger: Logger) throws -> PartitionService {
        let p = start.partition
        let carrier: any HostCarrier
        if p.carrier == "qemu" {
            carrier = try QEMUHostCarrier(socketPath: start.socketPath, ramFile: start.ramFile, partitionID: start.id, name: p.name, vps: p.vps,
                                          memoryBytes: UInt64(p.memoryMiB) << 20, listenFD: listenFD, logger: logger)
        } else {
            carrier = try LinkHostCarrier(socketPath: start.socketPath,
                                          welcome: .init(partitionID: start.id, vpCount: UInt32(p.vps), memoryBytes: UInt64(p.memoryMiB) << 20,
                                                         cpuMask: p.cpuMask, name: p.name),
                                          listener: LinkListener(adopting: listenFD, path: start.socketPath), logger: logger)
        }
        let trace = start.trace ? TraceWriter(adopting: traceFD) : nil
        return try PartitionService(configuration: p, id: start.id, carrier: carrier, imageDirectory: start.imageDirectory,
                                    logger: logger, trace: trace)
    }
}
