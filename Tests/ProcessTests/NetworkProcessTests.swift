// Synthetic network between processes: viridian-host's TAP in one network namespace, viridian-agent's
// TAP in another, VMBus between them; ping, TCP with checksums, jumbo frames, link state and counters.

import Foundation
import Glibc
import HostRuntime
import Testing

/// iproute2's `ip`.
let ipTool: String = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
    .first(where: { FileManager.default.isExecutableFile(atPath: $0) }) ?? "/usr/sbin/ip"

/// `ip ARGUMENTS`; status and output.
@discardableResult
func ipCommand(_ arguments: [String], seconds: Double = 30) throws -> (Int32, String) {
    // `ip -n NS …` as `nsenter --net … ip …`: see `netnsExec`.
    if arguments.count >= 2, arguments[0] == "-n" {
        return try netnsExec(arguments[1], [ipTool] + arguments.dropFirst(2), seconds: seconds)
    }
    return try run(ipTool, arguments, seconds: seconds)
}

/// Runs `command` inside network namespace `ns`. nsenter execs the command itself, so a timeout
/// kills the command, not only a wrapper.
@discardableResult
func netnsExec(_ ns: String, _ command: [String], seconds: Double = 30) throws -> (Int32, String) {
    try run(nsenterTool, netnsEnter(ns) + command, seconds: seconds)
}

/// util-linux's `nsenter`. Unlike `ip netns exec` and `ip -n` it enters only the network
/// namespace: those also make a private mount namespace, a copy of every mount at that moment,
/// which would keep a file system that a storage test is unmounting mounted for as long as the
/// command runs.
let nsenterTool = ["/usr/bin/nsenter", "/bin/nsenter"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) ?? "/usr/bin/nsenter"

/// nsenter's arguments for network namespace `ns` (made by `ip netns add`).
func netnsEnter(_ ns: String) -> [String] { ["--net=/run/netns/\(ns)"] }

/// A setup step of the network tests failed.
struct NetworkTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Two fresh network namespaces; viridian-host with one NIC whose TAP lives in the first, viridian-agent
/// with its guest TAP in the second, both TAPs addressed (10.77.SUBNET.1 host side, .2 guest side).
/// `tearDown()` stops both processes and deletes the namespaces; call it from a `defer` placed before `start`.
final class NetworkRig: @unchecked Sendable {
    let hostNS: String
    let guestNS: String
    let hostTap = "vh0"
    let guestTap = "vg0"
    let hostAddress: String
    let guestAddress: String
    /// Files of the TCP transfers.
    let scratch: URL
    private(set) var fixture: HostFixture?
    private(set) var agent: Child?

    /// The emulated card ("ne2000" or "dec21140", with an agent without enlightenments) instead of the synthetic NIC.
    let emulated: String?

    init(tag: String, subnet: Int, emulated: String? = nil) {
        self.emulated = emulated
        hostNS = "vnh-\(getpid())-\(tag)"
        guestNS = "vng-\(getpid())-\(tag)"
        hostAddress = "10.77.\(subnet).1"
        guestAddress = "10.77.\(subnet).2"
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-net-\(UUID().uuidString.prefix(6))")
    }

    /// Creates the namespaces, starts the host (one partition "guest1", one NIC; `nic` holds extra keys of its
    /// `[[partition.nic]]` table) and the agent, waits for both TAPs and addresses them.
    @discardableResult
    func start(nic: String = "", agentExtra: String = "") throws -> HostFixture {
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        for ns in [hostNS, guestNS] {
            try ipCommand(["netns", "del", ns])  // a leftover of a killed run with the same pid; fails when absent
            try check(ipCommand(["netns", "add", ns]), "ip netns add \(ns)")
            try check(ipCommand(["-n", ns, "link", "set", "dev", "lo", "up"]), "lo up in \(ns)")
        }
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            memory_mib = 256
            echo_devices = 0
            [\(emulated.map { "partition." + $0 } ?? "[partition.nic]")]
            tap = "\(hostTap)"
            netns = "\(hostNS)"
            \(nic)
            """)
        self.fixture = fixture
        let agent = try Child("viridian-agent", ["run"] + (emulated != nil ? ["--no-enlightenments"] : []) + ["--config", try agentConfig(fixture, """
            timesync = "off"
            storage = false
            export_dir = "\(fixture.directory.path)/exports"
            network = true
            nic_tap = "vg%d"
            nic_netns = "\(guestNS)"
            \(agentExtra)
            """)])
        self.agent = agent
        guard eventually(seconds: 15, { self.exists(self.guestNS, self.guestTap) }) else {
            throw NetworkTestError("guest TAP \(guestTap) did not appear in \(guestNS)\n\(logs)")
        }
        guard eventually(seconds: 15, { self.exists(self.hostNS, self.hostTap) }) else {
            throw NetworkTestError("host TAP \(hostTap) did not appear in \(hostNS)\n\(logs)")
        }
        // The host brings its TAP up, the agent the guest's; neither assigns addresses.
        #expect(eventually(seconds: 5) { self.flags(self.hostNS, self.hostTap).contains("UP") },
                "viridian-host leaves its TAP down: \(self.linkShow(self.hostNS, self.hostTap))")
        #expect(eventually(seconds: 5) { self.flags(self.guestNS, self.guestTap).contains("UP") },
                "viridian-agent leaves the guest TAP down: \(self.linkShow(self.guestNS, self.guestTap))")
        #expect(!self.linkShow(self.hostNS, self.hostTap).contains("inet ") && !self.linkShow(self.guestNS, self.guestTap).contains("inet "),
                "addresses assigned by host or agent")
        for (ns, dev, address) in [(hostNS, hostTap, hostAddress), (guestNS, guestTap, guestAddress)] {
            try check(ipCommand(["-n", ns, "link", "set", "dev", dev, "up"]), "\(dev) up")
            try check(ipCommand(["-n", ns, "addr", "add", "\(address)/24", "dev", dev]), "address \(address) on \(dev)")
        }
        return fixture
    }

    /// Stops agent and host, deletes the namespaces (and with them every device in them) and the scratch files.
    func tearDown() {
        if let agent {
            agent.signal(SIGKILL)
            agent.wait(seconds: 5)
        }
        if let fixture {
            fixture.host.signal(SIGKILL)
            fixture.host.wait(seconds: 5)
        }
        for ns in [hostNS, guestNS] { _ = try? ipCommand(["netns", "del", ns]) }
        try? FileManager.default.removeItem(at: scratch)
    }

    /// The last lines of the host's and the agent's logs, for failure messages.
    var logs: String {
        "host log:\n\(String((fixture?.host.text ?? "").suffix(3000)))\nagent log:\n\(String((agent?.text ?? "").suffix(3000)))"
    }

    func check(_ result: (Int32, String), _ what: String) throws {
        guard result.0 == 0 else { throw NetworkTestError("\(what) failed (\(result.0)): \(result.1)") }
    }

    func exists(_ ns: String, _ dev: String) -> Bool { ((try? ipCommand(["-n", ns, "link", "show", "dev", dev]))?.0 ?? -1) == 0 }

    /// `ip -n NS address show dev DEV` (flags such as NO-CARRIER, mtu, link/ether, addresses), or "" when it fails.
    func linkShow(_ ns: String, _ dev: String) -> String {
        guard let result = try? ipCommand(["-n", ns, "address", "show", "dev", dev]), result.0 == 0 else { return "" }
        return result.1
    }

    /// The link flags, e.g. ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"].
    func flags(_ ns: String, _ dev: String) -> [String] {
        let text = linkShow(ns, dev)
        guard let open = text.firstIndex(of: "<"), let close = text[open...].firstIndex(of: ">") else { return [] }
        return text[text.index(after: open)..<close].split(separator: ",").map(String.init)
    }

    /// `ping -c COUNT -i 0.2 -W 2 [EXTRA] ADDRESS` from namespace `ns`.
    func ping(from ns: String, _ address: String, count: Int = 3, _ extra: [String] = []) -> (Int32, String) {
        (try? netnsExec(ns, ["ping", "-c", "\(count)", "-i", "0.2", "-W", "2"] + extra + [address], seconds: 30)) ?? (-1, "ping did not run")
    }

    /// Sends `mib` MiB of random bytes with socat from namespace `sender` to a listener on `address`:`port` in
    /// namespace `receiver`; true when both ends hold the same SHA-256. A broken path fails within 120 + 20 s.
    func transfer(mib: Int, from sender: String, to receiver: String, address: String, port: Int, seconds: Double = 120) throws -> (Bool, String) {
        let source = scratch.appendingPathComponent("sent-\(port)").path
        let sink = scratch.appendingPathComponent("received-\(port)").path
        defer {
            try? FileManager.default.removeItem(atPath: source)
            try? FileManager.default.removeItem(atPath: sink)
        }
        try check(sh("head -c \(mib << 20) /dev/urandom > \(source)"), "random file")
        let listener = try Child(nsenterTool, netnsEnter(receiver) + ["socat", "-u",
                                          "TCP-LISTEN:\(port),bind=\(address),reuseaddr", "OPEN:\(sink),creat,trunc"])
        let listening = eventually(seconds: 10) {
            ((try? netnsExec(receiver, ["ss", "-Hltn", "sport = :\(port)"]))?.1 ?? "").contains(":\(port)")
        }
        guard listening else { return (false, "socat did not listen: \(listener.text)") }
        let started = Date()
        let (sent, sendOutput) = try netnsExec(sender, ["socat", "-u", "OPEN:\(source),rdonly", "TCP:\(address):\(port)"], seconds: seconds)
        let received = listener.wait(seconds: 20)
        let elapsed = Date().timeIntervalSince(started)
        guard sent == 0, received == 0 else {
            return (false, "sender exit \(sent) (-1: timed out): \(sendOutput)\nreceiver exit \(received.map { "\($0)" } ?? "none, still running"): \(listener.text)")
        }
        let (_, sums) = try sh("sha256sum \(source) \(sink)")
        let digests = sums.split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
        let same = digests.count == 2 && digests[0].count == 64 && digests[0] == digests[1]
        return (same, "\(mib) MiB in \(String(format: "%.2f", elapsed)) s\n\(sums)")
    }

    /// The partition's first NIC as `viridian-host status --json` shows it.
    func nicStatus() throws -> NetworkStatusRecord.NIC {
        let directory = try #require(fixture).directory.path
        let (code, text) = try run("viridian-host", ["status", "--json", "--runtime-dir", directory])
        guard code == 0 else { throw NetworkTestError("viridian-host status failed (\(code)): \(text)") }
        let status = try decode(NetworkStatusRecord.self, from: text)
        return try #require(status.partitions.first?.nics?.first, "no nics in \(text)")
    }

    /// `viridian-host nic link guest1 NIC up|down`.
    func setLink(_ nic: String, _ state: String) throws -> (Int32, String) {
        let directory = try #require(fixture).directory.path
        return try run("viridian-host", ["nic", "link", "guest1", nic, state, "--runtime-dir", directory])
    }
}

@Suite("Synthetic network between processes", .serialized)
struct NetworkProcessTests {
    @Test("Ping both ways, 100 MiB guest→host and 20 MiB host→guest with equal SHA-256, counters, link down and up")
    func traffic() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = NetworkRig(tag: "t", subnet: 1)
        defer { rig.tearDown() }
        let mac = "00:15:5d:77:01:02"
        try rig.start(nic: "mac = \"\(mac)\"")
        #expect(eventually(seconds: 5) {
            let guestLink = rig.linkShow(rig.guestNS, rig.guestTap)
            return guestLink.contains("link/ether \(mac) ") && guestLink.contains("mtu 1500 ")
        }, "\(rig.linkShow(rig.guestNS, rig.guestTap))")

        // Ping both ways.
        let (toHost, toHostOutput) = rig.ping(from: rig.guestNS, rig.hostAddress)
        #expect(toHost == 0, "guest → host: \(toHostOutput)\n\(rig.logs)")
        let (toGuest, toGuestOutput) = rig.ping(from: rig.hostNS, rig.guestAddress)
        #expect(toGuest == 0, "host → guest: \(toGuestOutput)\n\(rig.logs)")

        // TCP, both directions, content checked.
        let (upstream, upstreamReport) = try rig.transfer(mib: 100, from: rig.guestNS, to: rig.hostNS, address: rig.hostAddress, port: 5001)
        #expect(upstream, "guest → host: \(upstreamReport)\n\(rig.logs)")
        let (downstream, downstreamReport) = try rig.transfer(mib: 20, from: rig.hostNS, to: rig.guestNS, address: rig.guestAddress, port: 5002)
        #expect(downstream, "host → guest: \(downstreamReport)\n\(rig.logs)")

        // Counters: rx is host → guest, tx is guest → host.
        let nic = try rig.nicStatus()
        #expect(nic.index == 0 && nic.tap == rig.hostTap && nic.mtu == 1500 && nic.link && nic.mac.lowercased() == mac, "\(nic)")
        #expect(nic.rxFrames > 0 && nic.txFrames > 0, "\(nic)")
        #expect(nic.txBytes >= 100 << 20 && nic.rxBytes >= 20 << 20, "\(nic)")

        // Link down: the guest TAP loses its carrier and traffic stops; up: both come back.
        let (down, downOutput) = try rig.setLink("0", "down")
        #expect(down == 0, "\(downOutput)")
        #expect(eventually(seconds: 5) { rig.flags(rig.guestNS, rig.guestTap).contains("NO-CARRIER") },
                "\(rig.linkShow(rig.guestNS, rig.guestTap))")
        #expect(try rig.nicStatus().link == false)
        let (lost, lostOutput) = rig.ping(from: rig.guestNS, rig.hostAddress, count: 2)
        #expect(lost != 0, "ping crossed a link that is down: \(lostOutput)")
        let (up, upOutput) = try rig.setLink(rig.hostTap, "up")  // a NIC is named by index or by host TAP
        #expect(up == 0, "\(upOutput)")
        #expect(eventually(seconds: 5) { !rig.flags(rig.guestNS, rig.guestTap).contains("NO-CARRIER") },
                "\(rig.linkShow(rig.guestNS, rig.guestTap))")
        #expect(eventually(seconds: 10) { rig.ping(from: rig.guestNS, rig.hostAddress, count: 1).0 == 0 },
                "no traffic after link up\n\(rig.logs)")
        #expect(try rig.nicStatus().link)
    }

    @Test("MTU 9000: the guest TAP gets it, 8972-byte pings with DF pass both ways, 20 MiB TCP intact")
    func jumboFrames() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = NetworkRig(tag: "j", subnet: 2)
        defer { rig.tearDown() }
        try rig.start(nic: "mtu = 9000")
        #expect(eventually(seconds: 5) { rig.linkShow(rig.guestNS, rig.guestTap).contains("mtu 9000 ") },
                "\(rig.linkShow(rig.guestNS, rig.guestTap))")
        let guestLink = rig.linkShow(rig.guestNS, rig.guestTap)
        // The default MAC (derived from partition id and NIC index) is the one the guest TAP carries.
        let nic = try rig.nicStatus()
        #expect(nic.mtu == 9000 && guestLink.contains("link/ether \(nic.mac.lowercased()) "), "\(nic)\n\(guestLink)")
        try rig.check(ipCommand(["-n", rig.hostNS, "link", "set", "dev", rig.hostTap, "mtu", "9000"]), "host TAP mtu 9000")

        let (toHost, toHostOutput) = rig.ping(from: rig.guestNS, rig.hostAddress, count: 3, ["-M", "do", "-s", "8972"])
        #expect(toHost == 0, "guest → host: \(toHostOutput)\n\(rig.logs)")
        let (toGuest, toGuestOutput) = rig.ping(from: rig.hostNS, rig.guestAddress, count: 3, ["-M", "do", "-s", "8972"])
        #expect(toGuest == 0, "host → guest: \(toGuestOutput)\n\(rig.logs)")
        let (intact, report) = try rig.transfer(mib: 20, from: rig.guestNS, to: rig.hostNS, address: rig.hostAddress, port: 5003)
        #expect(intact, "guest → host at MTU 9000: \(report)\n\(rig.logs)")
    }
}

/// The fields of `viridian-host status --json` the network tests read.
struct NetworkStatusRecord: Decodable {
    struct Partition: Decodable {
        var name: String
        var nics: [NIC]?
    }

    /// One NIC; rx counts host → guest, tx guest → host.
    struct NIC: Decodable {
        var index: Int
        var tap: String
        var mac: String
        var mtu: Int
        var link: Bool
        var rxFrames: UInt64
        var rxBytes: UInt64
        var txFrames: UInt64
        var txBytes: UInt64
        var drops: UInt64
        var ringFull: UInt64
    }

    var partitions: [Partition]
}
