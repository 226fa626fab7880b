// Emulated devices between processes: the IDE disk and the NE2000 driven by an agent without enlightenments.

import Foundation
import Glibc
import HostRuntime
import Testing

@Suite("Emulated IDE disk between processes", .serialized)
struct EmulatedDiskProcessTests {
    @Test("Without enlightenments, PIO on an ISA channel: mkfs.ext4, 1000 files, e2fsck clean, the same files in the host image")
    func filesystemPIO() throws { try filesystem(controller: "isa") }

    @Test("Without enlightenments, PIIX4 bus-master DMA: mkfs.ext4, 1000 files, e2fsck clean, the same files in the host image")
    func filesystemDMA() throws { try filesystem(controller: "piix4") }

    func filesystem(controller: String) throws {
        guard getuid() == 0 else {
            Issue.record("needs root for losetup, mount and FUSE")
            return
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-em-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            echo_devices = 0
            integration_services = []
            disk = []
            ide_controller = "\(controller)"
            [[partition.ide]]
            path = "\(dir)/disk.img"
            size_mib = 64
            """)
        let agent = try Child("viridian-agent", ["run", "--no-enlightenments", "--config", try agentConfig(fixture, """
            export_dir = "\(dir)/exports"
            """)])
        #expect(eventually(seconds: 30) { FileManager.default.fileExists(atPath: "\(fixture.directory.path)/state/disks.json") }, "\(agent.text)")
        let (listed, list) = try run("viridian-agent", ["disk", "list", "--state-dir", "\(fixture.directory.path)/state"])
        #expect(listed == 0 && list.contains("64 MiB") && list.contains("ide0-master.sock"), "\(list)")
        // PIO: every sector crosses 128 port traps, so mkfs leaves inode tables and journal to lazy init.
        let out = try filesystemRoundTrip(export: "\(dir)/exports/ide0-master.sock", image: "\(dir)/disk.img", dir: dir,
                                          mkfsOptions: controller == "isa" ? "-E lazy_itable_init=1,lazy_journal_init=1" : "", seconds: 900, context: agent.text)
        #expect(out.contains("1011/"), "\(out)")
        // Only traps, no VMBus: the host served port I/O exits and not one hypercall.
        let (_, status) = try run("viridian-host", ["status", "--json", "--runtime-dir", fixture.directory.path])
        #expect(status.contains("\"hypercalls\" : 0") && !status.contains("\"portIOExits\" : 0"), "\(status)")
        // The agent drove the disk the way the controller allows: DMA commands only behind the PIIX4.
        let ide = try #require(try JSONDecoder().decode(HostStatus.self, from: Data(status.utf8)).partitions.first?.ide)
        #expect(ide.controller == controller && (controller == "isa" ? ide.dmaCommands == 0 : ide.dmaCommands > 0) && ide.busMasterFaults == 0, "\(status)")
        let exits = try JSONDecoder().decode(HostStatus.self, from: Data(status.utf8)).partitions.first?.portIOExits ?? 0
        print("emulated IDE (\(controller)): \(exits) port I/O exits, \(ide.commands) commands (\(ide.dmaCommands) DMA), \(ide.sectorsWritten) sectors written")
    }
}

/// A network rig whose partition has the emulated `card` and an agent without enlightenments,
/// started and pinged both ways, for `body`; nothing but a recorded issue without root.
func withEmulatedNIC(_ card: String, tag: String, subnet: Int, _ body: (NetworkRig) throws -> Void) throws {
    guard getuid() == 0 else {
        Issue.record("needs root for network namespaces and TAP devices")
        return
    }
    let rig = NetworkRig(tag: tag, subnet: subnet, emulated: card)
    defer { rig.tearDown() }
    try rig.start()
    #expect(rig.ping(from: rig.guestNS, rig.hostAddress).0 == 0, "\(rig.logs)")
    #expect(rig.ping(from: rig.hostNS, rig.guestAddress).0 == 0, "\(rig.logs)")
    try body(rig)
}

@Suite("Emulated NE2000 between processes", .serialized)
struct EmulatedNICProcessTests {
    @Test("Without enlightenments: ping both ways and 10 MiB of TCP with equal SHA-256 through the NE2000")
    func traffic() throws { try withEmulatedNIC("ne2000", tag: "ne", subnet: 40) { rig in
        let (intact, report) = try rig.transfer(mib: 10, from: rig.guestNS, to: rig.hostNS, address: rig.hostAddress, port: 5402, seconds: 600)
        #expect(intact, "guest → host through the NE2000: \(report)\n\(rig.logs)")
        print("NE2000 TCP: \(report.split(separator: "\n").first ?? "")")
    } }
}

@Suite("Emulated DEC 21140 between processes", .serialized)
struct EmulatedTulipProcessTests {
    @Test("Without enlightenments: ping both ways and 100 MiB of TCP each way with equal SHA-256 through the DEC 21140")
    func traffic() throws { try withEmulatedNIC("dec21140", tag: "de", subnet: 41) { rig in
        // The agent records its NICs once every device was probed (the TAP comes up before that).
        let state = "\(try #require(rig.fixture).directory.path)/state"
        var nics = ""
        #expect(eventually(seconds: 10) {
            nics = (try? run("viridian-agent", ["nic", "list", "--state-dir", state]))?.1 ?? ""
            return nics.contains("none (DEC 21140)")
        }, "\(nics)")
        let (out, report) = try rig.transfer(mib: 100, from: rig.guestNS, to: rig.hostNS, address: rig.hostAddress, port: 5403, seconds: 600)
        #expect(out, "guest → host through the 21140: \(report)\n\(rig.logs)")
        let (back, reportBack) = try rig.transfer(mib: 100, from: rig.hostNS, to: rig.guestNS, address: rig.guestAddress, port: 5404, seconds: 600)
        #expect(back, "host → guest through the 21140: \(reportBack)\n\(rig.logs)")
        let (_, status) = try run("viridian-host", ["status", "--json", "--runtime-dir", try #require(rig.fixture).directory.path])
        let card = try #require(try JSONDecoder().decode(HostStatus.self, from: Data(status.utf8)).partitions.first?.legacyNICs?.first)
        #expect(card.model == "dec21140" && card.busErrors == 0 && card.txFrames > 70_000 && card.rxFrames > 70_000, "\(status)")
        print("DEC 21140 TCP: \(report.split(separator: "\n").first ?? "") out, \(reportBack.split(separator: "\n").first ?? "") back")
    } }
}

@Suite("Emulated devices in the host configuration")
struct EmulatedConfigurationTests {
    func parse(_ keys: String, _ tables: String = "") throws -> HostConfiguration {
        try HostConfiguration.parse("[[partition]]\nname = \"g\"\n\(keys)\n[[partition.ide]]\npath = \"/tmp/x.img\"\n\(tables)")
    }

    func refusal(_ keys: String, _ tables: String = "") -> String {
        do {
            _ = try parse(keys, tables)
            return ""
        } catch {
            return "\(error)"
        }
    }

    @Test("ide_controller defaults to the PIIX4; isa is accepted, anything else refused with the choices; the 21140's TAP must be its own")
    func keys() throws {
        #expect(try parse("").partition[0].ideController == "piix4")
        #expect(try parse("ide_controller = \"isa\"").partition[0].ideController == "isa")
        let nic = try parse("", "[partition.dec21140]\ntap = \"vh9\"").partition[0].dec21140
        #expect(nic?.tap == "vh9")
        #expect(refusal("ide_controller = \"ahci\"").contains("ide_controller must be \"piix4\""))
        #expect(refusal("", "[partition.dec21140]\ntap = \"vh9\"\n[partition.ne2000]\ntap = \"vh9\"").contains("unique"))
        #expect(refusal("carrier = \"qemu\"\ndisk = []").contains("need carrier = \"link\""))
    }
}
