// Binds the guest's integration services to their offered channels: heartbeat, time sync, shutdown,
// KVP (with IP injection), backup (VSS) and guest file copy (FCOPY).

import Atomics
import CSystem
import Foundation
import Glibc
import IntegrationServices
import Logging
import VMBusClient
import VMBusWire

extension AgentSession {
    /// Opens every offered IC channel the configuration asks for and answers it from now on.
    /// Returns the drivers (keep them alive).
    /// `adapters` lists the NICs KVP's IP requests may name (read when one comes).
    public func serveIntegrationServices(_ config: AgentConfiguration, adapters: @escaping @Sendable () -> [GuestAdapter] = { [] }) throws -> [ICClient] {
        let wanted: [(DeviceClass, String)] = [(.heartbeat, "heartbeat"), (.timeSync, "timesync"), (.shutdown, "shutdown"), (.kvp, "kvp"),
                                               (.vss, "vss"), (.fileCopy, "fcopy")]
            .filter { config.integrationServices.contains($0.1) && !($0.1 == "timesync" && config.timesync == "off") }
        let channels = withBus { client in
            wanted.compactMap { w in client.channels.values.first { $0.deviceClass == w.0 && $0.state == .offered }.map { ($0, w.1) } }
        }
        for (channel, _) in channels {
            try withBus { try $0.open(channel, sendPages: 4, receivePages: 4) }
        }
        guard try wait(timeoutMs: config.connectTimeoutMs, until: { _ in channels.allSatisfy { $0.0.state != .creatingRingGPADL && $0.0.state != .opening } }) else {
            throw AgentError.timeout("opening integration-service channels")
        }
        var drivers: [ICClient] = []
        for (channel, name) in channels {
            guard channel.state == .open else {
                logger.warning("\(name): channel did not open (\(channel.state))")
                continue
            }
            let service = try makeService(name, config: config, adapters: adapters)
            drivers.append(withBus { _ in ICClient(channel: channel, service: service, logger: logger) })
            logger.info("\(name): serving relid \(channel.relid)")
        }
        return drivers
    }

    private func makeService(_ name: String, config: AgentConfiguration, adapters: @escaping @Sendable () -> [GuestAdapter]) throws -> any ICGuestService {
        switch name {
        case "heartbeat":
            let window = UInt64(config.healthWindowMs) * 1_000_000
            return HeartbeatService { [weak self] in
                guard let self else { return false }
                return viridian_now_ns() - self.lastPet < window
            }
        case "timesync":
            let sink: any TimeSampleSink = config.timesync == "clock"
                ? ClockDiscipline(clock: SystemClock(logger: logger), referenceNow: viridian_now_ns,
                                  stepThresholdNs: Int64(config.clockStepThresholdMs) * 1_000_000)
                : ChronySockSink(path: config.chronySocket, referenceNow: viridian_now_ns, realtimeNow: SystemClock.realtimeNow)
            return TimeSyncService(referenceNow: viridian_now_ns, sink: sink)
        case "shutdown":
            let commands: [ShutdownKind: String] = [.poweroff: config.poweroffCommand, .reboot: config.rebootCommand,
                                                    .hibernate: config.hibernateCommand]
            let logger = self.logger
            return ShutdownService(
                logger: logger,
                run: { kind, _, _ in runAction(commands[kind] ?? "false", logger: logger) },
                withBus: { [weak self] body in self?.bus.withLock(body) })
        case "vss":
            return VSSService(freezer: MountFreezer(only: config.backupMountPoints), autoThawNs: UInt64(config.backupThawTimeoutS) * 1_000_000_000,
                              now: viridian_now_ns, logger: logger, withBus: { [weak self] body in self?.bus.withLock(body) })
        case "fcopy":
            return FCopyService(allowed: config.fcopyDirectories, now: viridian_now_ns, logger: logger,
                                withBus: { [weak self] body in self?.bus.withLock(body) })
        default:
            let store = try KVPStore(directory: config.stateDir + "/kvp")
            let intrinsic = IntrinsicData(include: config.kvpInterfacesInclude, exclude: config.kvpInterfacesExclude)
            let ip = GuestIPConfigurator(adapters: adapters, backend: config.ipConfig, resolvConf: config.resolvConf, logger: logger)
            logger.info("kvp: IP injection through \(ip.backendName)")
            return KVPService(store: store, intrinsic: { [weak self] in intrinsic.records() + (self?.publishedKVP.withLock { $0 } ?? []) },
                              ip: ip, logger: logger,
                              withBus: { [weak self] body in self?.bus.withLock(body) })
        }
    }
}

extension SystemClock {
    /// CLOCK_REALTIME in ns.
    static func realtimeNow() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}

/// Runs a shutdown action with /bin/sh -c; true if it exits 0 within 60 s.
func runAction(_ command: String, logger: Logger) -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    do { try process.run() } catch {
        logger.error("shutdown: cannot run '\(command)': \(error)")
        return false
    }
    let deadline = Date().addingTimeInterval(60)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        process.terminate()
        logger.error("shutdown: '\(command)' did not finish within 60 s")
        return false
    }
    let ok = process.terminationStatus == 0
    if !ok { logger.error("shutdown: '\(command)' exited with \(process.terminationStatus)") }
    return ok
}
