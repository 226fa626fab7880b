// KVP IP injection in the guest: finds the adapter the host names, checks what it asks for, and
// applies it through NetworkManager, systemd-networkd or plain iproute2.

import Foundation
import Glibc
import IntegrationServices
import Logging

/// A guest adapter the host can name: interface, MAC (upper case, colons), VMBus instance id.
public struct GuestAdapter: Equatable, Sendable {
    public var interface: String
    public var mac: String
    public var instance: String?
    public var netns: String?

    public init(interface: String, mac: String, instance: String?, netns: String?) {
        self.interface = interface
        self.mac = mac.uppercased()
        self.instance = instance
        self.netns = netns
    }

    /// Whether the host's `adapter_id` (a MAC, or an instance id with or without braces) is this one.
    public func matches(_ id: String) -> Bool {
        let bare = id.trimmingCharacters(in: CharacterSet(charactersIn: "{} ")).lowercased()
        if let instance, bare == instance.lowercased() { return true }
        return bare.replacingOccurrences(of: "-", with: ":").uppercased() == mac
    }
}

/// Which tool applies a configuration.
public enum IPBackend: String, Sendable, CaseIterable {
    case networkManager = "networkmanager"
    case networkd
    case iproute2
}

/// The agent's IPConfigurator: maps adapter ids to interfaces, reads their state with iproute2,
/// and applies plans through the backend in use.
public final class GuestIPConfigurator: IPConfigurator, @unchecked Sendable {
    /// The adapters the host may name (the agent's NICs), read when a request comes.
    let adapters: () -> [GuestAdapter]
    let backend: IPBackend
    let resolvConf: String
    let networkdDirectory: String
    let logger: Logger
    /// Runs a command; (exit status, output). Replaceable in tests.
    public var runner: ([String]) -> (Int32, String)

    /// `backend` "auto" picks NetworkManager when it runs, else systemd-networkd when it runs, else iproute2.
    public init(adapters: @escaping () -> [GuestAdapter], backend: String, resolvConf: String = "/etc/resolv.conf",
                networkdDirectory: String = "/etc/systemd/network", logger: Logger) {
        self.adapters = adapters
        self.backend = IPBackend(rawValue: backend) ?? Self.detect()
        self.resolvConf = resolvConf
        self.networkdDirectory = networkdDirectory
        self.logger = logger
        runner = Self.run
    }

    /// NetworkManager if its run directory shows it running, else networkd if its state file does, else iproute2.
    static func detect() -> IPBackend {
        if FileManager.default.fileExists(atPath: "/run/NetworkManager/NetworkManager.pid") || FileManager.default.fileExists(atPath: "/run/NetworkManager/devices") {
            return .networkManager
        }
        if FileManager.default.fileExists(atPath: "/run/systemd/netif/state") { return .networkd }
        return .iproute2
    }

    public var backendName: String { backend.rawValue }

    func adapter(_ id: String) throws(IPConfigError) -> GuestAdapter {
        guard let a = adapters().first(where: { $0.matches(id) }) else { throw .noSuchAdapter(id) }
        return a
    }

    public func read(adapterID: String) throws(IPConfigError) -> KVPIPInfo {
        let a = try adapter(adapterID)
        let ip = ipCommand(a.netns)
        let (code, out) = runner(ip + ["-j", "addr", "show", "dev", a.interface])
        guard code == 0, let list = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]], let entry = list.first else {
            throw .failed("ip addr show \(a.interface): \(out)")
        }
        var info = KVPIPInfo(adapterID: adapterID, family: 0)
        var v4 = false, v6 = false
        for address in entry["addr_info"] as? [[String: Any]] ?? [] {
            guard let local = address["local"] as? String, let prefix = address["prefixlen"] as? Int, (address["scope"] as? String) == "global" else { continue }
            let isV4 = (address["family"] as? String) == "inet"
            info.addresses.append(local)
            info.subnets.append(isV4 ? IPPlan.mask(prefix) : String(prefix))
            if isV4 { v4 = true } else { v6 = true }
        }
        info.family = v4 && v6 ? 3 : v6 ? 2 : v4 ? 1 : 0
        for family in ["-4", "-6"] {
            let (rc, routes) = runner(ip + [family, "-j", "route", "show", "default", "dev", a.interface])
            guard rc == 0, let list = try? JSONSerialization.jsonObject(with: Data(routes.utf8)) as? [[String: Any]] else { continue }
            info.gateways += list.compactMap { $0["gateway"] as? String }
        }
        info.dns = Self.nameservers(resolvConf)
        info.dhcp = dhcpEnabled(a.interface)
        return info
    }

    public func apply(_ info: KVPIPInfo) throws(IPConfigError) {
        let a = try adapter(info.adapterID)
        let plan = try IPPlan(info, interface: a.interface)
        let commands: [[String]]
        switch backend {
        case .networkManager:
            commands = Self.networkManagerCommands(plan)
        case .networkd:
            try writeNetworkdFile(plan)
            commands = [["networkctl", "reload"], ["networkctl", "reconfigure", plan.interface]]
        case .iproute2:
            commands = Self.iproute2Commands(plan, ip: ipCommand(a.netns))
        }
        for command in commands {
            let (code, out) = runner(command)
            guard code == 0 else { throw .failed("\(command.joined(separator: " ")): \(out.trimmingCharacters(in: .whitespacesAndNewlines))") }
        }
        if backend == .iproute2 && !plan.dns.isEmpty { try writeResolvConf(plan.dns) }
        if backend == .networkd {
            // networkd reports a file it could not use only in its journal: ask it which one the link has.
            let (_, status) = runner(["networkctl", "status", "--no-pager", plan.interface])
            if status.contains("Network File:") && !status.contains(networkdFile(plan.interface)) {
                throw .failed("systemd-networkd did not take \(networkdFile(plan.interface)) for \(plan.interface) (see journalctl -u systemd-networkd)")
            }
        }
        logger.info("kvp: \(plan.interface) configured through \(backend.rawValue)")
    }

    func ipCommand(_ netns: String?) -> [String] { ["ip"] + (netns.map { ["-n", $0] } ?? []) }

    /// iproute2: global addresses replaced, default routes replaced, DHCP through dhclient.
    static func iproute2Commands(_ plan: IPPlan, ip: [String]) -> [[String]] {
        if plan.dhcp { return [ip + ["link", "set", plan.interface, "up"], ["dhclient", "-1", plan.interface]] }
        var c: [[String]] = [ip + ["addr", "flush", "dev", plan.interface, "scope", "global"]]
        for a in plan.addresses { c.append(ip + ["addr", "add", "\(a.address)/\(a.prefix)", "dev", plan.interface]) }
        c.append(ip + ["link", "set", plan.interface, "up"])
        for g in plan.gateways { c.append(ip + [g.contains(":") ? "-6" : "-4", "route", "replace", "default", "via", g, "dev", plan.interface]) }
        return c
    }

    /// NetworkManager (nmcli talks to it over D-Bus): the device's connection, made if missing, modified and brought up.
    static func networkManagerCommands(_ plan: IPPlan) -> [[String]] {
        let name = "viridian-\(plan.interface)"
        var modify = ["nmcli", "connection", "modify", name]
        let v4 = plan.addresses.filter { !$0.address.contains(":") }, v6 = plan.addresses.filter { $0.address.contains(":") }
        if plan.dhcp {
            modify += ["ipv4.method", "auto", "ipv6.method", "auto"]
        } else {
            modify += ["ipv4.method", v4.isEmpty ? "disabled" : "manual", "ipv4.addresses", v4.map { "\($0.address)/\($0.prefix)" }.joined(separator: ","),
                       "ipv6.method", v6.isEmpty ? "ignore" : "manual", "ipv6.addresses", v6.map { "\($0.address)/\($0.prefix)" }.joined(separator: ",")]
            modify += ["ipv4.gateway", plan.gateways.first { !$0.contains(":") } ?? "", "ipv6.gateway", plan.gateways.first { $0.contains(":") } ?? ""]
        }
        modify += ["ipv4.dns", plan.dns.filter { !$0.contains(":") }.joined(separator: ","), "ipv6.dns", plan.dns.filter { $0.contains(":") }.joined(separator: ",")]
        return [["sh", "-c", "nmcli -t -f NAME connection show | grep -qx \"$0\" || nmcli connection add type ethernet ifname \"$1\" con-name \"$0\"", name, plan.interface],
                modify, ["nmcli", "connection", "up", name]]
    }

    /// systemd-networkd: a .network file for the interface (kept across reboots, as Hyper-V's injected addresses are) (its DHCP, addresses, routes, DNS).
    func writeNetworkdFile(_ plan: IPPlan) throws(IPConfigError) {
        var text = "# Written by viridian-agent from the host's KVP SET_IP_INFO.\n[Match]\nName=\(plan.interface)\n\n[Network]\n"
        text += "DHCP=\(plan.dhcp ? "yes" : "no")\n"
        for a in plan.addresses { text += "Address=\(a.address)/\(a.prefix)\n" }
        for g in plan.gateways { text += "Gateway=\(g)\n" }
        for d in plan.dns { text += "DNS=\(d)\n" }
        let path = networkdFile(plan.interface)
        do {
            try FileManager.default.createDirectory(atPath: networkdDirectory, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch { throw .failed("cannot write \(path): \(error)") }
        // networkd reads it as its own user; the agent's umask (0077) would keep it out.
        chmod(path, 0o644)
    }

    func networkdFile(_ interface: String) -> String { "\(networkdDirectory)/10-viridian-\(interface).network" }

    /// Whether the interface is left to DHCP (by our networkd file, NetworkManager or a dhclient lease).
    func dhcpEnabled(_ interface: String) -> Bool {
        switch backend {
        case .networkd:
            return (try? String(contentsOfFile: networkdFile(interface), encoding: .utf8))?.contains("DHCP=yes") ?? false
        case .networkManager:
            let (code, out) = runner(["nmcli", "-g", "ipv4.method", "connection", "show", "viridian-\(interface)"])
            return code == 0 && out.hasPrefix("auto")
        case .iproute2:
            return FileManager.default.fileExists(atPath: "/run/dhclient.\(interface).pid")
        }
    }

    /// Nameservers of a resolv.conf.
    static func nameservers(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            return f.count >= 2 && f[0] == "nameserver" ? String(f[1]) : nil
        }
    }

    /// Rewrites the nameserver lines in place (a bind-mounted or symlinked resolv.conf stays what it is).
    func writeResolvConf(_ servers: [String]) throws(IPConfigError) {
        let old = (try? String(contentsOfFile: resolvConf, encoding: .utf8)) ?? ""
        let kept = old.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("nameserver") && !$0.isEmpty }
        let text = (kept.map(String.init) + servers.map { "nameserver \($0)" }).joined(separator: "\n") + "\n"
        guard let handle = FileHandle(forUpdatingAtPath: resolvConf) ?? {
            FileManager.default.createFile(atPath: resolvConf, contents: nil) ? FileHandle(forUpdatingAtPath: resolvConf) : nil
        }() else { throw .failed("cannot open \(resolvConf)") }
        do {
            try handle.truncate(atOffset: 0)
            try handle.write(contentsOf: Data(text.utf8))
            try handle.close()
        } catch { throw .failed("cannot write \(resolvConf): \(error)") }
    }

    /// Runs `command` (looked up in the system directories) and collects its output.
    static func run(_ command: [String]) -> (Int32, String) {
        guard let tool = command.first else { return (-1, "") }
        let path = tool.hasPrefix("/") ? tool : ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let path else { return (127, "\(tool): not installed") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = Array(command.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return (126, "\(tool): \(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
