// What `viridian-host status` shows: partitions, VPs, channels with ring fill and counters.

import Foundation
import Hypervisor
import IntegrationServices
import PartitionLink
import SyntheticNetwork
import VMBusWire

/// The whole host.
public struct HostStatus: Codable, Sendable {
    public var pid: Int32
    public var partitions: [PartitionStatus]
}

/// One partition.
public struct PartitionStatus: Codable, Sendable {
    public var id: UInt32
    public var name: String
    public var socket: String
    /// "waiting" (no agent), "attached", or "not answering" (its thread did not take the request in time).
    public var state: String
    /// "link" (an agent process) or "qemu" (a QEMU guest).
    public var carrier: String
    /// Who is attached, as the carrier names it ("agent pid 123", "QEMU guest generation 2").
    public var guest: String?
    public var agentPID: Int32?
    public var attachCount: Int
    public var memoryMiB: Int
    public var vmbusVersion: String?
    public var uptimeSeconds: Double?
    public var hypercalls: UInt64
    public var signals: UInt64
    public var messagesIn: UInt64
    public var messagesOut: UInt64
    public var malformedMessages: UInt64
    /// Heartbeat as the host sees it: unknown, ok, late or lost (nil without the service).
    public var heartbeat: String?
    public var vps: [VPStatus]
    public var channels: [ChannelStatus]
    /// Synthetic network adapters (absent when the partition has none).
    public var nics: [NICStatus]?
    /// Port I/O traps served (emulated devices; each is one exit).
    public var portIOExits: UInt64 = 0
    /// Interrupts the emulated devices raised (rising edges of their IRQ lines, since the host started).
    public var lineInterrupts: UInt64 = 0
    /// The emulated IDE channel (absent without IDE disks).
    public var ide: IDEStatus?
    /// Emulated NICs: the DEC 21140, then the NE2000 (absent when there are none).
    public var legacyNICs: [LegacyNICStatus]?
    /// The worker process serving the partition (absent with isolation = "none").
    public var worker: WorkerStatus?
    /// Partitions this one created through the hypercall API (absent when none).
    public var children: [ChildPartitionStatus]?

    /// A partition with nothing to report but its state ("not answering", "failed", "starting").
    static func bare(id: UInt32, configuration: PartitionConfiguration, socket: String, state: String) -> PartitionStatus {
        PartitionStatus(id: id, name: configuration.name, socket: socket, state: state, carrier: configuration.carrier, guest: nil,
                        agentPID: nil, attachCount: 0, memoryMiB: configuration.memoryMiB, vmbusVersion: nil, uptimeSeconds: nil, hypercalls: 0,
                        signals: 0, messagesIn: 0, messagesOut: 0, malformedMessages: 0, heartbeat: nil, vps: [], channels: [], nics: nil)
    }
}

/// A child partition, as the hypervisor of its parent keeps it, with what the parent reports of
/// it (the parent's agent publishes `Viridian.Child.<name>` in its KVP auto pool: the child's
/// agent, its open devices and what the parent relayed for it).
public struct ChildPartitionStatus: Codable, Sendable {
    /// Hex; each byte is one level of the tree (0x1 → 0x101 → 0x10101).
    public var id: String
    public var parent: String
    /// created, initialized or finalized.
    public var state: String
    public var vps: Int
    public var memoryMiB: Int
    /// The parent's report: its name for the child, then key=value fields (state, agent, devices, relay counters).
    public var name: String?
    public var report: [String: String]?
}

/// The report a parent-mode agent publishes on each of its children, as one KVP record
/// (`Viridian.Child.<name>`, auto pool): space-separated key=value fields, written by the agent and
/// read by its parent's `status`. Read from a guest, so anything malformed is skipped.
public enum ChildReport {
    public static let keyPrefix = "Viridian.Child."
    /// Characters of the value kept (a KVP value holds 1024 UTF-16 units).
    public static let valueLimit = 1000

    /// The record for child `name`; spaces and '=' inside keys and values become '_'.
    public static func record(child name: String, fields: [(String, String)]) -> KVPRecord {
        func clean(_ s: String) -> String { String(s.map { $0 == " " || $0 == "=" ? "_" : $0 }) }
        let value = fields.map { "\(clean($0.0))=\(clean($0.1))" }.joined(separator: " ")
        return KVPRecord(key: keyPrefix + name, value: String(value.prefix(valueLimit)))
    }

    /// The child's name and fields, or nil for a record that is not a child report.
    public static func parse(_ record: KVPRecord) -> (name: String, fields: [String: String])? {
        guard record.key.hasPrefix(keyPrefix) else { return nil }
        var fields: [String: String] = [:]
        for pair in record.value.split(separator: " ") {
            guard let eq = pair.firstIndex(of: "=") else { continue }
            fields[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        return (String(record.key.dropFirst(keyPrefix.count)), fields)
    }
}

/// A partition's worker process, as its supervisor sees it.
public struct WorkerStatus: Codable, Sendable {
    /// The worker's pid (in the host's PID namespace); nil while none runs.
    public var pid: Int32?
    /// "starting", "serving", "failed" or "stopped".
    public var state: String
    /// Workers started for the partition so far (1 + restarts).
    public var starts: Int
    /// How the last worker ended ("killed by signal 9 (SIGKILL)", "exited with status 78: …").
    public var lastExit: String?
    /// Seccomp filter and capability drop in force.
    public var confined: Bool
    /// The restart policy: on-attach, always or never.
    public var restart: String
}

/// The emulated IDE channel's counters, since the host started.
public struct IDEStatus: Codable, Sendable {
    /// "piix4" (bus-master DMA) or "isa" (PIO only).
    public var controller: String
    public var commands: UInt64
    /// READ/WRITE DMA commands completed through the bus master.
    public var dmaCommands: UInt64
    public var sectorsRead: UInt64
    public var sectorsWritten: UInt64
    /// Bus-master transfers refused (PRD table outside memory, too short, bus mastering off …).
    public var busMasterFaults: UInt64
}

/// One emulated NIC's counters. rx = host → guest, tx = guest → host.
public struct LegacyNICStatus: Codable, Sendable {
    /// "dec21140" or "ne2000".
    public var model: String
    public var tap: String
    public var mac: String
    public var rxFrames: UInt64
    public var txFrames: UInt64
    public var rxDrops: UInt64
    public var txDrops: UInt64
    /// Fatal bus errors (21140: descriptors or buffers outside guest memory).
    public var busErrors: UInt64
}

/// One synthetic network adapter. rx = host → guest, tx = guest → host.
public struct NICStatus: Codable, Sendable {
    public var index: Int
    public var tap: String
    public var mac: String
    public var mtu: Int
    public var link: Bool
    public var rxFrames: UInt64
    public var rxBytes: UInt64
    public var txFrames: UInt64
    public var txBytes: UInt64
    public var drops: UInt64
    public var ringFull: UInt64
    public var protocolErrors: UInt64
}

/// One virtual processor's SynIC counters.
public struct VPStatus: Codable, Sendable {
    public var index: Int
    public var interrupts: UInt64
    public var messagesDelivered: UInt64
    public var messagesQueued: Int
    public var eventsSignalled: UInt64
    public var eoms: UInt64
}

/// One channel.
public struct ChannelStatus: Codable, Sendable {
    public var relid: UInt32
    public var device: String
    public var instance: String
    public var state: String
    public var targetVP: UInt32
    /// Bytes waiting in the guest → host ring, and its data size.
    public var inboundFill: UInt32
    public var inboundSize: UInt32
    /// Bytes waiting in the host → guest ring, and its data size.
    public var outboundFill: UInt32
    public var outboundSize: UInt32
    public var packetsIn: UInt64
    public var packetsOut: UInt64
    public var signalsIn: UInt64
    public var signalsOut: UInt64
    public var ringFull: UInt64
}

extension PartitionService {
    /// A snapshot, taken on the service thread.
    public func status() -> PartitionStatus {
        let snapshot = perform { [self] in
            let runtime = self.runtime
            let vps: [VPStatus] = runtime.map { rt in
                rt.partition.synics.enumerated().map { i, s in
                    VPStatus(index: i, interrupts: rt.interruptCounts[i], messagesDelivered: s.messagesDelivered,
                             messagesQueued: s.queuedMessages(sint: SynICLayout.vmbusSINT), eventsSignalled: s.eventsSignalled, eoms: s.eomCount)
                }
            } ?? []
            let channels: [ChannelStatus] = runtime.map { rt in
                rt.server.channels.values.sorted { $0.relid < $1.relid }.map { c in
                    let e = c.endpoint
                    return ChannelStatus(
                        relid: c.relid, device: c.device.deviceClass.name, instance: c.device.instanceID.description,
                        state: c.state.rawValue, targetVP: c.targetVP,
                        inboundFill: e?.reader.ring.fill ?? 0, inboundSize: e?.reader.ring.dataSize ?? 0,
                        outboundFill: e?.writer.ring.fill ?? 0, outboundSize: e?.writer.ring.dataSize ?? 0,
                        packetsIn: e?.reader.packetsRead ?? 0, packetsOut: e?.writer.packetsWritten ?? 0,
                        signalsIn: e?.signalsReceived ?? 0, signalsOut: e?.signalsSent ?? 0, ringFull: e?.writer.ringFullEvents ?? 0)
                }
            } ?? []
            return PartitionStatus(
                id: id, name: configuration.name, socket: carrier.address, state: runtime == nil ? "waiting" : "attached",
                carrier: carrier.kind, guest: runtime?.guest, agentPID: runtime == nil ? nil : (carrier as? LinkHostCarrier)?.agentPID, attachCount: attachCount, memoryMiB: configuration.memoryMiB,
                vmbusVersion: runtime?.server.connection?.version.description,
                uptimeSeconds: runtime.map { DispatchClock.now() - $0.attachedAt },
                hypercalls: runtime?.partition.hypercalls ?? 0, signals: runtime?.partition.signalsDelivered ?? 0,
                messagesIn: runtime?.server.messagesReceived ?? 0, messagesOut: runtime?.server.messagesSent ?? 0,
                malformedMessages: runtime?.server.malformedMessages ?? 0, heartbeat: heartbeat?.state.rawValue, vps: vps,
                channels: channels, nics: nics.isEmpty ? nil : nics.enumerated().map { i, n in
                    NICStatus(index: i, tap: (n.port as? TapDevice)?.name ?? "", mac: MACAddress.format(n.mac), mtu: n.mtu, link: n.linkUp,
                              rxFrames: n.counters.rxFrames, rxBytes: n.counters.rxBytes, txFrames: n.counters.txFrames,
                              txBytes: n.counters.txBytes, drops: n.counters.drops, ringFull: n.counters.ringFull,
                              protocolErrors: n.counters.protocolErrors)
                }, portIOExits: runtime?.portExits ?? 0, lineInterrupts: lines.reduce(0) { $0 &+ $1.raised },
                ide: ide.map { c in
                    IDEStatus(controller: piix4 == nil ? "isa" : "piix4", commands: c.commands, dmaCommands: c.dmaCommands, sectorsRead: c.sectorsRead,
                              sectorsWritten: c.sectorsWritten, busMasterFaults: piix4?.busMaster.faults ?? 0)
                },
                legacyNICs: legacyNICStatus, children: runtime?.childStatus)
        }
        // A partition thread that does not answer is reported as such; the others still are.
        guard var status = snapshot else { return .bare(id: id, configuration: configuration, socket: carrier.address, state: "not answering") }
        if let children = status.children, !children.isEmpty { status.children = withParentReports(children) }
        return status
    }

    /// Adds to each child what the parent's agent reports of it in its KVP auto pool (waits up to 2 s for the guest).
    func withParentReports(_ children: [ChildPartitionStatus]) -> [ChildPartitionStatus] {
        guard let provider = kvp else { return children }
        let outcome: Result<[KVPRecord], KVPEnumerationError>? = waitForReply(timeoutMs: 2000) { reply in
            guard provider.isConnected else { return reply(.failure(.noAnswer)) }
            provider.enumerate(pool: .auto) { reply($0) }
        }
        guard case .success(let records)? = outcome else { return children }
        var reports: [String: (String, [String: String])] = [:]
        for r in records {
            if let (name, fields) = ChildReport.parse(r), let id = fields["id"] { reports[id] = (name, fields) }
        }
        return children.map { c in
            var c = c
            if let (name, fields) = reports[c.id] {
                c.name = name
                c.report = fields.filter { $0.key != "id" }
            }
            return c
        }
    }

}

extension PartitionService {
    /// The emulated NICs' counters, nil when there are none.
    var legacyNICStatus: [LegacyNICStatus]? {
        var all: [LegacyNICStatus] = []
        if let d = dec21140 {
            all.append(LegacyNICStatus(model: "dec21140", tap: (d.port as? TapDevice)?.name ?? "", mac: MACAddress.format(d.mac), rxFrames: d.rxFrames,
                                       txFrames: d.txFrames, rxDrops: d.rxDrops, txDrops: d.txDrops, busErrors: d.busErrors))
        }
        if let n = ne2000 {
            all.append(LegacyNICStatus(model: "ne2000", tap: (n.port as? TapDevice)?.name ?? "", mac: MACAddress.format(n.mac), rxFrames: n.rxFrames,
                                       txFrames: n.txFrames, rxDrops: n.rxDrops, txDrops: n.txDrops &+ n.txAborts, busErrors: 0))
        }
        return all.isEmpty ? nil : all
    }
}

extension HostStatus {
    /// The status as a table for terminals.
    public func table() -> String {
        var lines: [String] = []
        for p in partitions {
            lines.append("partition \(p.id) \(p.name): \(p.state)"
                + (p.guest.map { " (\($0), \(p.carrier))" } ?? "")
                + (p.vmbusVersion.map { ", VMBus \($0)" } ?? "")
                + ", \(p.memoryMiB) MiB, attaches \(p.attachCount)" + (p.heartbeat.map { ", heartbeat \($0)" } ?? "")
                + ", socket \(p.socket)")
            if let w = p.worker {
                lines.append("  worker " + (w.pid.map { "pid \($0)" } ?? "none") + " \(w.state)\(w.confined ? ", confined" : ""), started \(w.starts)×, restart \(w.restart)"
                    + (w.lastExit.map { ", last exit: \($0)" } ?? ""))
            }
            for c in p.children ?? [] {
                let report = (c.report ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                lines.append("  child \(c.id)\(c.name.map { " \($0)" } ?? "") (parent \(c.parent)): \(c.state), \(c.vps) VP(s), \(c.memoryMiB) MiB"
                    + (report.isEmpty ? "" : "; reported by the parent: \(report)"))
            }
            if p.state == "attached" {
                lines.append("  hypercalls \(p.hypercalls)  port I/O exits \(p.portIOExits)  IRQs \(p.lineInterrupts)  doorbell signals \(p.signals)  messages in/out \(p.messagesIn)/\(p.messagesOut)  malformed \(p.malformedMessages)")
                lines.append("  VP  interrupts  msgs-delivered  queued  events  EOMs")
                for v in p.vps {
                    lines.append("  " + [pad(v.index, 2), pad(v.interrupts, 10), pad(v.messagesDelivered, 14), pad(v.messagesQueued, 6),
                                         pad(v.eventsSignalled, 6), pad(v.eoms, 5)].joined(separator: "  "))
                }
                lines.append("  relid  device               state     VP  in-fill/size     out-fill/size    pkts-in   pkts-out  sig-in  sig-out  full")
                if let i = p.ide {
                    lines.append("  IDE (\(i.controller)): commands \(i.commands), DMA \(i.dmaCommands), sectors read/written \(i.sectorsRead)/\(i.sectorsWritten), bus-master faults \(i.busMasterFaults)")
                }
                for n in p.legacyNICs ?? [] {
                    lines.append("  \(n.model) \(n.tap) \(n.mac): rx \(n.rxFrames) frames, tx \(n.txFrames) frames, drops rx/tx \(n.rxDrops)/\(n.txDrops), bus errors \(n.busErrors)")
                }
                for n in p.nics ?? [] {
                    lines.append("  NIC \(n.index) \(n.tap) \(n.mac) MTU \(n.mtu) link \(n.link ? "up" : "down"): rx \(n.rxFrames) frames / \(n.rxBytes) B, tx \(n.txFrames) frames / \(n.txBytes) B, drops \(n.drops), ring full \(n.ringFull), errors \(n.protocolErrors)")
                }
                for c in p.channels {
                    lines.append("  " + [pad(c.relid, 5), c.device.padding(toLength: 19, withPad: " ", startingAt: 0), c.state.padding(toLength: 8, withPad: " ", startingAt: 0),
                                         pad(c.targetVP, 2), "\(c.inboundFill)/\(c.inboundSize)".padding(toLength: 15, withPad: " ", startingAt: 0),
                                         "\(c.outboundFill)/\(c.outboundSize)".padding(toLength: 15, withPad: " ", startingAt: 0),
                                         pad(c.packetsIn, 8), pad(c.packetsOut, 9), pad(c.signalsIn, 6), pad(c.signalsOut, 7), pad(c.ringFull, 4)].joined(separator: "  "))
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}

private func pad<T: CustomStringConvertible>(_ value: T, _ width: Int) -> String {
    let s = value.description
    return s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}
