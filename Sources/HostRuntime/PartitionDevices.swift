// A partition's devices, built from its configuration: IC providers, SCSI controllers, NICs, and the
// emulated ones (IDE behind a PIIX4 or on its own, DEC 21140, NE2000).

import CSystem
import EchoDevice
import EmulatedDevices
import Foundation
import Glibc
import Hypervisor
import IntegrationServices
import Logging
import SyntheticNetwork
import SyntheticStorage
import VMBusWire

/// Devices a partition gets from somewhere other than the root's files and TAPs: a parent-mode
/// agent hands its child the disks and NICs it relays through its own VSCs.
public struct DeviceRelays {
    /// Disks served after the configured ones on controller 0, each with a name for logs.
    public var disks: [(backend: any BlockBackend, label: String)]
    /// NICs served after the configured ones, each a frame port with its MTU.
    public var nics: [(port: any FramePort, mtu: Int, label: String)]

    public init(disks: [(backend: any BlockBackend, label: String)] = [], nics: [(port: any FramePort, mtu: Int, label: String)] = []) {
        self.disks = disks
        self.nics = nics
    }
}

/// Every device one partition's configuration asks for, made once when the partition starts and
/// kept across guests (a new guest gets the same disks, TAPs and KVP pool).
final class PartitionDevices {
    /// The VMBus devices in offer order.
    let all: [any VMBusDevice]
    let heartbeat: HeartbeatProvider?
    let timeSync: TimeSyncProvider?
    let shutdownService: ShutdownProvider?
    let kvp: KVPProvider?
    let vss: VSSProvider?
    let fcopy: FCopyProvider?
    /// Synthetic SCSI controllers, by controller number (disks name theirs; default 0).
    let controllers: [Int: StorageVSP]
    /// I/O threads of the partition's devices.
    let workers: WorkerPool
    /// Synthetic network adapters, in configuration order.
    let nics: [NetworkVSP]
    /// Each adapter's TAP (queue 0) and the pool of its further queues.
    let taps: [(primary: TapDevice, pool: TapQueuePool)]
    let ide: ATAController?
    /// The PIIX4 IDE function in front of `ide` (ide_controller = "piix4").
    let piix4: PIIX4IDE?
    let dec21140: DEC21140?
    let ne2000: NE2000?

    init(configuration: PartitionConfiguration, id: UInt32, imageDirectory: String, relays: DeviceRelays = DeviceRelays(), logger: Logger) throws {
        let echo: [any VMBusDevice] = (0..<configuration.echoDevices).map { i in
            EchoDevice(instanceID: GUID(low: 0x484F_4345_4D52_4956, high: UInt64(id) << 32 | UInt64(i + 1)), logger: logger)
        }
        let services = Set(configuration.integrationServices)
        func instance(_ n: UInt64) -> GUID { GUID(low: 0x4349_4E44_4952_4956, high: UInt64(id) << 32 | n) }
        let clock = viridian_now_ns
        let name = configuration.name
        let hb = services.contains("heartbeat")
            ? HeartbeatProvider(instanceID: instance(1), intervalNs: UInt64(configuration.heartbeatIntervalMs) * 1_000_000, logger: logger, now: clock) : nil
        hb?.onStateChange = { old, new in
            if old != .unknown || new != .ok { logger.notice("\(name): heartbeat \(old.rawValue) → \(new.rawValue)") }
        }
        heartbeat = hb
        timeSync = services.contains("timesync")
            ? TimeSyncProvider(instanceID: instance(2), intervalNs: UInt64(configuration.timesyncIntervalMs) * 1_000_000,
                               source: SystemTimeSource(offsetNs: Int64(configuration.timeOffsetMs) * 1_000_000), logger: logger, now: clock) : nil
        shutdownService = services.contains("shutdown") ? ShutdownProvider(instanceID: instance(3), logger: logger, now: clock) : nil
        kvp = services.contains("kvp") ? KVPProvider(instanceID: instance(4), logger: logger, now: clock) : nil
        vss = services.contains("vss") ? VSSProvider(instanceID: instance(5), logger: logger, now: clock) : nil
        fcopy = services.contains("fcopy") ? FCopyProvider(instanceID: instance(6), logger: logger, now: clock) : nil
        // LUNs are numbered in configuration order within each controller.
        var luns: [Int: [UInt8: SCSIDisk]] = [:]
        for disk in configuration.disks(imageDirectory: imageDirectory) {
            guard let lun = UInt8(exactly: luns[disk.controller, default: [:]].count), lun < 255 else { continue }
            let backend = try disk.openBackend()
            luns[disk.controller, default: [:]][lun] = SCSIDisk(backend: backend, serial: "\(configuration.name.prefix(10))-\(disk.controller)-\(lun)")
            logger.info("\(configuration.name): controller \(disk.controller) LUN \(lun) = \(disk.path) (\(backend.sizeBytes >> 20) MiB\(disk.readOnly ? ", read-only" : ""))")
        }
        for relay in relays.disks {
            guard let lun = UInt8(exactly: luns[0, default: [:]].count), lun < 255 else { break }
            luns[0, default: [:]][lun] = SCSIDisk(backend: relay.backend, serial: "\(configuration.name.prefix(10))-r-\(lun)")
            logger.info("\(configuration.name): controller 0 LUN \(lun) = \(relay.label) (\(relay.backend.sizeBytes >> 20) MiB\(relay.backend.isReadOnly ? ", read-only" : ""))")
        }
        workers = try WorkerPool(threads: 4)
        var controllers: [Int: StorageVSP] = [:]
        for (number, set) in luns {
            let vsp = StorageVSP(instanceID: instance(0x100 + UInt64(number)), luns: set, logger: logger)
            vsp.pollNanoseconds = UInt64(configuration.storagePollMicroseconds) * 1000
            vsp.executor = workers
            controllers[number] = vsp
        }
        self.controllers = controllers
        var nics: [NetworkVSP] = []
        var taps: [(primary: TapDevice, pool: TapQueuePool)] = []
        for (index, nic) in configuration.nic.enumerated() {
            let tap: TapDevice
            let queues = configuration.queueCount(nic)
            do {
                tap = try TapDevice(name: nic.tap, namespace: nic.netns, multiQueue: queues > 1)
                try tap.configure(mtu: nic.mtu, up: true)
            } catch {
                throw ConfigurationError.invalid("\(configuration.name): nic \(index) (TAP \(nic.tap)\(nic.netns.map { " in netns \($0)" } ?? "")): \(error)"
                    + (getuid() != 0 ? " (TAP devices need root or CAP_NET_ADMIN)" : ""))
            }
            let mac = nic.macAddress(partitionID: id, index: index)
            let vsp = NetworkVSP(instanceID: instance(0x200 + UInt64(index)), port: tap, mac: mac, mtu: nic.mtu, logger: logger)
            vsp.maximumQueues = queues
            // Every queue the guest may use is opened now: a confined worker opens no devices later.
            let pool = TapQueuePool(name: tap.name, namespace: nic.netns, count: queues - 1, logger: logger)
            vsp.openQueuePort = { _ in pool.take() }
            nics.append(vsp)
            taps.append((tap, pool))
            logger.info("\(configuration.name): NIC \(index) = TAP \(tap.name)\(nic.netns.map { " (netns \($0))" } ?? ""), MAC \(MACAddress.format(mac)), MTU \(nic.mtu)")
        }
        for relay in relays.nics {
            let index = nics.count
            let mac = NICConfiguration.defaultMAC(partitionID: id, index: index)
            let vsp = NetworkVSP(instanceID: instance(0x200 + UInt64(index)), port: relay.port, mac: mac, mtu: relay.mtu, logger: logger)
            vsp.maximumQueues = 1
            nics.append(vsp)
            logger.info("\(configuration.name): NIC \(index) = \(relay.label), MAC \(MACAddress.format(mac)), MTU \(relay.mtu)")
        }
        self.nics = nics
        self.taps = taps
        if configuration.ide.isEmpty {
            ide = nil
            piix4 = nil
        } else {
            let backends: [(any BlockBackend)?] = try configuration.ide.map { try $0.openBackend() }
            let channel = ATAController(disks: backends)
            ide = channel
            piix4 = configuration.ideController == "piix4" ? PIIX4IDE(channel: channel) : nil
            logger.info("\(configuration.name): emulated IDE channel 0x1F0/IRQ 14\(piix4 == nil ? " (ISA, PIO only)" : " behind a PIIX4 (PCI 00:07.1, bus-master DMA)"): \(configuration.ide.map(\.path).joined(separator: ", "))")
        }
        func legacyTAP(_ nic: NICConfiguration, _ device: String) throws -> TapDevice {
            do {
                let tap = try TapDevice(name: nic.tap, namespace: nic.netns)
                try tap.configure(mtu: 1500, up: true)
                return tap
            } catch {
                throw ConfigurationError.invalid("\(configuration.name): \(device) (TAP \(nic.tap)): \(error)" + (getuid() != 0 ? " (TAP devices need root)" : ""))
            }
        }
        if let nic = configuration.dec21140 {
            let tap = try legacyTAP(nic, "dec21140")
            let mac = nic.macAddress(partitionID: id, index: 0x81)
            dec21140 = DEC21140(mac: mac, port: tap, line: InterruptLine(irq: 11))
            logger.info("\(configuration.name): emulated DEC 21140A (PCI 00:0a.0, IRQ 11) = TAP \(tap.name), MAC \(MACAddress.format(mac))")
        } else {
            dec21140 = nil
        }
        if let nic = configuration.ne2000 {
            let tap = try legacyTAP(nic, "ne2000")
            let mac = nic.macAddress(partitionID: id, index: 0x80)
            ne2000 = NE2000(base: 0x300, mac: mac, port: tap, line: InterruptLine(irq: 9))
            logger.info("\(configuration.name): emulated NE2000 0x300/IRQ 9 = TAP \(tap.name), MAC \(MACAddress.format(mac))")
        } else {
            ne2000 = nil
        }
        all = echo + ([hb, timeSync, shutdownService, kvp, vss, fcopy] as [ICProvider?]).compactMap { $0 }
            + controllers.keys.sorted().map { controllers[$0]! } + nics
    }
}

extension DiskConfiguration {
    /// Opens the image; a writable one is created (sparse, `size_mib`) with its directory if missing.
    func openBackend() throws(BlockError) -> FileBackend {
        if !readOnly {
            try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        }
        return try FileBackend(path: path, readOnly: readOnly, createSize: readOnly ? nil : UInt64(sizeMiB) << 20)
    }
}
