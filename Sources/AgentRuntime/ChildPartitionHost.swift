// Parent mode: this partition creates children through the hypercall API and serves them as the root serves it.

import CSystem
import Foundation
import Glibc
import HostRuntime
import Hypervisor
import IntegrationServices
import Logging
import NBD
import PartitionLink
import SyntheticNetwork
import VMBusClient
import VMBusWire

/// Hosts the partitions `ChildrenConfiguration` names. For each: HvCreatePartition, this
/// partition's own pages deposited as its memory (HvDepositMemory), HvInitializePartition, one
/// HvCreateVp per VP; then the same partition service the root runs (PartitionLink carrier,
/// SynIC, VMBus server, integration services answered here) with relay devices: its disks are
/// this partition's LUNs through its storvsc (`RelayBlockBackend`), its NICs this partition's
/// NICs through its netvsc (a `FramePipe` in place of the guest TAP). Stopping finalizes and
/// deletes each child; the pages come back.
public final class ChildPartitionHost: @unchecked Sendable {
    let session: AgentSession
    let configuration: ChildrenConfiguration
    let stateDir: String
    let logger: Logger
    /// Per child, per relayed NIC: the pipe whose first end replaces this partition's guest TAP.
    private let pipes: [[FramePipe]]
    private var management: PartitionManagementClient?
    private var managementPages: UInt64?
    private(set) var hosted: [Hosted] = []

    /// One running child.
    final class Hosted {
        let child: ChildrenConfiguration.Child
        let id: UInt64
        let service: PartitionService
        let socket: String
        /// Runs of this partition's pool pages deposited into the child.
        let runs: [(first: UInt64, count: Int)]
        let disks: [RelayBlockBackend]
        let pipes: [FramePipe]

        init(child: ChildrenConfiguration.Child, id: UInt64, service: PartitionService, socket: String, runs: [(first: UInt64, count: Int)],
             disks: [RelayBlockBackend], pipes: [FramePipe]) {
            self.child = child
            self.id = id
            self.service = service
            self.socket = socket
            self.runs = runs
            self.disks = disks
            self.pipes = pipes
        }
    }

    /// Commands a relayed disk keeps in flight toward this partition's parent.
    static let relayQueueDepth = 4

    public init(session: AgentSession, configuration: ChildrenConfiguration, stateDir: String, logger: Logger) throws {
        self.session = session
        self.configuration = configuration
        self.stateDir = stateDir
        self.logger = logger
        pipes = try configuration.children.map { child in
            try child.relayNICs.map { try FramePipe(label: "relay-\(child.partition.name)-\($0)") }
        }
    }

    /// This partition's NICs that go to children instead of guest TAPs: set `NetworkAttachments.relayed` to it before attaching.
    public var relayedNICs: [Int: FramePipeEnd] {
        var out: [Int: FramePipeEnd] = [:]
        for (c, child) in configuration.children.enumerated() {
            for (i, index) in child.relayNICs.enumerated() { out[index] = pipes[c][i].first }
        }
        return out
    }

    /// Creates and starts every child. `disks`: this partition's exported LUNs; `nics`: its NICs (to check the relayed ones came up).
    public func start(disks: DiskExporter?, nics: [NICInfo]) throws {
        let pages = try session.withBus { try $0.allocatePages(2) }
        managementPages = pages
        let pool = session.link.pool
        management = PartitionManagementClient(hypervisor: session.link, input: try pool.pointer(page: pages, count: 4096), inputGPA: pool.gpa(ofPage: pages),
                                               output: try pool.pointer(page: pages + 1, count: 4096), outputGPA: pool.gpa(ofPage: pages + 1))
        let exports = disks?.exports ?? []
        for (c, child) in configuration.children.enumerated() {
            for index in child.relayDisks where index >= exports.count {
                throw AgentError.configuration("\(child.partition.name): relay_disks names disk \(index), but this partition has \(exports.count)")
            }
            for index in child.relayNICs where !nics.contains(where: { $0.index == index }) {
                throw AgentError.configuration("\(child.partition.name): relay_nics names NIC \(index), but this partition has \(nics.count) up")
            }
            let relays = try child.relayDisks.map { index in
                // (A disk to relay means `exports` was not empty: there is an exporter.)
                guard let disks else { throw AgentError.configuration("\(child.partition.name): this partition exports no disks") }
                let export = exports[index]
                // One device per I/O thread of the child's StorageVSP: that many commands in flight.
                return RelayBlockBackend(devices: try disks.relayDevices(for: export, count: Self.relayQueueDepth),
                                         label: "relay of LUN \(export.lun) on controller \(export.controller)")
            }
            let mtus = child.relayNICs.map { index in nics.first { $0.index == index }?.mtu ?? 1500 }
            hosted.append(try create(child, disks: relays, pipes: pipes[c], mtus: mtus))
        }
    }

    private func manage<T>(_ body: (PartitionManagementClient) throws -> T) throws -> T {
        guard let management else { throw AgentError.protocolFailure("partition management is not set up") }
        return try session.withBus { _ in try body(management) }
    }

    private func create(_ child: ChildrenConfiguration.Child, disks: [RelayBlockBackend], pipes: [FramePipe], mtus: [Int]) throws -> Hosted {
        let p = child.partition
        let id = try manage { try $0.createPartition() }
        var runs: [(first: UInt64, count: Int)] = []
        do {
            runs = try allocate(pages: p.memoryMiB << 8, for: p.name)
            let pool = session.link.pool
            let pfns = runs.flatMap { pool.pfns(first: $0.first, count: $0.count) }
            try manage { m in
                try m.deposit(into: id, pfns: pfns)
                try m.initialize(id)
                for vp in 0..<p.vps { try m.createVP(id, index: UInt32(vp)) }
            }
            guard id <= UInt64(UInt32.max) else { throw AgentError.protocolFailure("child id \(ChildPartitions.format(id)) does not fit a link welcome") }
            let socket = configuration.socketPath(child, stateDir: stateDir)
            try FileManager.default.createDirectory(atPath: (socket as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let carrier = try LinkHostCarrier(
                socketPath: socket, welcome: LinkFrame.Welcome(partitionID: UInt32(id), vpCount: UInt32(p.vps), memoryBytes: UInt64(p.memoryMiB) << 20,
                                                               cpuMask: 0, name: p.name), logger: logger)
            let relays = DeviceRelays(disks: disks.map { ($0, $0.label) },
                                      nics: zip(pipes, mtus).map { ($0.second, $1, "relay of this partition's \($0.first.name)") })
            let service = try PartitionService(configuration: p, id: UInt32(id), carrier: carrier, imageDirectory: stateDir + "/no-images", logger: logger,
                                               trace: nil, relays: relays)
            for pipe in pipes {
                // The parent's link state is the child's: netvsc's carrier changes reach the child's adapter.
                let vsp = service.nics.first { ($0.port as? FramePipeEnd) === pipe.second }
                pipe.second.onCarrier = { [weak service] up in _ = service?.perform { vsp?.setLink(up: up) } }
            }
            service.start()
            logger.notice("child partition \(p.name) (id \(ChildPartitions.format(id)), \(p.vps) VP(s), \(p.memoryMiB) MiB of this partition's memory): waiting for its agent on \(socket)")
            return Hosted(child: child, id: id, service: service, socket: socket, runs: runs, disks: disks, pipes: pipes)
        } catch {
            _ = try? manage { try $0.delete(id) }
            release(runs)
            throw error
        }
    }

    /// Pages of this partition's memory for a child, in as few runs as the allocator has.
    private func allocate(pages: Int, for name: String) throws -> [(first: UInt64, count: Int)] {
        var runs: [(first: UInt64, count: Int)] = []
        var left = pages, run = pages
        while left > 0 {
            let want = min(run, left)
            if let first = try? session.withBus({ try $0.allocatePages(want) }) {
                runs.append((first, want))
                left -= want
            } else if run > 1 {
                run /= 2
            } else {
                release(runs)
                throw AgentError.configuration("\(name): this partition has no \(pages >> 8) MiB to give (free: \(session.withBus { $0.freePages } >> 8) MiB)")
            }
        }
        return runs
    }

    private func release(_ runs: [(first: UInt64, count: Int)]) {
        session.withBus { bus in for r in runs { bus.releasePages(r.first, count: r.count) } }
    }

    /// Stops every child's service, then finalizes and deletes it (its memory comes back).
    public func stop() {
        for h in hosted {
            h.service.stop()
            if session.hostLost == nil {
                do { try manage { m in try m.finalize(h.id); try m.delete(h.id) } } catch {
                    logger.warning("child partition \(h.child.partition.name): \(error)")
                }
            }
            release(h.runs)
            logger.notice("child partition \(h.child.partition.name) (id \(ChildPartitions.format(h.id))) deleted")
        }
        hosted.removeAll()
        if let managementPages { session.withBus { $0.releasePages(managementPages, count: 2) } }
        managementPages = nil
        management = nil
        unlink(Self.statePath(stateDir))
    }

    // MARK: Status

    public static func statePath(_ stateDir: String) -> String { stateDir + "/children.json" }

    /// Each child as `viridian-agent children` shows it, with what this hop relayed.
    public var status: [HostedChildStatus] {
        hosted.map { h in
            HostedChildStatus(
                name: h.child.partition.name, id: ChildPartitions.format(h.id), vps: h.child.partition.vps, socket: h.socket, partition: h.service.status(),
                relayedDisks: h.disks.map {
                    RelayedDiskStatus(label: $0.label, requests: $0.requests.load(ordering: .relaxed), bytesRead: $0.bytesRead.load(ordering: .relaxed),
                                      bytesWritten: $0.bytesWritten.load(ordering: .relaxed), errors: $0.errors.load(ordering: .relaxed))
                },
                relayedNICs: h.pipes.map { RelayedNICStatus(label: $0.first.name, dropsUp: $0.first.drops, dropsDown: $0.second.drops) })
        }
    }

    private var recorded: Data?
    private var last: (at: UInt64, status: [HostedChildStatus])?
    /// How often `record` takes a new snapshot (each asks every child's partition thread, and a
    /// child that has children of its own is asked for its report over KVP).
    static let recordIntervalNs: UInt64 = 1_000_000_000

    /// Writes `children.json` (for `viridian-agent children`) when it changed, at most once a
    /// second; returns the latest status.
    @discardableResult
    public func record() -> [HostedChildStatus] {
        let now = viridian_now_ns()
        if let last, now &- last.at < Self.recordIntervalNs { return last.status }
        let current = status
        last = (now, current)
        if let data = try? JSONEncoder().encode(current), data != recorded {
            recorded = data
            try? AgentStateFile.write(current, to: Self.statePath(stateDir))
        }
        return current
    }

    /// The KVP records this partition publishes about its children (auto pool, so its parent's
    /// `viridian-host status` can show the hop below it): one compact line per child.
    public static func kvpRecords(_ children: [HostedChildStatus]) -> [KVPRecord] {
        children.map { c in
            let p = c.partition
            var fields = [("id", c.id), ("state", p.state), ("vps", "\(c.vps)"), ("memory_mib", "\(p.memoryMiB)")]
            if let pid = p.agentPID { fields.append(("agent", "\(pid)")) }
            fields.append(("devices", p.channels.filter { $0.state == "open" }.map { driverName($0.device) }.joined(separator: ",")))
            for d in c.relayedDisks {
                fields += [("disk_requests", "\(d.requests)"), ("disk_read", "\(d.bytesRead)"), ("disk_written", "\(d.bytesWritten)")]
            }
            for n in p.nics ?? [] { fields += [("nic\(n.index)_rx", "\(n.rxFrames)"), ("nic\(n.index)_tx", "\(n.txFrames)")] }
            return ChildReport.record(child: c.name, fields: fields)
        }
    }
}

/// A device class as the Linux driver that binds it is called (one word, for the KVP report).
func driverName(_ deviceClass: String) -> String {
    let names = ["Synthetic SCSI Controller": "storvsc", "Synthetic network adapter": "netvsc", "Heartbeat": "heartbeat",
                 "Operating system shutdown": "shutdown", "Data Exchange": "kvp", "VSS (Backup/Restore)": "vss", "Guest services": "fcopy",
                 "Time Synchronization": "timesync"]
    return names[deviceClass] ?? deviceClass.replacingOccurrences(of: " ", with: "_")
}

/// One hosted child, as `viridian-agent children --json` prints it.
public struct HostedChildStatus: Codable, Sendable {
    public var name: String
    public var id: String
    public var vps: Int
    public var socket: String
    /// The child partition as this hop serves it (what `viridian-host status` shows for the root's).
    public var partition: PartitionStatus
    public var relayedDisks: [RelayedDiskStatus]
    public var relayedNICs: [RelayedNICStatus]
}

/// What one relayed disk carried through this hop.
public struct RelayedDiskStatus: Codable, Sendable {
    public var label: String
    public var requests: UInt64
    public var bytesRead: UInt64
    public var bytesWritten: UInt64
    public var errors: UInt64
}

/// Frames one relayed NIC's pipe dropped, each way (up: child → this partition's netvsc).
public struct RelayedNICStatus: Codable, Sendable {
    public var label: String
    public var dropsUp: UInt64
    public var dropsDown: UInt64
}
