// Targets "control-request" and "host-config": the control socket's request line as the host
// reads it, and the host's TOML configuration parsed and validated, then used as the host uses it.

import Foundation
import HostRuntime

let controlRequestTarget = FuzzTarget(
    name: "control-request",
    summary: "ControlRequest from a control-socket line (JSON or \"status\") via JSONDecoder; ControlReply/ControlProgress decoding; JSON round trip"
) { data in
    ControlFuzz.request([UInt8](data))
}

let hostConfigurationTarget = FuzzTarget(
    name: "host-config",
    summary: "HostConfiguration.parse of TOML text (TOMLKit + validate); what validates survives a JSON round trip and yields paths, masks, MACs"
) { data in
    ControlFuzz.configuration([UInt8](data))
}

enum ControlFuzz {
    /// What ControlConnection.readRequest (internal to HostRuntime) does with the bytes it read:
    /// at most 8 KiB, trimmed, "status" or one JSON object.
    static func request(_ bytes: [UInt8]) {
        let line = String(decoding: bytes.prefix(8192), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let decoded: ControlRequest?
        if line == "status" {
            decoded = ControlRequest(op: "status")
        } else {
            decoded = try? JSONDecoder().decode(ControlRequest.self, from: Data(line.utf8))
        }
        if let request = decoded {
            fuzzConsume(request.op)
            if let data = try? JSONEncoder().encode(request) {
                let again = try? JSONDecoder().decode(ControlRequest.self, from: data)
                fuzzCheck(again.map { same($0, request) } == true, "a control request does not survive a JSON round trip")
            }
        }
        let json = Data(line.utf8)
        if let reply = try? JSONDecoder().decode(ControlReply.self, from: json) { fuzzConsume(UInt64(reply.ok ? 1 : 0) ^ UInt64(reply.items?.count ?? 0)) }
        if let progress = try? JSONDecoder().decode(ControlProgress.self, from: json) { fuzzConsume(progress.progress ^ progress.total) }
        if let ip = try? JSONDecoder().decode(ControlIPInfo.self, from: json) { fuzzConsume(UInt64(ip.addresses.count)) }
    }

    static func same(_ a: ControlRequest, _ b: ControlRequest) -> Bool {
        let texts: [(String?, String?)] = [
            (a.op, b.op), (a.partition, b.partition), (a.kind, b.kind), (a.reason, b.reason), (a.action, b.action),
            (a.key, b.key), (a.value, b.value), (a.path, b.path), (a.nic, b.nic), (a.destination, b.destination),
        ]
        let flags: [(Bool?, Bool?)] = [(a.force, b.force), (a.readOnly, b.readOnly), (a.up, b.up), (a.overwrite, b.overwrite), (a.createPath, b.createPath)]
        let numbers: [(Int?, Int?)] = [(a.sizeMiB, b.sizeMiB), (a.lun, b.lun)]
        guard texts.allSatisfy({ $0.0 == $0.1 }), flags.allSatisfy({ $0.0 == $0.1 }), numbers.allSatisfy({ $0.0 == $0.1 }) else { return false }
        return a.ip == b.ip
    }

    static func configuration(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let config = try? HostConfiguration.parse(text) else { return }
        fuzzCheck(!config.partition.isEmpty, "a configuration without partitions validated")
        fuzzCheck(Set(config.partition.map(\.name)).count == config.partition.count, "duplicate partition names validated")
        if let data = try? JSONEncoder().encode(config) {
            fuzzCheck((try? JSONDecoder().decode(HostConfiguration.self, from: data)) == config, "a configuration does not survive a JSON round trip")
        }
        fuzzConsume(config.resolvedRuntimeDir + config.resolvedImageDir + config.controlSocketPath)
        fuzzConsume(UInt64(config.isolated ? 1 : 0))
        for (i, p) in config.partition.enumerated() {
            fuzzCheck((1...16).contains(p.vps) && (4...65536).contains(p.memoryMiB), "partition \(p.name) validated with \(p.vps) VPs, \(p.memoryMiB) MiB")
            fuzzConsume(p.cpuMask)
            fuzzConsume(config.socketPath(for: p) + config.ivshmemSocketPath(for: p) + config.ramFilePath(for: p))
            for disk in p.disks(imageDirectory: config.resolvedImageDir) { fuzzConsume(disk.path) }
            for (j, nic) in (p.nic + [p.ne2000, p.dec21140].compactMap { $0 }).enumerated() {
                let mac = nic.macAddress(partitionID: UInt32(i + 1), index: j)
                fuzzCheck(mac.count == 6, "a MAC of \(mac.count) bytes")
            }
        }
    }
}
