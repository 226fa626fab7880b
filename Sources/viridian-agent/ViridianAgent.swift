// viridian-agent: the guest agent. Joins a partition and runs the VMBus clients. Command line only.

import AgentRuntime
import CSystem
import KernelGlueLink
import ArgumentParser
import Foundation
import Glibc
import HostRuntime
import IntegrationServices
import Logging
import NBD
import PartitionLink
import Synchronization
import VMBusWire

@main
struct ViridianAgent: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viridian-agent",
        abstract: "Viridian's guest agent: joins a partition and runs its VMBus clients.",
        version: ViridianVersion.current,
        subcommands: [Run.self, List.self, Echo.self, KVPCommand.self, DiskCommand.self, NICCommand.self, ChildrenCommand.self, GlueCommand.self],
        defaultSubcommand: Run.self)
}

/// Options every subcommand takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "Partition link, unix:PATH (default: from the configuration file).")
    var link: String?

    @Option(help: "Configuration file (default /etc/viridian/agent.toml if present).")
    var config: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    func load() throws -> (AgentConfiguration, Logger) {
        var configuration = try AgentConfiguration.load(path: config)
        if let link { configuration.link = link }
        if let logLevel { configuration.logLevel = logLevel }
        guard let level = Logger.Level(rawValue: configuration.logLevel) else {
            throw ValidationError("unknown log level '\(configuration.logLevel)'")
        }
        var logger = Logger(label: "viridian.agent") { SystemdLogHandler.standardError(label: $0) }
        logger.logLevel = level
        return (configuration, logger)
    }

    func join(_ configuration: AgentConfiguration, _ logger: Logger) throws -> AgentSession {
        let session: AgentSession
        do {
            session = try AgentSession(address: configuration.link, poolMiB: configuration.bufferPoolMiB,
                                       versions: try configuration.parsedVersions(), logger: logger)
        } catch let error as LinkError {
            throw AgentError.hostGone("cannot join \(configuration.link): \(error)")
        } catch let error as GlueError {
            throw AgentError.hostGone("cannot join \(configuration.link): \(error)")
        }
        do { try session.start(timeoutMs: configuration.connectTimeoutMs) } catch {
            session.stop()
            throw error
        }
        return session
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Join the partition and serve it until SIGTERM (the default subcommand).",
        discussion: "Exits non-zero when the host goes away, unless --reconnect (or reconnect = true) makes it wait and rejoin.")

    @OptionGroup var common: CommonOptions

    @Flag(help: "When the host goes away, wait for it and rejoin.")
    var reconnect = false

    @Option(name: .customLong("serve-children"), help: ArgumentHelp(
        "Parent mode: create the child partitions FILE lists (hypercalls to this partition's hypervisor) and serve them, relaying their disks and NICs through this partition's own.",
        valueName: "FILE"))
    var serveChildren: String?

    @Flag(name: .customLong("no-enlightenments"),
          help: "Behave as a guest without integration components: no VMBus; only the emulated devices (IDE disks by PIO or PIIX4 bus-master DMA, DEC 21140 and NE2000 NICs), driven by port I/O traps.")
    var noEnlightenments = false

    func run() throws {
        var (configuration, logger) = try common.load()
        if reconnect { configuration.reconnect = true }
        if let serveChildren { configuration.serveChildren = serveChildren }
        // A children file that does not parse is an error before joining, not after.
        let childrenFile = try configuration.serveChildren.map { try ChildrenConfiguration.load(path: $0) }
        let stop = try EventFD()
        _ = viridianRouteSignals(stop)
        if noEnlightenments { return try runEmulated(configuration, logger, stop) }
        var watchdog = ServiceWatchdog()
        while true {
            let session: AgentSession
            watchdog.status("joining \(configuration.link)")
            do { session = try common.join(configuration, logger) } catch {
                guard configuration.reconnect else { throw error }
                logger.notice("\(error); retrying in \(configuration.reconnectIntervalMs) ms")
                watchdog.status("waiting for the host at \(configuration.link)")
                watchdog.pet()
                if waitOrStop(stop, ms: configuration.reconnectIntervalMs) { return }
                continue
            }
            for d in session.devices() { logger.info("\(d.lsvmbusLine)") }
            do { try DeviceListState.record(session, stateDir: configuration.stateDir) } catch { logger.warning("\(error)") }
            defer { DeviceListState.remove(stateDir: configuration.stateDir) }
            let drivers: [ICClient]
            let adapters = Mutex<[GuestAdapter]>([])
            do { drivers = try session.serveIntegrationServices(configuration, adapters: { adapters.withLock { $0 } }) } catch {
                session.stop()
                guard configuration.reconnect else { throw error }
                logger.notice("\(error); rejoining")
                continue
            }
            var disks: DiskExporter?
            if configuration.storage {
                do {
                    disks = try DiskExporter(session: session, directory: configuration.exportDir, stateDir: configuration.stateDir,
                                             timeoutMs: configuration.connectTimeoutMs,
                                             vcpusPerSubChannel: configuration.storageVCPUsPerSubChannel)
                    try disks?.rescan()
                } catch {
                    logger.error("storage: \(error)")
                }
            }
            defer { disks?.stop() }
            let children = try childrenFile.map {
                try ChildPartitionHost(session: session, configuration: $0, stateDir: configuration.stateDir, logger: logger)
            }
            var network: NetworkAttachments?
            if configuration.network {
                network = NetworkAttachments(session: session, tapPattern: configuration.nicTap, netns: configuration.nicNetns,
                                             stateDir: configuration.stateDir, timeoutMs: configuration.connectTimeoutMs)
                network?.relayed = children?.relayedNICs ?? [:]
                do { try network?.attach() } catch { logger.error("network: \(error)") }
            }
            defer { network?.stop() }
            // Children stop before the devices they relay through.
            defer { children?.stop() }
            do { try children?.start(disks: disks, nics: network?.list ?? []) } catch {
                children?.stop()
                throw AgentError.configuration("serving child partitions: \(error)")
            }
            func recordAdapters(_ nics: [NICInfo]) {
                adapters.withLock { $0 = nics.map { GuestAdapter(interface: $0.tap, mac: $0.mac, instance: $0.instance, netns: $0.netns) } }
            }
            recordAdapters(network?.list ?? [])
            systemdNotify("READY=1")
            watchdog.status("joined partition \(session.link.partitionName) with \(session.devices().count) devices")
            // Serve until a stop signal or the host going away; each pass proves the agent alive.
            while !waitOrStop(stop, ms: 200) {
                if session.hostLost != nil { break }
                session.pet()
                // One read of the NICs per pass serves their state file and KVP's adapter list.
                let nics = network?.list ?? []
                try? network?.record(nics)
                recordAdapters(nics)
                session.withBus { _ in for d in drivers { d.service.tick(now: viridian_now_ns()) } }
                if let children {
                    let report = ChildPartitionHost.kvpRecords(children.record())
                    session.publishedKVP.withLock { $0 = report }
                }
                if let disks, waitOrStop(disks.busChanged, ms: 0) {
                    disks.busChanged.wait()
                    do { try disks.rescan() } catch { logger.error("storage: rescan failed: \(error)") }
                }
                watchdog.pet()
            }
            // A stop signal during the host's shutdown request (the action itself stops this service):
            // the answer goes out before the agent leaves the bus.
            if !ShutdownService.waitForAnswers(timeoutMs: 10_000) { logger.warning("shutdown: the answer to the host is still pending; leaving") }
            // Nothing a request began outlives the channel: frozen file systems thaw, partial copies go.
            for d in drivers { d.service.channelClosed() }
            withExtendedLifetime(drivers) {}
            if let lost = session.hostLost {
                session.stop()
                guard configuration.reconnect else {
                    throw AgentError.hostGone("the host closed partition link \(configuration.link): \(lost)")
                }
                logger.notice("host went away (\(lost)); waiting to rejoin")
                continue
            }
            session.leave()
            return
        }
    }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the partition's VMBus devices, like lsvmbus.",
        discussion: """
            Joins the partition for the listing and leaves it with UNLOAD; the partition must not have another agent attached. \
            With --running, shows the devices the running agent joined with instead (from its state directory).
            """)

    @OptionGroup var common: CommonOptions

    @Flag(help: "Show the running agent's devices (recorded in state_dir) instead of joining.")
    var running = false

    @Flag(name: .shortAndLong, help: "Show instance ids, relids, connection ids and state.")
    var verbose = false

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let (configuration, logger) = try common.load()
        let devices: [DeviceInfo]
        var version: VMBusVersion?
        if running {
            let path = DeviceListState.statePath(configuration.stateDir)
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationError("no running agent recorded its devices (\(path) is missing)")
            }
            devices = try JSONDecoder().decode([DeviceInfo].self, from: data)
        } else {
            let session = try common.join(configuration, logger)
            devices = session.devices()
            version = session.withBus { $0.version }
            session.leave()
        }
        if json {
            try printJSON(devices)
            return
        }
        if verbose, let version { print("VMBus version \(version) (\(version.linuxName))") }
        for d in devices {
            print(d.lsvmbusLine)
            if verbose {
                print("\tDevice_ID = {\(d.instanceID)}")
                print("\tRel_ID=\(d.relid), connection_id=0x\(String(d.connectionID, radix: 16)), sub_channel=\(d.subChannelIndex), state=\(d.state)"
                      + (d.targetVP.map { ", target_vp=\($0)" } ?? ""))
            }
        }
    }
}

struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Exchange packets with the host's echo devices and check every byte.",
        discussion: "Channel i targets VP i mod VPs. Exits non-zero on any mismatch.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Packets in total.")
    var packets: Int = 100_000

    @Option(help: "Payload bytes per packet (at least 8).")
    var payload: Int = 256

    @Option(help: "Echo channels to use.")
    var channels: Int = 1

    @Option(help: "Pages per ring (each direction, control page included).")
    var ringPages: Int = 32

    @Flag(help: "Print the report as JSON.")
    var json = false

    func validate() throws {
        guard packets >= 1, channels >= 1, (8...65536).contains(payload), ringPages >= 2 else {
            throw ValidationError("need --packets ≥ 1, --channels ≥ 1, --payload 8…65536, --ring-pages ≥ 2")
        }
        guard payload + 64 < (ringPages - 1) * 4096 else { throw ValidationError("--payload does not fit a ring of --ring-pages") }
    }

    func run() throws {
        let (configuration, logger) = try common.load()
        let session = try common.join(configuration, logger)
        let report: EchoReport
        do { report = try session.echo(packets: packets, payloadBytes: payload, channels: channels, ringPages: ringPages) } catch {
            session.stop()
            throw error
        }
        session.leave()
        if json {
            try printJSON(report)
        } else {
            print("echo: \(report.completions)/\(report.packets) packets of \(report.payloadBytes) B, \(report.mismatches) mismatches, "
                  + String(format: "%.0f packets/s", report.packetsPerSecond))
            for c in report.channels { print("  relid \(c.relid) on VP \(c.targetVP): \(c.completions) completions") }
            print("  interrupts per VP: \(report.interruptsPerVP.map(String.init).joined(separator: " "))")
        }
        if report.mismatches > 0 || report.completions != report.packets { throw ExitCode.failure }
    }
}

/// Waits up to `ms` for the stop doorbell; true if it rang.
func waitOrStop(_ stop: EventFD, ms: Int) -> Bool { stop.poll(timeoutMs: ms) }

struct KVPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvp",
        abstract: "Show the key-value pools as this guest holds them (no host needed).",
        discussion: "external: set by the host; guest: published by this guest; auto: this guest's intrinsic items, read now.")

    @Argument(help: "list") var action: String = "list"
    @Option(help: "Pool: external, guest or auto.") var pool: String = "external"
    @Option(help: "Configuration file (for state_dir and interface patterns).") var config: String?
    @Option(help: "State directory (overrides state_dir).") var stateDir: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard action == "list" else { throw ValidationError("the only action is list") }
        guard ["external", "guest", "auto"].contains(pool) else { throw ValidationError("--pool must be external, guest or auto") }
    }

    func run() throws {
        let configuration = try AgentConfiguration.load(path: config)
        let directory = (stateDir ?? configuration.stateDir) + "/kvp"
        let items: [KVPRecord]
        switch pool {
        case "auto": items = IntrinsicData(include: configuration.kvpInterfacesInclude, exclude: configuration.kvpInterfacesExclude).records()
        case "guest": items = (try? KVPStore.read(directory: directory, pool: .guest)) ?? []
        default: items = (try? KVPStore.read(directory: directory, pool: .external)) ?? []
        }
        if json {
            try printJSON(Dictionary(items.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a }))
        } else {
            for item in items { print("\(item.key)=\(item.value)") }
        }
    }
}

/// Monotonic microseconds.
func viridianNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
}

extension Run {
    /// The guest without enlightenments: join the partition, never touch VMBus, drive the legacy devices.
    func runEmulated(_ configuration: AgentConfiguration, _ logger: Logger, _ stop: EventFD) throws {
        let link: any GuestPlatform
        do { link = try GuestCarrier.join(configuration.link, poolMiB: configuration.bufferPoolMiB, logger: logger) } catch {
            throw AgentError.hostGone("cannot join \(configuration.link): \(error)")
        }
        let lost = try EventFD()
        link.startMonitor { _ in lost.ring() }
        logger.info("joined partition \(link.partitionName) without enlightenments (emulated devices only)")
        let guest = EmulatedGuest(link: link, logger: logger)
        defer {
            guest.stop()
            link.detach()
        }
        try guest.start(exportDir: configuration.exportDir, stateDir: configuration.stateDir,
                        tapPattern: configuration.nicTap, netns: configuration.nicNetns)
        systemdNotify("READY=1")
        while !waitOrStop(stop, ms: 200) {
            if waitOrStop(lost, ms: 0) { throw AgentError.hostGone("the host closed partition link \(configuration.link)") }
        }
    }
}

struct DiskCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk",
        abstract: "List the synthetic SCSI LUNs the running agent exports over NBD.",
        discussion: "Use an export with any NBD client, e.g. nbdfuse MOUNTPOINT --unix SOCKET, or nbdinfo 'nbd+unix:///?socket=SOCKET'.")

    @OptionGroup var options: StateListOptions

    func run() throws {
        let exports = try options.read([DiskExport].self, file: DiskExporter.statePath, missing: "no disks exported (is viridian-agent run active?")
        if options.json {
            try printJSON(exports)
            return
        }
        print("controller  lun  size        access  export")
        for e in exports {
            let size = "\(e.sizeBytes >> 20) MiB".padding(toLength: 12, withPad: " ", startingAt: 0)
            print(String(e.controller).padding(toLength: 12, withPad: " ", startingAt: 0) + String(e.lun).padding(toLength: 5, withPad: " ", startingAt: 0)
                  + size + (e.readOnly ? "ro      " : "rw      ") + "nbd+unix:///?socket=\(e.export)")
        }
    }
}

struct NICCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nic",
        abstract: "List the synthetic NICs the running agent bridges to guest TAP devices.",
        discussion: "Each NIC is a TAP (nic_tap, default viridian%d) with the MAC and MTU the host gives; its carrier follows the host's link state.")

    @OptionGroup var options: StateListOptions

    func run() throws {
        let nics = try options.read([NICInfo].self, file: NetworkAttachments.statePath,
                                    missing: "no NICs (is viridian-agent run active with network = true?")
        if options.json {
            try printJSON(nics)
            return
        }
        print("nic  tap              mac                mtu   carrier  nvsp")
        for n in nics {
            print(String(n.index).padding(toLength: 5, withPad: " ", startingAt: 0) + n.tap.padding(toLength: 17, withPad: " ", startingAt: 0)
                  + n.mac.padding(toLength: 19, withPad: " ", startingAt: 0) + String(n.mtu).padding(toLength: 6, withPad: " ", startingAt: 0)
                  + (n.carrier ? "up       " : "down     ") + n.nvspVersion)
        }
    }
}

struct ChildrenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "children",
        abstract: "List the child partitions the running agent hosts (run --serve-children), with what it relays for each.",
        discussion: "Each child is a partition this one created through the hypercall API; its agent joins on the socket shown. Its disks and NICs are this partition's, relayed.")

    @OptionGroup var options: StateListOptions

    func run() throws {
        let children = try options.read([HostedChildStatus].self, file: ChildPartitionHost.statePath,
                                        missing: "no child partitions (is viridian-agent run active with --serve-children?")
        if options.json {
            try printJSON(children)
            return
        }
        for c in children {
            let p = c.partition
            print("child \(c.name) id \(c.id): \(p.state)" + (p.guest.map { " (\($0))" } ?? "") + ", \(c.vps) VP(s), \(p.memoryMiB) MiB, socket \(c.socket)")
            print("  devices: " + p.channels.map { "\($0.device)[\($0.state)]" }.joined(separator: " "))
            for d in c.relayedDisks {
                print("  \(d.label): \(d.requests) requests, read \(d.bytesRead) B, written \(d.bytesWritten) B, errors \(d.errors)")
            }
            for (n, r) in zip(p.nics ?? [], c.relayedNICs) {
                print("  NIC \(n.index) \(n.mac) (\(r.label)): rx \(n.rxFrames) frames / \(n.rxBytes) B, tx \(n.txFrames) frames / \(n.txBytes) B, relay drops \(r.dropsUp)/\(r.dropsDown)")
            }
        }
    }
}

/// Prints `value` as sorted, indented JSON.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// The options of the `list` commands that show what the running agent recorded in its state directory.
struct StateListOptions: ParsableArguments {
    @Argument(help: "list") var action: String = "list"
    @Option(help: "Configuration file (for state_dir).") var config: String?
    @Option(help: "State directory (overrides state_dir).") var stateDir: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard action == "list" else { throw ValidationError("the only action is list") }
    }

    /// Reads the state file `file(stateDir)`; `missing` (an open parenthesis) explains its absence.
    func read<T: Decodable>(_ type: T.Type, file: (String) -> String, missing: String) throws -> T {
        let configuration = try AgentConfiguration.load(path: config)
        let path = file(stateDir ?? configuration.stateDir)
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(missing) \(path) is missing)") }
        return try JSONDecoder().decode(type, from: data)
    }
}
