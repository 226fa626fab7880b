// viridian-host's configuration: partitions, their devices and where the sockets live (TOML).

import Foundation
import QEMUCarrier
import SyntheticNetwork
import TOMLKit
import TOMLSafety
import VMBusWire

/// The host's configuration file. Every key is optional; the embedded default runs one partition.
///
/// ```toml
/// runtime_dir = "/run/viridian"      # sockets: <runtime_dir>/<partition>.sock and host.sock
/// isolation = "process"              # "process": each partition in a confined worker process; "none": threads of one process
/// [[partition]]
/// name = "guest1"                    # also the socket name
/// memory_mib = 64                    # guest-physical memory
/// vps = 2                            # virtual processors: 1, 2 or 4 (up to 16)
/// cpus = [0, 1]                      # host CPUs for the partition and its agent (default: any)
/// socket = "/run/viridian/g1.sock"   # overrides the default socket path
/// carrier = "link"                   # "link": an agent process (PartitionLink); "qemu": a QEMU guest
/// restart = "on-attach"              # a dead worker: "on-attach" (when a guest next connects), "always" (at once), "never"
/// ram_file = "/dev/shm/guest1.ram"   # qemu: the guest RAM file QEMU maps (memory-backend-file, share=on)
/// ivshmem_socket = "/run/viridian/guest1.ivshmem"   # qemu: the ivshmem server socket (-chardev socket,path=…)
/// echo_devices = 1                   # Viridian echo test devices to offer
/// versions = ["5.3", "4.0"]          # VMBus versions accepted (default: 0.13 … 5.3)
/// integration_services = ["heartbeat", "timesync", "shutdown", "kvp", "vss", "fcopy"]
/// heartbeat_interval_ms = 1000       # heartbeat request period
/// timesync_interval_ms = 5000        # time sample period (a SYNC goes first)
/// time_offset_ms = 0                 # added to the host time sent (testing)
/// [[partition.disk]]                 # LUNs of the partition's synthetic SCSI controller, in order
/// path = "/var/lib/viridian/images/guest1-disk0.img"   # raw image; created sparse if missing
/// size_mib = 64                      # size of a created image
/// read_only = false
/// controller = 0                     # synthetic SCSI controller number (one VMBus channel each)
/// [[partition.nic]]                  # synthetic network adapters, in order (NIC 0, 1, …); none by default
/// tap = "vh0"                        # host TAP the adapter is bridged to (created if missing; needs CAP_NET_ADMIN)
/// netns = "hostside"                 # `ip netns` namespace of the TAP (default: the host's own)
/// mac = "00:15:5d:00:01:00"          # the guest's MAC (default: 00:15:5d, partition id, NIC index)
/// mtu = 1500                         # 576…9000
/// queues = 2                         # channels and TAP queues the guest may use (default: VPs, at most 8)
/// [[partition.ide]]                  # emulated ATA disks on the legacy IDE channel (0x1F0, IRQ 14): master, slave
/// path = "/var/lib/viridian/images/guest1-disk0.img"   # may be the same image a SCSI LUN serves (use one path at a time)
/// size_mib = 64
/// read_only = false
/// ide_controller = "piix4"           # (partition key) "piix4": PCI 00:07.1 with bus-master DMA, as Hyper-V gen 1; "isa": PIO only
/// [partition.dec21140]               # an emulated DEC 21140A (PCI 00:0a.0, IRQ 11), Hyper-V's legacy network adapter
/// tap = "vh2"
/// netns = "hostside"
/// mac = "00:15:5d:00:01:81"
/// [partition.ne2000]                 # an emulated NE2000 NIC (ISA 0x300, IRQ 9) bridged to a host TAP
/// tap = "vh1"
/// netns = "hostside"
/// mac = "00:15:5d:00:01:80"
/// ```
public struct HostConfiguration: Codable, Sendable, Equatable {
    public var runtimeDir: String?
    public var imageDir: String?
    /// "process" (default): every partition in a worker process of its own, confined; "none": all
    /// partitions on threads of the host process.
    public var isolation: String?
    public var partition: [PartitionConfiguration]

    public init(runtimeDir: String? = nil, partition: [PartitionConfiguration]) {
        self.runtimeDir = runtimeDir
        self.partition = partition
    }

    enum CodingKeys: String, CodingKey {
        case runtimeDir = "runtime_dir"
        case imageDir = "image_dir"
        case isolation, partition
    }

    /// Whether partitions run in worker processes.
    public var isolated: Bool { (isolation ?? "process") == "process" }

    /// Where default disk images live: image_dir, else /var/lib/viridian/images as root, else under /tmp.
    public var resolvedImageDir: String {
        if let imageDir { return imageDir }
        return getuid() == 0 ? "/var/lib/viridian/images" : "/tmp/viridian-\(getuid())/images"
    }

    /// One partition "guest1": 64 MiB, 2 VPs, one echo device.
    public static let embeddedDefault = HostConfiguration(partition: [PartitionConfiguration(name: "guest1")])

    /// Parses TOML text and validates it.
    public static func parse(_ text: String) throws -> HostConfiguration {
        do { try TOMLSafety.check(text) } catch { throw ConfigurationError.invalid("\(error)") }
        let config = try TOMLDecoder().decode(HostConfiguration.self, from: text)
        try config.validate()
        return config
    }

    /// Reads and validates a file.
    public static func load(path: String) throws -> HostConfiguration {
        try parse(try String(contentsOfFile: path, encoding: .utf8))
    }

    /// The directory for sockets: the configured one, else /run/viridian as root, else a per-user /tmp one.
    public var resolvedRuntimeDir: String {
        if let runtimeDir { return runtimeDir }
        return getuid() == 0 ? "/run/viridian" : "/tmp/viridian-\(getuid())"
    }

    public func socketPath(for p: PartitionConfiguration) -> String { p.socket ?? "\(resolvedRuntimeDir)/\(p.name).sock" }
    /// Where QEMU finds partition `p`'s ivshmem server.
    public func ivshmemSocketPath(for p: PartitionConfiguration) -> String { p.ivshmemSocket ?? "\(resolvedRuntimeDir)/\(p.name).ivshmem" }
    /// The file holding partition `p`'s guest RAM (QEMU carrier).
    public func ramFilePath(for p: PartitionConfiguration) -> String { p.ramFile ?? "/dev/shm/viridian-\(p.name).ram" }
    public var controlSocketPath: String { "\(resolvedRuntimeDir)/host.sock" }

    public func validate() throws {
        guard !partition.isEmpty else { throw ConfigurationError.invalid("at least one [[partition]] is needed") }
        guard ["process", "none"].contains(isolation ?? "process") else {
            throw ConfigurationError.invalid("isolation must be \"process\" (a confined worker per partition) or \"none\" (threads), not '\(isolation ?? "")'")
        }
        var names = Set<String>()
        for p in partition {
            guard names.insert(p.name).inserted else { throw ConfigurationError.invalid("partition name '\(p.name)' is used twice") }
            try p.validate()
        }
    }
}

/// One child partition.
public struct PartitionConfiguration: Codable, Sendable, Equatable {
    public var name: String
    public var memoryMiB: Int
    public var vps: Int
    public var cpus: [Int]?
    public var socket: String?
    public var echoDevices: Int
    public var versions: [String]?
    public var integrationServices: [String]
    public var heartbeatIntervalMs: Int
    public var timesyncIntervalMs: Int
    public var timeOffsetMs: Int
    /// Disks (LUN 0, 1, …); nil means the default: one 64 MiB image named after the partition.
    public var disk: [DiskConfiguration]?
    /// Microseconds the storage VSP keeps polling its ring after it ran dry (0 = sleep at once).
    public var storagePollMicroseconds: Int = 0
    /// Synthetic network adapters (none by default).
    public var nic: [NICConfiguration] = []
    /// Emulated IDE disks (master, slave); none by default.
    public var ide: [DiskConfiguration] = []
    /// The controller in front of the IDE disks: "piix4" (bus-master DMA) or "isa" (PIO only).
    public var ideController: String = "piix4"
    /// An emulated DEC 21140A NIC; none by default.
    public var dec21140: NICConfiguration?
    /// An emulated NE2000 NIC; none by default.
    public var ne2000: NICConfiguration?
    /// How the guest reaches the partition: "link" (an agent process) or "qemu" (a QEMU guest).
    public var carrier: String = "link"
    /// qemu: the file holding the guest's RAM (default: /dev/shm/viridian-<name>.ram).
    public var ramFile: String?
    /// qemu: the ivshmem server socket QEMU connects to (default: <runtime_dir>/<name>.ivshmem).
    public var ivshmemSocket: String?
    /// When a dead worker is started again: "on-attach", "always" or "never".
    public var restart: String = "on-attach"

    /// The integration services Viridian provides.
    public static let allIntegrationServices = ["heartbeat", "timesync", "shutdown", "kvp", "vss", "fcopy"]

    public init(name: String, memoryMiB: Int = 64, vps: Int = 2, cpus: [Int]? = nil, socket: String? = nil,
                echoDevices: Int = 1, versions: [String]? = nil, integrationServices: [String] = Self.allIntegrationServices,
                heartbeatIntervalMs: Int = 1000, timesyncIntervalMs: Int = 5000, timeOffsetMs: Int = 0) {
        self.integrationServices = integrationServices
        self.heartbeatIntervalMs = heartbeatIntervalMs
        self.timesyncIntervalMs = timesyncIntervalMs
        self.timeOffsetMs = timeOffsetMs
        self.name = name
        self.memoryMiB = memoryMiB
        self.vps = vps
        self.cpus = cpus
        self.socket = socket
        self.echoDevices = echoDevices
        self.versions = versions
    }

    enum CodingKeys: String, CodingKey {
        case name, vps, cpus, socket, versions
        case memoryMiB = "memory_mib"
        case echoDevices = "echo_devices"
        case integrationServices = "integration_services"
        case heartbeatIntervalMs = "heartbeat_interval_ms"
        case timesyncIntervalMs = "timesync_interval_ms"
        case timeOffsetMs = "time_offset_ms"
        case disk
        case storagePollMicroseconds = "storage_poll_us"
        case nic, ide, ne2000, dec21140, carrier
        case ideController = "ide_controller"
        case ramFile = "ram_file"
        case ivshmemSocket = "ivshmem_socket"
        case restart
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        memoryMiB = try c.decodeIfPresent(Int.self, forKey: .memoryMiB) ?? 64
        vps = try c.decodeIfPresent(Int.self, forKey: .vps) ?? 2
        cpus = try c.decodeIfPresent([Int].self, forKey: .cpus)
        socket = try c.decodeIfPresent(String.self, forKey: .socket)
        echoDevices = try c.decodeIfPresent(Int.self, forKey: .echoDevices) ?? 1
        versions = try c.decodeIfPresent([String].self, forKey: .versions)
        integrationServices = try c.decodeIfPresent([String].self, forKey: .integrationServices) ?? Self.allIntegrationServices
        heartbeatIntervalMs = try c.decodeIfPresent(Int.self, forKey: .heartbeatIntervalMs) ?? 1000
        timesyncIntervalMs = try c.decodeIfPresent(Int.self, forKey: .timesyncIntervalMs) ?? 5000
        timeOffsetMs = try c.decodeIfPresent(Int.self, forKey: .timeOffsetMs) ?? 0
        disk = try c.decodeIfPresent([DiskConfiguration].self, forKey: .disk)
        storagePollMicroseconds = try c.decodeIfPresent(Int.self, forKey: .storagePollMicroseconds) ?? 0
        nic = try c.decodeIfPresent([NICConfiguration].self, forKey: .nic) ?? []
        ide = try c.decodeIfPresent([DiskConfiguration].self, forKey: .ide) ?? []
        ne2000 = try c.decodeIfPresent(NICConfiguration.self, forKey: .ne2000)
        dec21140 = try c.decodeIfPresent(NICConfiguration.self, forKey: .dec21140)
        ideController = try c.decodeIfPresent(String.self, forKey: .ideController) ?? "piix4"
        carrier = try c.decodeIfPresent(String.self, forKey: .carrier) ?? "link"
        ramFile = try c.decodeIfPresent(String.self, forKey: .ramFile)
        ivshmemSocket = try c.decodeIfPresent(String.self, forKey: .ivshmemSocket)
        restart = try c.decodeIfPresent(String.self, forKey: .restart) ?? "on-attach"
    }

    /// The disks to serve: the configured ones, or one 64 MiB image in `imageDirectory`.
    public func disks(imageDirectory: String) -> [DiskConfiguration] {
        disk ?? [DiskConfiguration(path: "\(imageDirectory)/\(name)-disk0.img", sizeMiB: 64, readOnly: false)]
    }

    public func validate() throws {
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw ConfigurationError.invalid("partition name '\(name)': use 1–64 letters, digits, - or _")
        }
        guard (4...65536).contains(memoryMiB) else { throw ConfigurationError.invalid("\(name): memory_mib must be 4…65536") }
        guard (1...16).contains(vps) else { throw ConfigurationError.invalid("\(name): vps must be 1…16") }
        switch carrier {
        case "link": break
        case "qemu":
            guard vps <= QEMUHostCarrier.maximumVPs else {
                throw ConfigurationError.invalid("\(name): a QEMU guest has 1…\(QEMUHostCarrier.maximumVPs) VPs")
            }
            guard memoryMiB <= 2048 else { throw ConfigurationError.invalid("\(name): a QEMU guest has at most 2048 MiB (RAM below 4 GiB is one range)") }
            guard ide.isEmpty, ne2000 == nil, dec21140 == nil else {
                throw ConfigurationError.invalid("\(name): emulated IDE, DEC 21140 and NE2000 need carrier = \"link\"")
            }
        default:
            throw ConfigurationError.invalid("\(name): carrier must be \"link\" or \"qemu\", not '\(carrier)'")
        }
        if let cpus, cpus.isEmpty || cpus.contains(where: { !(0..<64).contains($0) }) {
            throw ConfigurationError.invalid("\(name): cpus must list CPU numbers 0…63")
        }
        guard ["on-attach", "always", "never"].contains(restart) else {
            throw ConfigurationError.invalid("\(name): restart must be \"on-attach\", \"always\" or \"never\", not '\(restart)'")
        }
        guard (0...64).contains(echoDevices) else { throw ConfigurationError.invalid("\(name): echo_devices must be 0…64") }
        for service in integrationServices where !Self.allIntegrationServices.contains(service) {
            throw ConfigurationError.invalid("\(name): unknown integration service '\(service)' (known: \(Self.allIntegrationServices.joined(separator: ", ")))")
        }
        for d in disk ?? [] where !(0...15).contains(d.controller) || !DiskConfiguration.sizeRange.contains(d.sizeMiB) {
            throw ConfigurationError.invalid("\(name): disk \(d.path): controller must be 0…15 and size_mib 1…\(DiskConfiguration.sizeRange.upperBound)")
        }
        guard ide.count <= 2 else { throw ConfigurationError.invalid("\(name): an IDE channel has two disks at most") }
        guard ["piix4", "isa"].contains(ideController) else {
            throw ConfigurationError.invalid("\(name): ide_controller must be \"piix4\" (bus-master DMA) or \"isa\" (PIO only), not '\(ideController)'")
        }
        var taps = Set<String>()
        for n in nic + (ne2000.map { [$0] } ?? []) + (dec21140.map { [$0] } ?? []) {
            guard !n.tap.isEmpty, n.tap.utf8.count < 16, taps.insert((n.netns ?? "") + "/" + n.tap).inserted else {
                throw ConfigurationError.invalid("\(name): nic tap '\(n.tap)' must be 1–15 bytes and unique")
            }
            if let q = n.queues, !(1...64).contains(q) { throw ConfigurationError.invalid("\(name): nic \(n.tap): queues must be 1…64") }
            guard (576...9000).contains(n.mtu) else { throw ConfigurationError.invalid("\(name): nic \(n.tap): mtu must be 576…9000") }
            if let mac = n.mac, MACAddress.parse(mac) == nil {
                throw ConfigurationError.invalid("\(name): nic \(n.tap): mac '\(mac)' is not six hex pairs like 00:15:5d:00:01:00")
            }
        }
        guard heartbeatIntervalMs >= 50, timesyncIntervalMs >= 50 else {
            throw ConfigurationError.invalid("\(name): heartbeat_interval_ms and timesync_interval_ms must be at least 50")
        }
        _ = try parsedVersions()
    }

    /// The channels and TAP queues NIC `nic` offers (its `queues`, else one per VP up to 8).
    public func queueCount(_ nic: NICConfiguration) -> Int { nic.queues ?? min(vps, 8) }

    /// Host CPUs as a bit mask (0 = any).
    public var cpuMask: UInt64 { (cpus ?? []).reduce(0) { $0 | 1 << UInt64($1) } }

    func parsedVersions() throws -> [VMBusVersion] {
        try (versions ?? []).map { text in
            do { return try VMBusVersion(parsing: text) } catch {
                throw ConfigurationError.invalid("\(name): bad version '\(text)', use MAJOR.MINOR")
            }
        }
    }
}

/// A configuration problem, said in the user's terms.
public enum ConfigurationError: Error, CustomStringConvertible, Equatable {
    case invalid(String)
    public var description: String {
        switch self {
        case .invalid(let why): "configuration: \(why)"
        }
    }
}

/// One synthetic network adapter and the host TAP behind it.
public struct NICConfiguration: Codable, Sendable, Equatable {
    public var tap: String
    public var netns: String?
    public var mac: String?
    public var mtu: Int
    public var queues: Int?

    public init(tap: String, netns: String? = nil, mac: String? = nil, mtu: Int = 1500, queues: Int? = nil) {
        self.queues = queues
        self.tap = tap
        self.netns = netns
        self.mac = mac
        self.mtu = mtu
    }

    enum CodingKeys: String, CodingKey { case tap, netns, mac, mtu, queues }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tap = try c.decode(String.self, forKey: .tap)
        netns = try c.decodeIfPresent(String.self, forKey: .netns)
        mac = try c.decodeIfPresent(String.self, forKey: .mac)
        mtu = try c.decodeIfPresent(Int.self, forKey: .mtu) ?? 1500
        queues = try c.decodeIfPresent(Int.self, forKey: .queues)
    }

    /// The configured MAC, or 00:15:5d (Hyper-V's prefix), the partition id and the NIC index.
    public func macAddress(partitionID: UInt32, index: Int) -> [UInt8] {
        if let mac, let bytes = MACAddress.parse(mac) { return bytes }
        return Self.defaultMAC(partitionID: partitionID, index: index)
    }

    /// 00:15:5d (Hyper-V's prefix), the partition id's low 16 bits and the NIC index.
    public static func defaultMAC(partitionID: UInt32, index: Int) -> [UInt8] {
        [0x00, 0x15, 0x5D, UInt8(truncatingIfNeeded: partitionID >> 8), UInt8(truncatingIfNeeded: partitionID), UInt8(truncatingIfNeeded: index)]
    }
}

/// One LUN's backing image.
public struct DiskConfiguration: Codable, Sendable, Equatable {
    /// Sizes a created image may have, in MiB (up to 16 TiB).
    public static let sizeRange = 1...(1 << 24)
    public var path: String
    public var sizeMiB: Int
    public var readOnly: Bool
    /// Which synthetic SCSI controller of the partition serves the disk (0 …).
    public var controller: Int

    public init(path: String, sizeMiB: Int = 64, readOnly: Bool = false, controller: Int = 0) {
        self.path = path
        self.sizeMiB = sizeMiB
        self.readOnly = readOnly
        self.controller = controller
    }

    enum CodingKeys: String, CodingKey {
        case path, controller
        case sizeMiB = "size_mib"
        case readOnly = "read_only"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        sizeMiB = try c.decodeIfPresent(Int.self, forKey: .sizeMiB) ?? 64
        readOnly = try c.decodeIfPresent(Bool.self, forKey: .readOnly) ?? false
        controller = try c.decodeIfPresent(Int.self, forKey: .controller) ?? 0
    }
}
