// The partition tree between processes: the root's child creates a grandchild through the hypercall API and relays its disk and NIC.

import AgentRuntime
import Foundation
import Glibc
import HostRuntime
import IntegrationServices
import Testing

/// viridian-host with partitions "child" (512 MiB, 2 VPs, a 256 MiB image, a TAP in `net.hostNS`) and
/// "other" (an echo device); the child's agent in parent mode hosts "grandchild" (96 MiB, 1 VP, the
/// child's LUN 0 and NIC 0 relayed); the grandchild's agent puts its NIC's TAP in `net.guestNS`.
final class PartitionTreeRig: @unchecked Sendable {
    let net: NetworkRig
    let fixture: HostFixture
    let dir: String
    var childAgent: Child?
    var grandchildAgent: Child?

    init(tag: String, subnet: Int) throws {
        net = NetworkRig(tag: tag, subnet: subnet)
        for ns in [net.hostNS, net.guestNS] {
            try ipCommand(["netns", "del", ns])
            try net.check(ipCommand(["netns", "add", ns]), "ip netns add \(ns)")
            try net.check(ipCommand(["-n", ns, "link", "set", "dev", "lo", "up"]), "lo up in \(ns)")
        }
        try FileManager.default.createDirectory(at: net.scratch, withIntermediateDirectories: true)
        fixture = try HostFixture(config: """
            [[partition]]
            name = "child"
            memory_mib = 512
            vps = 2
            echo_devices = 0
            [[partition.nic]]
            tap = "\(net.hostTap)"
            netns = "\(net.hostNS)"
            [[partition]]
            name = "other"
            """)
        dir = fixture.directory.path
    }

    /// The child's disk: the root's default image for it (64 MiB).
    var image: String { "\(dir)/images/child-disk0.img" }

    /// The children file; `extra` goes into the grandchild's table.
    func childrenFile(_ extra: String = "") throws -> String {
        let path = "\(dir)/children-\(UUID().uuidString.prefix(4)).toml"
        try """
            runtime_dir = "\(dir)/children"
            [[partition]]
            name = "grandchild"
            memory_mib = 96
            vps = 1
            echo_devices = 0
            relay_disks = [0]
            relay_nics = [0]
            \(extra)
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    var childConfig: String {
        get throws {
            let path = "\(dir)/child.toml"
            try """
                link = "\(fixture.link("child"))"
                state_dir = "\(dir)/child-state"
                log_level = "notice"
                timesync = "off"
                export_dir = "\(dir)/child-exports"
                network = true
                nic_tap = "vc%d"
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
    }

    var grandchildConfig: String {
        get throws {
            let path = "\(dir)/grandchild.toml"
            try """
                link = "unix:\(dir)/children/grandchild.sock"
                state_dir = "\(dir)/grandchild-state"
                log_level = "notice"
                timesync = "off"
                export_dir = "\(dir)/grandchild-exports"
                network = true
                nic_tap = "\(net.guestTap)"
                nic_netns = "\(net.guestNS)"
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
    }

    /// Starts the child's agent in parent mode and waits for the grandchild's socket.
    func startChild(_ file: String) throws {
        // A killed child leaves its socket (the next one replaces it): gone first, the wait below means the new one.
        try? FileManager.default.removeItem(atPath: "\(dir)/children/grandchild.sock")
        let agent = try Child("viridian-agent", ["run", "--config", try childConfig, "--serve-children", file])
        childAgent = agent
        guard eventually(seconds: 30, { FileManager.default.fileExists(atPath: "\(dir)/children/grandchild.sock") || !agent.process.isRunning }),
            agent.process.isRunning
        else { throw NetworkTestError("the child did not serve its grandchild:\n\(agent.text)") }
    }

    /// Starts the grandchild's agent and waits for its NBD export; returns the export's socket.
    @discardableResult
    func startGrandchild() throws -> String {
        let agent = try Child("viridian-agent", ["run", "--config", try grandchildConfig])
        grandchildAgent = agent
        var export: String?
        _ = eventually(seconds: 30) {
            export = (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/grandchild-exports"))?.first { $0.hasSuffix("-lun0.sock") }
            return export != nil || !agent.process.isRunning
        }
        guard let export else { throw NetworkTestError("the grandchild exported no disk:\n\(agent.text)\nchild:\n\(childAgent?.text ?? "")") }
        return "\(dir)/grandchild-exports/\(export)"
    }

    func status() throws -> HostStatus { try fixture.status() }

    func children() throws -> [HostedChildStatus] {
        let (code, text) = try run("viridian-agent", ["children", "--json", "--config", try childConfig])
        guard code == 0 else { throw NetworkTestError("viridian-agent children: \(text)") }
        return try decode([HostedChildStatus].self, from: text)
    }

    var logs: String {
        "host:\n\(String(fixture.host.text.suffix(2500)))\nchild:\n\(String((childAgent?.text ?? "").suffix(2500)))\ngrandchild:\n\(String((grandchildAgent?.text ?? "").suffix(2500)))"
    }

    func tearDown() {
        for agent in [grandchildAgent, childAgent].compactMap({ $0 }) {
            agent.signal(SIGKILL)
            agent.wait(seconds: 5)
        }
        fixture.host.signal(SIGKILL)
        fixture.host.wait(seconds: 5)
        net.tearDown()
    }
}

@Suite("The partition tree between processes", .serialized)
struct PartitionTreeTests {
    @Test("root → child → grandchild: the grandchild's disk passes mkfs / 1000 files / e2fsck into the root's image, its NIC ping and TCP both ways")
    func endToEnd() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces, TAP devices, loop devices and FUSE")
            return
        }
        let rig = try PartitionTreeRig(tag: "e", subnet: 61)
        defer { rig.tearDown() }
        try rig.startChild(try rig.childrenFile())
        let export = try rig.startGrandchild()

        // The tree as the root's hypervisor keeps it, and as the child reports it.
        var child: ChildPartitionStatus?
        _ = eventually(seconds: 15) {
            child = (try? rig.status())?.partitions.first { $0.name == "child" }?.children?.first
            return child?.report?["agent"] != nil
        }
        let node = try #require(child, "no child partition in the root's status\n\(rig.logs)")
        #expect(node.id == "0x101" && node.parent == "0x1" && node.state == "initialized" && node.vps == 1 && node.memoryMiB == 96)
        #expect(node.name == "grandchild" && node.report?["state"] == "attached")
        #expect(node.report?["agent"] == rig.grandchildAgent.map { "\($0.pid)" })
        let devices = node.report?["devices"]?.split(separator: ",").map(String.init) ?? []
        #expect(Set(devices).isSuperset(of: ["storvsc", "netvsc", "heartbeat", "shutdown", "kvp"]), "\(devices)")
        // Its integration services are answered by its parent: the child's hop sees its heartbeat.
        #expect(eventually(seconds: 10) { (try? rig.children())?.first?.partition.heartbeat == "ok" }, "\(rig.logs)")

        // Storage: the bytes land in the root's image file, two VMBus hops down.
        let scratch = "\(rig.dir)/fs"
        let fsck = try filesystemRoundTrip(export: export, image: rig.image, dir: scratch, context: rig.logs)
        #expect(fsck.contains("1011/"), "\(fsck)")
        var relayed: RelayedDiskStatus?
        #expect(eventually(seconds: 5) {
            relayed = (try? rig.children())?.first?.relayedDisks.first
            return (relayed?.bytesWritten ?? 0) > 4 << 20
        }, "\(String(describing: relayed))")
        #expect(relayed?.errors == 0)

        // Network: the grandchild's TAP and the root's, through the child's netvsc and the root's netvsp.
        let net = rig.net
        for (ns, dev, address) in [(net.hostNS, net.hostTap, net.hostAddress), (net.guestNS, net.guestTap, net.guestAddress)] {
            #expect(eventually(seconds: 15) { net.exists(ns, dev) }, "\(dev) missing\n\(rig.logs)")
            try net.check(ipCommand(["-n", ns, "link", "set", "dev", dev, "up"]), "\(dev) up")
            try net.check(ipCommand(["-n", ns, "addr", "add", "\(address)/24", "dev", dev]), "address on \(dev)")
        }
        let ping = net.ping(from: net.hostNS, net.guestAddress, count: 5)
        #expect(ping.0 == 0, "\(ping.1)\n\(rig.logs)")
        #expect(net.ping(from: net.guestNS, net.hostAddress, count: 3).0 == 0)
        let (up, upText) = try net.transfer(mib: 16, from: net.guestNS, to: net.hostNS, address: net.hostAddress, port: 5301)
        #expect(up, "grandchild → root: \(upText)\n\(rig.logs)")
        let (down, downText) = try net.transfer(mib: 16, from: net.hostNS, to: net.guestNS, address: net.guestAddress, port: 5302)
        #expect(down, "root → grandchild: \(downText)\n\(rig.logs)")
        // The child's status file is at most a second old.
        var nic: NICStatus?
        #expect(eventually(seconds: 5) {
            nic = (try? rig.children())?.first?.partition.nics?.first
            return (nic?.txBytes ?? 0) > 16 << 20 && (nic?.rxBytes ?? 0) > 16 << 20
        }, "\(String(describing: nic))")
        // And the root's own NIC counted the same traffic (the first hop).
        let rootNIC = try #require(try rig.status().partitions.first { $0.name == "child" }?.nics?.first)
        #expect(rootNIC.txBytes > 16 << 20 && rootNIC.rxBytes > 16 << 20)
    }

    @Test("Refused creations (VPs and memory the child lacks) leave nothing; SIGKILL of the child tears the grandchild down, the root serves the others, a new child makes a new grandchild")
    func containment() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = try PartitionTreeRig(tag: "k", subnet: 62)
        defer { rig.tearDown() }
        // Another partition of the root is served throughout.
        let other = try rig.fixture.agent(["run"], partition: "other")
        defer { other.signal(SIGKILL) }
        #expect(eventually(seconds: 15) { (try? rig.status())?.partitions.first { $0.name == "other" }?.state == "attached" })

        // More VPs than the child has: the hypervisor refuses, the agent says so and exits, no child is left.
        for (extra, says) in [("vps = 3\n", "HvCreateVp: HV_STATUS_INVALID_VP_INDEX"), ("memory_mib = 1024\n", "no 1024 MiB to give")] {
            let file = try rig.childrenFile().replacingOccurrences(of: ".toml", with: "-bad.toml")
            let text = try String(contentsOfFile: try rig.childrenFile(), encoding: .utf8)
                .replacingOccurrences(of: "memory_mib = 96\nvps = 1\n", with: extra.hasPrefix("vps") ? "memory_mib = 96\n" + extra : extra + "vps = 1\n")
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            let agent = try Child("viridian-agent", ["run", "--config", try rig.childConfig, "--serve-children", file])
            #expect(agent.wait(seconds: 60) != 0 && agent.text.contains(says), "\(agent.text)")
            let status = try rig.status()
            #expect(status.partitions.first { $0.name == "child" }?.children == nil, "a refused child was left behind")
        }

        try rig.startChild(try rig.childrenFile())
        try rig.startGrandchild()
        #expect(eventually(seconds: 15) { (try? rig.status())?.partitions.first { $0.name == "child" }?.children?.first?.report?["agent"] != nil })

        // SIGKILL: the grandchild's agent loses its host; the root drops the subtree and keeps serving "other".
        let grandchild = try #require(rig.grandchildAgent)
        try #require(rig.childAgent).signal(SIGKILL)
        #expect(grandchild.wait(seconds: 30) != nil, "the grandchild's agent kept running without its host")
        #expect(grandchild.text.contains("host gone"), "\(grandchild.text)")
        #expect(eventually(seconds: 15) {
            let p = (try? rig.status())?.partitions.first { $0.name == "child" }
            return p?.state == "waiting" && p?.children == nil
        }, "\(rig.logs)")
        #expect(rig.fixture.host.text.contains("child partition 0x101 stopped"))
        let others = try rig.status().partitions.first { $0.name == "other" }
        #expect(others?.state == "attached" && others?.agentPID == other.pid)
        #expect(other.process.isRunning)

        // A restarted child creates a new grandchild, whose agent joins and finds its disk.
        try rig.startChild(try rig.childrenFile())
        let export = try rig.startGrandchild()
        #expect(FileManager.default.fileExists(atPath: export))
        var node: ChildPartitionStatus?
        #expect(eventually(seconds: 15) {
            node = (try? rig.status())?.partitions.first { $0.name == "child" }?.children?.first
            return node?.report?["agent"] == rig.grandchildAgent.map { "\($0.pid)" }
        }, "\(String(describing: node))\n\(rig.logs)")
        #expect(node?.id == "0x101" && node?.state == "initialized")
    }
}

extension PartitionTreeTests {
    @Test("Three levels: the grandchild hosts a great-grandchild (id 0x10101) whose writes land in the root's image through two relay hops")
    func threeLevels() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = try PartitionTreeRig(tag: "3", subnet: 63)
        defer { rig.tearDown() }
        try rig.startChild(try rig.childrenFile())
        // The grandchild in parent mode: its LUN 0 goes one level further down.
        let file = "\(rig.dir)/grandchildren.toml"
        try """
            runtime_dir = "\(rig.dir)/grandchildren"
            [[partition]]
            name = "leaf"
            memory_mib = 32
            vps = 1
            echo_devices = 0
            integration_services = ["heartbeat"]
            relay_disks = [0]
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let grandchild = try Child("viridian-agent", ["run", "--config", try rig.grandchildConfig, "--serve-children", file])
        defer { grandchild.signal(SIGKILL) }
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(rig.dir)/grandchildren/leaf.sock") }, "\(grandchild.text)")
        try """
            link = "unix:\(rig.dir)/grandchildren/leaf.sock"
            state_dir = "\(rig.dir)/leaf-state"
            log_level = "notice"
            timesync = "off"
            network = false
            export_dir = "\(rig.dir)/leaf-exports"
            """.write(toFile: "\(rig.dir)/leaf.toml", atomically: true, encoding: .utf8)
        let leaf = try Child("viridian-agent", ["run", "--config", "\(rig.dir)/leaf.toml"])
        defer { leaf.signal(SIGKILL) }
        var export: String?
        #expect(eventually(seconds: 30) {
            export = (try? FileManager.default.contentsOfDirectory(atPath: "\(rig.dir)/leaf-exports"))?.first { $0.hasSuffix("-lun0.sock") }
            return export != nil
        }, "\(leaf.text)\n\(grandchild.text)")
        let socket = "\(rig.dir)/leaf-exports/\(try #require(export))"
        try sh("head -c 4194304 /dev/urandom > \(rig.dir)/pattern")
        let (copied, copyText) = try sh("nbdcopy \(rig.dir)/pattern 'nbd+unix:///?socket=\(socket)'")
        #expect(copied == 0, "\(copyText)")
        let (same, cmpText) = try sh("cmp -n 4194304 \(rig.dir)/pattern \(rig.image)")
        #expect(same == 0, "the root's image does not hold the great-grandchild's bytes: \(cmpText)")

        // Each hop keeps its own children: the root sees 0x101, the grandchild's hop (in the child) sees 0x10101.
        let root = try #require(try rig.status().partitions.first { $0.name == "child" })
        #expect(root.children?.map(\.id) == ["0x101"])
        var hosted: [HostedChildStatus] = []
        #expect(eventually(seconds: 10) {
            hosted = (try? rig.children()) ?? []
            return hosted.first?.partition.children?.first?.report?["agent"] != nil
        })
        let nested = try #require(hosted.first?.partition.children?.first)
        #expect(nested.id == "0x10101" && nested.parent == "0x101" && nested.memoryMiB == 32 && nested.name == "leaf")
        #expect(nested.report?["agent"] == "\(leaf.pid)")
        #expect(Int(nested.report?["disk_written"] ?? "") ?? 0 >= 4 << 20, "\(nested)")
    }
}

@Suite("The children file of parent mode")
struct ChildrenConfigurationTests {
    @Test("The shipped example parses; defaults: no disk of its own, sockets under state_dir/children")
    func example() throws {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let config = try ChildrenConfiguration.load(path: source.appendingPathComponent("Packaging/children.toml").path)
        let child = try #require(config.children.first)
        #expect(child.partition.name == "nested1" && child.partition.vps == 1 && child.relayDisks == [0] && child.relayNICs == [0])
        #expect(child.partition.disks(imageDirectory: "/x").isEmpty)
        #expect(config.socketPath(child, stateDir: "/s") == "/run/viridian-agent/children/nested1.sock")
        let bare = try ChildrenConfiguration.parse("[[partition]]\nname = \"a\"\n")
        #expect(bare.socketPath(try #require(bare.children.first), stateDir: "/s") == "/s/children/a.sock")
    }

    @Test("A parent's report on its child: written and read by ChildReport; spaces and '=' in values cannot split a field; other records are not reports")
    func report() throws {
        let record = ChildReport.record(child: "g1", fields: [("id", "0x101"), ("state", "not answering"), ("devices", "storvsc,a=b")])
        #expect(record.key == "Viridian.Child.g1" && record.value == "id=0x101 state=not_answering devices=storvsc,a_b")
        let parsed = try #require(ChildReport.parse(record))
        #expect(parsed.name == "g1" && parsed.fields == ["id": "0x101", "state": "not_answering", "devices": "storvsc,a_b"])
        #expect(ChildReport.parse(KVPRecord(key: "HostName", value: "id=1")) == nil)
        #expect(ChildReport.parse(KVPRecord(key: "Viridian.Child.x", value: "junk ==  =v k="))?.fields == ["": "v", "k": ""])
        let long = ChildReport.record(child: "g", fields: [("x", String(repeating: "y", count: 5000))])
        #expect(long.value.count == ChildReport.valueLimit)
    }

    @Test("Image files, TAPs, a second carrier, a device relayed twice and bad indexes are refused with the reason")
    func refused() throws {
        let cases: [(String, String)] = [
            ("[[partition]]\nname = \"a\"\n[[partition.disk]]\npath = \"/tmp/x.img\"\n", "image files and TAPs"),
            ("[[partition]]\nname = \"a\"\n[[partition.nic]]\ntap = \"t0\"\n", "image files and TAPs"),
            ("[[partition]]\nname = \"a\"\ncarrier = \"qemu\"\n", "carrier is \"link\""),
            ("[[partition]]\nname = \"a\"\nrelay_disks = [0]\n[[partition]]\nname = \"b\"\nrelay_disks = [0]\n", "relayed to one child"),
            ("[[partition]]\nname = \"a\"\nrelay_nics = [-1]\n", "indexes 0…63"),
            ("[[partition]]\nname = \"a\"\n[[partition]]\nname = \"a\"\n", "used twice"),
            ("runtime_dir = \"/x\"\n", "[[partition]]"),
            ("[[partition]]\nname = \"a\"\nvps = 99\n", "vps must be"),
        ]
        for (text, says) in cases {
            do {
                _ = try ChildrenConfiguration.parse(text)
                Issue.record("accepted: \(text)")
            } catch {
                #expect("\(error)".contains(says), "\(text) → \(error)")
            }
        }
    }
}
