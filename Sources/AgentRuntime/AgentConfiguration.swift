// viridian-agent's configuration file (/etc/viridian/agent.toml), every option with its default.

import Foundation
import TOMLKit
import TOMLSafety
import VMBusWire

/// The agent's settings. Command-line options override the file; the file overrides defaults.
///
/// ```toml
/// link = "unix:/run/viridian/guest1.sock"  # how to reach the partition: unix:PATH (PartitionLink), "kernelglue" (the
///                                          # first /dev/viridian-glue* in a QEMU guest) or a KernelGlue device path
/// reconnect = false                        # wait for the host and rejoin when it goes away
/// reconnect_interval_ms = 500              # pause between reconnect attempts
/// connect_timeout_ms = 10000               # how long to wait for VMBus negotiation and offers
/// log_level = "info"                       # trace, debug, info, notice, warning, error, critical
/// versions = ["5.3", "5.2", "5.1", "5.0", "4.1", "4.0", "3.0", "2.4"]  # VMBus versions to try, newest first
/// integration_services = ["heartbeat", "timesync", "shutdown", "kvp", "vss", "fcopy"]  # which IC channels to serve
/// health_window_ms = 3000                  # heartbeats are answered only if the main loop ran this recently
/// timesync = "chrony"                      # "chrony" (SOCK refclock), "clock" (discipline the system clock), "off"
/// chrony_socket = "/run/chrony/viridian.sock"  # chrony: refclock SOCK path
/// clock_step_threshold_ms = 1000           # clock mode: step when off by more, slew otherwise
/// poweroff_command = "systemctl poweroff --no-block"  # shutdown actions, run with /bin/sh -c (the answer waits for them)
/// reboot_command = "systemctl reboot --no-block"
/// hibernate_command = "systemctl hibernate --no-block"
/// state_dir = "/var/lib/viridian/agent"    # KVP pools live in <state_dir>/kvp
/// kvp_interfaces_include = ["*"]           # interfaces whose addresses KVP reports (shell patterns)
/// kvp_interfaces_exclude = ["docker*", "veth*", "virbr*", "lo"]
/// ip_config = "auto"                       # KVP SET_IP_INFO through "networkmanager", "networkd", "iproute2" or "auto"
/// resolv_conf = "/etc/resolv.conf"         # iproute2: where SET_IP_INFO's DNS servers go
/// backup_mount_points = []                 # VSS: freeze only these mount points (empty: every writable block-device file system)
/// backup_thaw_timeout_s = 900              # VSS: thaw by itself when the host sends no THAW within this (Linux's 15 minutes)
/// fcopy_directories = ["/var/lib/viridian/incoming"]  # FCOPY: the only directories the host may copy files into
/// storage = true                           # export the synthetic SCSI LUNs over NBD
/// export_dir = "/run/viridian/disks"       # NBD sockets: <export_dir>/scsi<relid>-lun<n>.sock
/// storage_vcpus_per_sub_channel = 4        # Linux's rule: one storage sub-channel per 4 VPs (1 = one per VP)
/// network = true                           # bridge each synthetic NIC to a guest TAP device (needs root)
/// nic_tap = "viridian%d"                   # guest TAP name per NIC; %d is the NIC's index
/// nic_netns = "guestside"                  # `ip netns` namespace for the guest TAPs (default: the agent's own)
/// buffer_pool_mib = 64                     # kernelglue: pinned guest pages for rings and buffers (4…256)
/// serve_children = "/etc/viridian/children.toml"  # parent mode: create and serve these child partitions (default: none)
/// ```
public struct AgentConfiguration: Codable, Sendable, Equatable {
    public var link: String
    public var reconnect: Bool
    public var reconnectIntervalMs: Int
    public var connectTimeoutMs: Int
    public var logLevel: String
    public var versions: [String]?
    public var integrationServices: [String]
    public var healthWindowMs: Int
    public var timesync: String
    public var chronySocket: String
    public var clockStepThresholdMs: Int
    public var poweroffCommand: String
    public var rebootCommand: String
    public var hibernateCommand: String
    public var stateDir: String
    public var kvpInterfacesInclude: [String]
    public var kvpInterfacesExclude: [String]
    public var storage: Bool
    public var exportDir: String
    public var storageVCPUsPerSubChannel: Int
    public var network: Bool
    public var nicTap: String
    public var nicNetns: String?
    /// MiB of pinned pages the agent takes from KernelGlue for rings and device buffers.
    public var bufferPoolMiB: Int
    /// Parent mode: the `ChildrenConfiguration` file of the partitions this one creates and serves.
    public var serveChildren: String?
    public var ipConfig: String
    public var resolvConf: String
    public var backupMountPoints: [String]
    public var backupThawTimeoutS: Int
    public var fcopyDirectories: [String]

    public static let knownIntegrationServices = ["heartbeat", "timesync", "shutdown", "kvp", "vss", "fcopy"]

    public static let defaultPoolMiB = 64

    public static let defaultPath = "/etc/viridian/agent.toml"

    public init() {
        link = getuid() == 0 ? "unix:/run/viridian/guest1.sock" : "unix:/tmp/viridian-\(getuid())/guest1.sock"
        reconnect = false
        reconnectIntervalMs = 500
        connectTimeoutMs = 10_000
        logLevel = "info"
        versions = nil
        integrationServices = Self.knownIntegrationServices
        healthWindowMs = 3000
        timesync = "chrony"
        chronySocket = "/run/chrony/viridian.sock"
        clockStepThresholdMs = 1000
        poweroffCommand = "systemctl poweroff --no-block"
        rebootCommand = "systemctl reboot --no-block"
        hibernateCommand = "systemctl hibernate --no-block"
        stateDir = getuid() == 0 ? "/var/lib/viridian/agent" : "/tmp/viridian-\(getuid())/state"
        kvpInterfacesInclude = ["*"]
        kvpInterfacesExclude = ["docker*", "veth*", "virbr*", "lo"]
        storage = true
        storageVCPUsPerSubChannel = 4
        network = true
        nicTap = "viridian%d"
        nicNetns = nil
        bufferPoolMiB = Self.defaultPoolMiB
        ipConfig = "auto"
        resolvConf = "/etc/resolv.conf"
        backupMountPoints = []
        backupThawTimeoutS = 900
        fcopyDirectories = ["/var/lib/viridian/incoming"]
        exportDir = getuid() == 0 ? "/run/viridian/disks" : "/tmp/viridian-\(getuid())/disks"
    }

    enum CodingKeys: String, CodingKey {
        case link, reconnect, versions
        case reconnectIntervalMs = "reconnect_interval_ms"
        case connectTimeoutMs = "connect_timeout_ms"
        case logLevel = "log_level"
        case integrationServices = "integration_services"
        case healthWindowMs = "health_window_ms"
        case timesync
        case chronySocket = "chrony_socket"
        case clockStepThresholdMs = "clock_step_threshold_ms"
        case poweroffCommand = "poweroff_command"
        case rebootCommand = "reboot_command"
        case hibernateCommand = "hibernate_command"
        case stateDir = "state_dir"
        case kvpInterfacesInclude = "kvp_interfaces_include"
        case kvpInterfacesExclude = "kvp_interfaces_exclude"
        case storage
        case exportDir = "export_dir"
        case storageVCPUsPerSubChannel = "storage_vcpus_per_sub_channel"
        case network
        case nicTap = "nic_tap"
        case nicNetns = "nic_netns"
        case bufferPoolMiB = "buffer_pool_mib"
        case serveChildren = "serve_children"
        case ipConfig = "ip_config"
        case resolvConf = "resolv_conf"
        case backupMountPoints = "backup_mount_points"
        case backupThawTimeoutS = "backup_thaw_timeout_s"
        case fcopyDirectories = "fcopy_directories"
    }

    public init(from decoder: any Decoder) throws {
        let defaults = AgentConfiguration()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        link = try c.decodeIfPresent(String.self, forKey: .link) ?? defaults.link
        reconnect = try c.decodeIfPresent(Bool.self, forKey: .reconnect) ?? defaults.reconnect
        reconnectIntervalMs = try c.decodeIfPresent(Int.self, forKey: .reconnectIntervalMs) ?? defaults.reconnectIntervalMs
        connectTimeoutMs = try c.decodeIfPresent(Int.self, forKey: .connectTimeoutMs) ?? defaults.connectTimeoutMs
        logLevel = try c.decodeIfPresent(String.self, forKey: .logLevel) ?? defaults.logLevel
        versions = try c.decodeIfPresent([String].self, forKey: .versions)
        integrationServices = try c.decodeIfPresent([String].self, forKey: .integrationServices) ?? defaults.integrationServices
        healthWindowMs = try c.decodeIfPresent(Int.self, forKey: .healthWindowMs) ?? defaults.healthWindowMs
        timesync = try c.decodeIfPresent(String.self, forKey: .timesync) ?? defaults.timesync
        chronySocket = try c.decodeIfPresent(String.self, forKey: .chronySocket) ?? defaults.chronySocket
        clockStepThresholdMs = try c.decodeIfPresent(Int.self, forKey: .clockStepThresholdMs) ?? defaults.clockStepThresholdMs
        poweroffCommand = try c.decodeIfPresent(String.self, forKey: .poweroffCommand) ?? defaults.poweroffCommand
        rebootCommand = try c.decodeIfPresent(String.self, forKey: .rebootCommand) ?? defaults.rebootCommand
        hibernateCommand = try c.decodeIfPresent(String.self, forKey: .hibernateCommand) ?? defaults.hibernateCommand
        stateDir = try c.decodeIfPresent(String.self, forKey: .stateDir) ?? defaults.stateDir
        kvpInterfacesInclude = try c.decodeIfPresent([String].self, forKey: .kvpInterfacesInclude) ?? defaults.kvpInterfacesInclude
        kvpInterfacesExclude = try c.decodeIfPresent([String].self, forKey: .kvpInterfacesExclude) ?? defaults.kvpInterfacesExclude
        storage = try c.decodeIfPresent(Bool.self, forKey: .storage) ?? defaults.storage
        exportDir = try c.decodeIfPresent(String.self, forKey: .exportDir) ?? defaults.exportDir
        storageVCPUsPerSubChannel = try c.decodeIfPresent(Int.self, forKey: .storageVCPUsPerSubChannel) ?? defaults.storageVCPUsPerSubChannel
        network = try c.decodeIfPresent(Bool.self, forKey: .network) ?? defaults.network
        nicTap = try c.decodeIfPresent(String.self, forKey: .nicTap) ?? defaults.nicTap
        nicNetns = try c.decodeIfPresent(String.self, forKey: .nicNetns)
        bufferPoolMiB = try c.decodeIfPresent(Int.self, forKey: .bufferPoolMiB) ?? defaults.bufferPoolMiB
        serveChildren = try c.decodeIfPresent(String.self, forKey: .serveChildren)
        ipConfig = try c.decodeIfPresent(String.self, forKey: .ipConfig) ?? defaults.ipConfig
        resolvConf = try c.decodeIfPresent(String.self, forKey: .resolvConf) ?? defaults.resolvConf
        backupMountPoints = try c.decodeIfPresent([String].self, forKey: .backupMountPoints) ?? defaults.backupMountPoints
        backupThawTimeoutS = try c.decodeIfPresent(Int.self, forKey: .backupThawTimeoutS) ?? defaults.backupThawTimeoutS
        fcopyDirectories = try c.decodeIfPresent([String].self, forKey: .fcopyDirectories) ?? defaults.fcopyDirectories
    }

    /// Reads `path`; a missing file at the default path means defaults, elsewhere it is an error.
    public static func load(path: String?) throws -> AgentConfiguration {
        let file = path ?? defaultPath
        guard FileManager.default.fileExists(atPath: file) else {
            if path == nil { return AgentConfiguration() }
            throw AgentError.configuration("no configuration file at \(file)")
        }
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try TOMLSafety.check(text)
        let config = try TOMLDecoder().decode(AgentConfiguration.self, from: text)
        try config.validate()
        return config
    }

    public func validate() throws {
        guard reconnectIntervalMs >= 10 else { throw AgentError.configuration("reconnect_interval_ms must be at least 10") }
        guard connectTimeoutMs >= 100 else { throw AgentError.configuration("connect_timeout_ms must be at least 100") }
        guard ["chrony", "clock", "off"].contains(timesync) else {
            throw AgentError.configuration("timesync must be \"chrony\", \"clock\" or \"off\"")
        }
        for service in integrationServices where !Self.knownIntegrationServices.contains(service) {
            throw AgentError.configuration("unknown integration service '\(service)' (\(Self.knownIntegrationServices.joined(separator: ", ")))")
        }
        guard ipConfig == "auto" || IPBackend(rawValue: ipConfig) != nil else {
            throw AgentError.configuration("ip_config must be auto, networkmanager, networkd or iproute2")
        }
        guard (1...86_400).contains(backupThawTimeoutS) else { throw AgentError.configuration("backup_thaw_timeout_s must be 1…86400") }
        for d in fcopyDirectories + backupMountPoints where !d.hasPrefix("/") {
            throw AgentError.configuration("fcopy_directories and backup_mount_points take absolute paths, not '\(d)'")
        }
        guard (4...256).contains(bufferPoolMiB) else { throw AgentError.configuration("buffer_pool_mib must be 4…256") }
        guard link.hasPrefix("unix:") || link == "kernelglue" || link.hasPrefix("/dev/") else {
            throw AgentError.configuration("link must be unix:PATH, kernelglue or a /dev/viridian-glue* path, not '\(link)'")
        }
        guard storageVCPUsPerSubChannel >= 1 else { throw AgentError.configuration("storage_vcpus_per_sub_channel must be at least 1") }
        guard healthWindowMs >= 100, clockStepThresholdMs >= 1 else {
            throw AgentError.configuration("health_window_ms must be ≥ 100 and clock_step_threshold_ms ≥ 1")
        }
        _ = try parsedVersions()
    }

    public func parsedVersions() throws -> [VMBusVersion] {
        guard let versions else { return VMBusVersion.linuxPreference }
        do { return try versions.map { try VMBusVersion(parsing: $0) } } catch {
            throw AgentError.configuration("versions: bad entry in \(versions): use MAJOR.MINOR, e.g. 5.3")
        }
    }
}

/// Errors of the agent, in the user's terms.
public enum AgentError: Error, CustomStringConvertible, Equatable {
    case configuration(String)
    case timeout(String)
    case hostGone(String)
    case protocolFailure(String)

    public var description: String {
        switch self {
        case .configuration(let s): "configuration: \(s)"
        case .timeout(let s): "timed out: \(s)"
        case .hostGone(let s): "host gone: \(s)"
        case .protocolFailure(let s): s
        }
    }
}
