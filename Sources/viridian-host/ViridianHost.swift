// viridian-host: the user-space VMM (hypervisor and root partition). Command line only.

import ArgumentParser
import Foundation
import Logging
import HostRuntime
import IntegrationServices
import Loopback
import VMBusWire

@main
struct ViridianHost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viridian-host",
        abstract: "Viridian's VMM: partitions, SynIC, hypercalls, the VMBus server and its devices.",
        version: ViridianVersion.current,
        subcommands: [Run.self, Status.self, Shutdown.self, Reboot.self, Hibernate.self, KVP.self, Backup.self, CopyFile.self, Disk.self, NIC.self, Demo.self,
                      Worker.self])
}

/// The partition worker `run` starts for each partition (isolation = "process"); not for users.
struct Worker: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve one partition for a supervising `viridian-host run` (descriptors 3–5 from it).", shouldDisplay: false)

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        guard fcntl(3, F_GETFD) >= 0 else {
            throw ValidationError("viridian-host worker is started by `viridian-host run`, which hands it its partition")
        }
        let code = PartitionWorker.run(logger: logging.makeLogger("viridian.host", default: .notice))
        if code != 0 { throw ExitCode(code) }
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve partitions: one PartitionLink socket per partition, a control socket for status.",
        discussion: """
            Without --config the embedded default runs partition "guest1" (64 MiB, 2 VPs, one echo \
            device) at unix:/run/viridian/guest1.sock (root) or unix:/tmp/viridian-UID/guest1.sock. \
            SIGTERM or SIGINT: channels are rescinded, agents told, sockets removed. The configuration \
            keys are listed in README ("Host configuration").
            """)

    @Option(help: "Configuration file (TOML).")
    var config: String?

    @Option(help: "Write every channel message and ring packet header to FILE as JSON lines.")
    var trace: String?

    @Option(help: "Directory for sockets (overrides runtime_dir).")
    var runtimeDir: String?

    @Option(help: "Directory for default disk images (overrides image_dir).")
    var imageDir: String?

    @Option(help: "process: each partition in a confined worker process (the default); none: threads of this process. Overrides isolation.")
    var isolation: String?

    @Flag(help: "Print the effective configuration as TOML-like text and exit.")
    var printConfig = false

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        var configuration = try config.map { try HostConfiguration.load(path: $0) } ?? .embeddedDefault
        if let runtimeDir { configuration.runtimeDir = runtimeDir }
        if let imageDir { configuration.imageDir = imageDir }
        if let isolation {
            configuration.isolation = isolation
            try configuration.validate()
        }
        if printConfig {
            print("isolation = \"\(configuration.isolated ? "process" : "none")\"")
            print("runtime_dir = \"\(configuration.resolvedRuntimeDir)\"")
            for p in configuration.partition {
                print("[[partition]] name = \"\(p.name)\" memory_mib = \(p.memoryMiB) vps = \(p.vps) echo_devices = \(p.echoDevices) socket = \"\(configuration.socketPath(for: p))\"")
            }
            return
        }
        let logger = logging.makeLogger("viridian.host", default: .notice)
        let host = try ViridianHostService(configuration: configuration, tracePath: trace, logger: logger)
        try host.run()
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show partitions, VPs and channels of a running host.")

    @Option(help: "Configuration file of the running host (to find its control socket).")
    var config: String?

    @Option(help: "Directory for sockets (overrides runtime_dir).")
    var runtimeDir: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        var configuration = try config.map { try HostConfiguration.load(path: $0) } ?? .embeddedDefault
        if let runtimeDir { configuration.runtimeDir = runtimeDir }
        let status = try ViridianHostService.queryStatus(controlPath: configuration.controlSocketPath)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(status), as: UTF8.self))
        } else {
            print(status.table())
        }
    }
}

/// Options shared by subcommands.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: notice for run, warning otherwise).")
    var logLevel: Logger.Level?

    func makeLogger(_ label: String, default level: Logger.Level = .warning) -> Logger {
        var logger = Logger(label: label) { SystemdLogHandler.standardError(label: $0) }
        logger.logLevel = logLevel ?? level
        return logger
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run host and guest in one process: negotiate, offer, open a channel, echo packets, close, rescind.",
        discussion: "Everything runs in memory over a memfd-backed guest address space; no privileges needed.")

    @Option(help: "Virtual processors of the partition (the echo channel targets the last one).")
    var vps: Int = 2

    @Option(name: .customLong("memory-mib"), help: "Guest memory in MiB.")
    var memoryMiB: Int = 64

    @Option(help: "VMBus versions the guest tries, newest first, e.g. 5.3,4.0 (default: Linux's list).")
    var versions: String?

    @Option(help: "Packets to echo.")
    var packets: Int = 10_000

    @Option(help: "Payload bytes per packet (at least 8).")
    var payload: Int = 256

    @Option(help: "Pages per ring (send and receive each, control page included).")
    var ringPages: Int = 64

    @Flag(help: "Print the report as JSON.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (1...64).contains(vps) else { throw ValidationError("--vps must be 1…64") }
        guard memoryMiB >= 4 else { throw ValidationError("--memory-mib must be at least 4") }
        guard packets >= 1 else { throw ValidationError("--packets must be at least 1") }
        guard (8...65536).contains(payload) else { throw ValidationError("--payload must be 8…65536") }
        guard ringPages >= 2 else { throw ValidationError("--ring-pages must be at least 2") }
        guard payload + 64 < (ringPages - 1) * 4096 else { throw ValidationError("--payload does not fit a ring of --ring-pages") }
    }

    func run() throws {
        var options = LoopbackDemoOptions()
        options.vpCount = vps
        options.memoryMiB = memoryMiB
        options.packets = packets
        options.payloadBytes = payload
        options.ringPages = ringPages
        if let versions {
            options.versions = try versions.split(separator: ",").map { text in
                do { return try VMBusVersion(parsing: text) } catch { throw ValidationError("bad version '\(text)': use MAJOR.MINOR, e.g. 5.3") }
            }
        }
        let report = try LoopbackDemo.run(options, logger: logging.makeLogger("viridian.host"))
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(render(report))
        }
        if report.mismatches > 0 || report.completions != UInt64(report.packets) { throw ExitCode.failure }
    }

    func render(_ r: LoopbackDemoReport) -> String {
        var lines = [
            "VMBus loopback: 1 partition, \(r.vpCount) VP(s), \(r.memoryMiB) MiB guest memory",
            "negotiated VMBus \(r.version) (\(r.versionName))",
            "",
            "relid  device                     class id                              instance id",
        ]
        for o in r.offers {
            lines.append("\(o.relid.description.padding(toLength: 7, withPad: " ", startingAt: 0))"
                + "\(o.deviceClass.padding(toLength: 27, withPad: " ", startingAt: 0))\(o.classID)  \(o.instanceID)")
        }
        lines += [
            "",
            "echo: \(r.packets) packets of \(r.payloadBytes) B sent, \(r.completions) completions, \(r.mismatches) mismatches",
            "signals: guest→host \(r.guestToHostSignals), host→guest \(r.hostToGuestSignals); interrupts \(r.interrupts); hypercalls \(r.hypercalls); channel messages \(r.channelMessages)",
            "close + GPADL teardown: \(r.closedAndTornDown ? "ok" : "FAILED"); rescind + RELID_RELEASED: \(r.rescinded ? "ok" : "FAILED")",
        ]
        return lines.joined(separator: "\n")
    }
}

/// Where a running host's control socket is.
struct HostAddress: ParsableArguments {
    @Option(help: "Configuration file of the running host (to find its control socket).")
    var config: String?

    @Option(help: "Directory for sockets (overrides runtime_dir).")
    var runtimeDir: String?

    func controlPath() throws -> String {
        var configuration = try config.map { try HostConfiguration.load(path: $0) } ?? .embeddedDefault
        if let runtimeDir { configuration.runtimeDir = runtimeDir }
        return configuration.controlSocketPath
    }

    /// Sends a request and turns the reply into output and an exit code.
    func send(_ request: ControlRequest) throws -> ControlReply {
        let data = try ViridianHostService.send(request, controlPath: try controlPath())
        guard let reply = try? JSONDecoder().decode(ControlReply.self, from: data) else {
            throw ValidationError("unreadable reply from viridian-host")
        }
        return reply
    }

    /// Sends `request` and returns the reply; a refusal is printed as `viridian-host COMMAND: why`
    /// and ends the program with a failure status.
    func require(_ request: ControlRequest, command: String) throws -> ControlReply {
        let reply = try send(request)
        guard reply.ok else {
            FileHandleStandardError.write("viridian-host \(command): \(reply.error ?? "failed")\n")
            throw ExitCode.failure
        }
        return reply
    }
}

/// shutdown / reboot / hibernate share everything but the kind.
protocol PowerCommand: ParsableCommand {
    static var kind: String { get }
    var partition: String { get }
    var force: Bool { get }
    var reason: String? { get }
    var address: HostAddress { get }
}

extension PowerCommand {
    func run() throws {
        _ = try address.require(ControlRequest(op: "shutdown", partition: partition, kind: Self.kind, force: force, reason: reason), command: Self.kind)
        print("\(partition): guest accepted \(Self.kind)")
    }
}

struct Shutdown: PowerCommand {
    static let kind = "poweroff"
    static let configuration = CommandConfiguration(abstract: "Ask a partition's guest to power off (shutdown integration service).")
    @Argument(help: "Partition name.") var partition: String
    @Flag(help: "Ask for a forced shutdown.") var force = false
    @Option(help: "Reason shown to the guest.") var reason: String?
    @OptionGroup var address: HostAddress
}

struct Reboot: PowerCommand {
    static let kind = "reboot"
    static let configuration = CommandConfiguration(abstract: "Ask a partition's guest to reboot.")
    @Argument(help: "Partition name.") var partition: String
    @Flag(help: "Ask for a forced reboot.") var force = false
    @Option(help: "Reason shown to the guest.") var reason: String?
    @OptionGroup var address: HostAddress
}

struct Hibernate: PowerCommand {
    static let kind = "hibernate"
    static let configuration = CommandConfiguration(abstract: "Ask a partition's guest to hibernate.")
    @Argument(help: "Partition name.") var partition: String
    @Flag(help: "Ask for a forced hibernation.") var force = false
    @Option(help: "Reason shown to the guest.") var reason: String?
    @OptionGroup var address: HostAddress
}

struct KVP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvp",
        abstract: "Key-value exchange with a partition's guest, and its adapters' IP configuration.",
        discussion: """
            get PARTITION [KEY]      the guest's intrinsic items (FullyQualifiedDomainName, OSName, …)
            set PARTITION KEY VALUE  set a key in the external pool (host → guest)
            delete PARTITION KEY     delete a key from the external pool
            list PARTITION           the external pool as the guest holds it
            set-ip PARTITION NIC --address A/PREFIX … [--gateway G …] [--dns S …] | --dhcp
                                     configure the guest adapter (NIC: its MAC, index or host TAP name)
                                     through the guest's network manager (IP injection)
            get-ip PARTITION NIC     the adapter's addresses, gateways, DNS servers and DHCP state
            """)

    @Argument(help: "get, set, delete, list, set-ip or get-ip.") var action: String
    @Argument(help: "Partition name.") var partition: String
    @Argument(help: "Key (get: optional); set-ip/get-ip: the NIC.") var key: String?
    @Argument(help: "Value (set).") var value: String?
    @Option(name: .customLong("address"), help: "set-ip: an address with its prefix length (10.0.0.2/24, fd00::2/64); repeat for more.")
    var addresses: [String] = []
    @Option(name: .customLong("gateway"), help: "set-ip: a default gateway; repeat for more.") var gateways: [String] = []
    @Option(name: .customLong("dns"), help: "set-ip: a DNS server; repeat for more.") var dns: [String] = []
    @Flag(help: "set-ip: hand the adapter to DHCP instead.") var dhcp = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var address: HostAddress

    static let actions = ["get", "set", "delete", "list", "set-ip", "get-ip"]

    func validate() throws {
        guard Self.actions.contains(action) else { throw ValidationError("action must be one of \(Self.actions.joined(separator: ", "))") }
        if action == "set" && (key == nil || value == nil) { throw ValidationError("kvp set needs KEY and VALUE") }
        if action == "delete" && key == nil { throw ValidationError("kvp delete needs KEY") }
        if action.hasSuffix("-ip") && key == nil { throw ValidationError("kvp \(action) needs the NIC (MAC, index or host TAP name)") }
        if action == "set-ip" {
            guard dhcp || !addresses.isEmpty else { throw ValidationError("kvp set-ip needs --address A/PREFIX (or --dhcp)") }
            _ = try ipInfo()
        }
    }

    /// The --address list split into addresses and the subnets KVP carries (dotted masks for IPv4).
    func ipInfo() throws -> ControlIPInfo {
        var info = ControlIPInfo(dhcp: dhcp, gateways: gateways, dns: dns)
        for a in addresses {
            let parts = a.split(separator: "/", maxSplits: 1).map(String.init)
            let v6 = parts[0].contains(":")
            guard parts.count == 2, let prefix = Int(parts[1]), (0...(v6 ? 128 : 32)).contains(prefix) else {
                throw ValidationError("--address \(a): give ADDRESS/PREFIX, e.g. 10.0.0.2/24")
            }
            info.addresses.append(parts[0])
            info.subnets.append(v6 ? String(prefix) : IPPlan.mask(prefix))
        }
        return info
    }

    func run() throws {
        if action.hasSuffix("-ip") { return try runIP() }
        let reply = try address.require(ControlRequest(op: "kvp", partition: partition, action: action, key: key, value: value), command: "kvp \(action)")
        let items = reply.items ?? []
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(Dictionary(items.map { ($0[0], $0[1]) }, uniquingKeysWith: { a, _ in a })), as: UTF8.self))
        } else if action == "get" && key != nil {
            if let value = items.first?.last { print(value) }
        } else {
            for item in items { print("\(item[0])=\(item[1])") }
        }
    }

    func runIP() throws {
        let request = ControlRequest(op: "kvp", partition: partition, action: action, nic: key, ip: action == "set-ip" ? try ipInfo() : nil)
        let reply = try address.require(request, command: "kvp \(action)")
        guard action == "get-ip", let ip = reply.ip else { return print("\(partition): \(key ?? "") configured") }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            return print(String(decoding: try encoder.encode(ip), as: UTF8.self))
        }
        print("dhcp=\(ip.dhcp ? "yes" : "no")")
        for (a, s) in zip(ip.addresses, ip.subnets) { print("address=\(a) \(s)") }
        for g in ip.gateways { print("gateway=\(g)") }
        for d in ip.dns { print("dns=\(d)") }
    }
}

struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Freeze or thaw a partition's guest file systems around a backup (VSS integration service).",
        discussion: """
            freeze PARTITION   the guest freezes every writable local file system (FIFREEZE) and answers when done
            thaw PARTITION     the guest thaws them
            check PARTITION    asks whether the guest can take part in a backup (HOT_BACKUP) and shows its flags
            A guest left frozen thaws by itself after its backup_thaw_timeout_s (default 15 minutes).
            """)

    @Argument(help: "freeze, thaw or check.") var action: String
    @Argument(help: "Partition name.") var partition: String
    @OptionGroup var address: HostAddress

    func validate() throws {
        guard ["freeze", "thaw", "check"].contains(action) else { throw ValidationError("action must be freeze, thaw or check") }
    }

    func run() throws {
        let reply = try address.require(ControlRequest(op: "backup", partition: partition, action: action), command: "backup \(action)")
        switch action {
        case "freeze": print("\(partition): guest file systems frozen")
        case "thaw": print("\(partition): guest file systems thawed")
        default: print("\(partition): the guest can take part in backups (flags \(reply.flags ?? "?"))")
        }
    }
}

struct CopyFile: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy-file",
        abstract: "Copy a host file into a partition's guest (the guest services integration service, as Copy-VMFile).",
        discussion: """
            DEST is an absolute path in the guest, inside a directory its agent allows (fcopy_directories; \
            by default /var/lib/viridian/incoming). The file arrives whole or not at all, with the source's \
            permission bits. Interrupting the copy cancels it in the guest.
            """)

    @Argument(help: "Partition name.") var partition: String
    @Argument(help: "The host file to copy.") var source: String
    @Argument(help: "Absolute path of the file in the guest.") var destination: String
    @Flag(help: "Replace the guest file if it exists.") var overwrite = false
    @Flag(help: "Create missing directories on the way.") var createPath = false
    @OptionGroup var address: HostAddress

    func validate() throws {
        guard destination.hasPrefix("/"), !destination.hasSuffix("/") else { throw ValidationError("DEST must be an absolute path to a file in the guest") }
    }

    func run() throws {
        let path = URL(fileURLWithPath: source).standardizedFileURL.path
        guard FileManager.default.isReadableFile(atPath: path) else { throw ValidationError("cannot read \(source)") }
        let request = ControlRequest(op: "copy-file", partition: partition, path: path, destination: destination,
                                     overwrite: overwrite, createPath: createPath)
        let interactive = isatty(2) != 0
        var shown = -1
        let data = try ViridianHostService.send(request, controlPath: try address.controlPath()) { p in
            guard p.total > 0 else { return }
            let percent = Int(min(p.progress, p.total) * 100 / p.total)
            // A terminal gets every percent on one line; a log a line each time another 10 % is done.
            guard interactive ? percent != shown : percent / 10 > shown / 10 || shown < 0 else { return }
            shown = percent
            let line = "\(partition): \(String(format: "%.1f", Double(p.progress) / 1048576)) of \(String(format: "%.1f", Double(p.total) / 1048576)) MiB (\(percent) %)"
            FileHandleStandardError.write(interactive ? "\r" + line : line + "\n")
        }
        if interactive && shown >= 0 { FileHandleStandardError.write("\n") }
        guard let reply = try? JSONDecoder().decode(ControlReply.self, from: data) else { throw ValidationError("unreadable reply from viridian-host") }
        guard reply.ok else {
            FileHandleStandardError.write("viridian-host copy-file: \(reply.error ?? "failed")\n")
            throw ExitCode.failure
        }
        print("\(partition): \(source) → \(destination) (\(reply.bytes ?? 0) bytes)")
    }
}

/// Writes to standard error.
enum FileHandleStandardError {
    static func write(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }
}

struct Disk: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hot add or remove a LUN on a partition's synthetic SCSI controller.",
        discussion: """
            add PARTITION PATH [--read-only] [--size-mib N]   serve image PATH as the next free LUN (created if missing)
            remove PARTITION LUN                              withdraw a LUN
            The guest is told to rescan (ENUMERATE_BUS); a running agent adds or removes its NBD export.
            """)

    @Argument(help: "add or remove.") var action: String
    @Argument(help: "Partition name.") var partition: String
    @Argument(help: "add: image path; remove: LUN number.") var target: String
    @Flag(help: "add: serve the image read-only.") var readOnly = false
    @Option(help: "add: size of a created image in MiB.") var sizeMib: Int = 64
    @OptionGroup var address: HostAddress

    func validate() throws {
        guard action == "add" || action == "remove" else { throw ValidationError("action must be add or remove") }
        if action == "remove" && Int(target) == nil { throw ValidationError("disk remove needs a LUN number") }
        guard sizeMib >= 1 else { throw ValidationError("--size-mib must be at least 1") }
    }

    func run() throws {
        let path = action == "add" ? URL(fileURLWithPath: target).standardizedFileURL.path : nil
        let reply = try address.require(ControlRequest(op: "disk", partition: partition, action: action, path: path,
                                                    readOnly: readOnly, sizeMiB: sizeMib, lun: action == "remove" ? Int(target) : nil), command: "disk \(action)")
        print(action == "add" ? "\(partition): \(target) is LUN \(reply.lun ?? -1)" : "\(partition): LUN \(target) removed")
    }
}

struct NIC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nic",
        abstract: "Change a partition's synthetic network adapter.",
        discussion: """
            link PARTITION NIC up|down   set the adapter's link; NIC is its index (0, 1, …) or its host TAP name
            The guest is told (RNDIS MEDIA_CONNECT / MEDIA_DISCONNECT) and its TAP's carrier follows;
            while the link is down no frames pass either way. `viridian-host status` shows the state.
            """)

    @Argument(help: "link.") var action: String
    @Argument(help: "Partition name.") var partition: String
    @Argument(help: "The adapter: index or host TAP name.") var nic: String
    @Argument(help: "up or down.") var state: String
    @OptionGroup var address: HostAddress

    func validate() throws {
        guard action == "link" else { throw ValidationError("action must be link") }
        guard state == "up" || state == "down" else { throw ValidationError("state must be up or down") }
    }

    func run() throws {
        _ = try address.require(ControlRequest(op: "nic", partition: partition, action: action, nic: nic, up: state == "up"), command: "nic link")
        print("\(partition): NIC \(nic) link \(state)")
    }
}
