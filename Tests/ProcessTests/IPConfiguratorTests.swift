// The guest's IP configurator without touching this machine: the commands each backend runs and
// the networkd file it writes, with a recording runner.

import AgentRuntime
import Foundation
import Glibc
import IntegrationServices
import Logging
import Testing

@Suite("IP injection backends")
struct IPConfiguratorTests {
    final class Recorder: @unchecked Sendable {
        var commands: [[String]] = []
        var answer: ([String]) -> (Int32, String) = { _ in (0, "") }
    }

    func configurator(_ backend: String, directory: String = "/nonexistent") -> (GuestIPConfigurator, Recorder) {
        let adapters = [GuestAdapter(interface: "viridian0", mac: "00:15:5d:51:00:02", instance: "4cd1bd3c-0001-4f7e-8c2f-000000000200", netns: "g1")]
        let ip = GuestIPConfigurator(adapters: { adapters }, backend: backend, resolvConf: directory + "/resolv.conf",
                                     networkdDirectory: directory, logger: Logger(label: "test"))
        let recorder = Recorder()
        ip.runner = { command in
            recorder.commands.append(command)
            return recorder.answer(command)
        }
        return (ip, recorder)
    }

    let request = KVPIPInfo(adapterID: "{4CD1BD3C-0001-4F7E-8C2F-000000000200}", addresses: ["10.0.0.5", "fd00::5"], subnets: ["255.255.255.0", "64"],
                            gateways: ["10.0.0.1"], dns: ["10.0.0.53"])

    @Test("iproute2: addresses replaced in the adapter's namespace, default route, DNS in resolv.conf")
    func iproute2() throws {
        let dir = NSTemporaryDirectory() + "viridian-ipc-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "search lan\nnameserver 192.0.2.1\n".write(toFile: dir + "/resolv.conf", atomically: true, encoding: .utf8)
        let (ip, recorder) = configurator("iproute2", directory: dir)
        try ip.apply(request)
        #expect(recorder.commands == [
            ["ip", "-n", "g1", "addr", "flush", "dev", "viridian0", "scope", "global"],
            ["ip", "-n", "g1", "addr", "add", "10.0.0.5/24", "dev", "viridian0"],
            ["ip", "-n", "g1", "addr", "add", "fd00::5/64", "dev", "viridian0"],
            ["ip", "-n", "g1", "link", "set", "viridian0", "up"],
            ["ip", "-n", "g1", "-4", "route", "replace", "default", "via", "10.0.0.1", "dev", "viridian0"],
        ])
        #expect(try String(contentsOfFile: dir + "/resolv.conf", encoding: .utf8) == "search lan\nnameserver 10.0.0.53\n")
        // The adapter is found by MAC too (GET_IP_INFO's form), and an unknown one is refused.
        recorder.answer = { _ in (1, "") }
        #expect(throws: IPConfigError.failed("ip addr show viridian0: ")) { try ip.read(adapterID: "00:15:5D:51:00:02") }
        #expect(throws: IPConfigError.noSuchAdapter("00:15:5D:51:00:03")) { try ip.read(adapterID: "00:15:5D:51:00:03") }
    }

    @Test("networkd: a .network file readable by networkd, reload and reconfigure, and a file networkd did not take is an error")
    func networkd() throws {
        let dir = NSTemporaryDirectory() + "viridian-ipc-\(UUID().uuidString.prefix(6))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (ip, recorder) = configurator("networkd", directory: dir)
        let file = dir + "/10-viridian-viridian0.network"
        recorder.answer = { c in c.contains("status") ? (0, "Network File: \(file)\n") : (0, "") }
        try ip.apply(request)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == """
            # Written by viridian-agent from the host's KVP SET_IP_INFO.
            [Match]
            Name=viridian0

            [Network]
            DHCP=no
            Address=10.0.0.5/24
            Address=fd00::5/64
            Gateway=10.0.0.1
            DNS=10.0.0.53

            """)
        var st = stat()
        stat(file, &st)
        #expect(st.st_mode & 0o777 == 0o644)
        #expect(recorder.commands.prefix(2) == [["networkctl", "reload"], ["networkctl", "reconfigure", "viridian0"]])
        recorder.answer = { c in c.contains("status") ? (0, "Network File: n/a\n") : (0, "") }
        #expect(throws: IPConfigError.self) { try ip.apply(request) }
    }

    @Test("NetworkManager: the adapter's connection made if missing, set manual or auto, brought up")
    func networkManager() throws {
        let (ip, recorder) = configurator("networkmanager")
        try ip.apply(request)
        #expect(recorder.commands.count == 3)
        #expect(recorder.commands[1] == ["nmcli", "connection", "modify", "viridian-viridian0", "ipv4.method", "manual", "ipv4.addresses", "10.0.0.5/24",
                                         "ipv6.method", "manual", "ipv6.addresses", "fd00::5/64", "ipv4.gateway", "10.0.0.1", "ipv6.gateway", "",
                                         "ipv4.dns", "10.0.0.53", "ipv6.dns", ""])
        #expect(recorder.commands[2] == ["nmcli", "connection", "up", "viridian-viridian0"])
        recorder.commands = []
        try ip.apply(KVPIPInfo(adapterID: request.adapterID, dhcp: true))
        #expect(recorder.commands[1].contains("auto") && !recorder.commands[1].contains("manual"))
        #expect(throws: IPConfigError.wouldDisconnect) { try ip.apply(KVPIPInfo(adapterID: request.adapterID)) }
    }
}
