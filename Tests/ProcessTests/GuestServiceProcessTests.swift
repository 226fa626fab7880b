// Backup (VSS), guest file copy (FCOPY) and KVP IP injection between real viridian-host and
// viridian-agent processes, on real file systems and a real TAP (as root).

import Foundation
import Glibc
import HostRuntime
import Testing

@Suite("Backup, file copy and IP injection between processes", .serialized)
struct GuestServiceProcessTests {
    @Test("Backup: freeze leaves two loop-device file systems frozen (writes block, fsfreeze agrees), thaw releases them; a host killed after FREEZE leaves them thawed")
    func backup() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for loop devices and FIFREEZE")
            return
        }
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let dir = fixture.directory.path
        let mounts = ["\(dir)/mnt-a", "\(dir)/mnt-b"]
        for (i, m) in mounts.enumerated() {
            let (code, out) = try sh("truncate -s 32M \(dir)/fs\(i).img && mkfs.ext4 -q -F \(dir)/fs\(i).img && mkdir -p \(m) && mount -o loop \(dir)/fs\(i).img \(m)")
            try #require(code == 0, "\(out)")
        }
        // Whatever happens, nothing stays frozen: a writer blocked on a frozen file system cannot
        // even be killed, and its Child would wait for it forever.
        func thawAll() { for m in mounts { _ = try? sh("fsfreeze -u \(m) 2>/dev/null") } }
        defer { for m in mounts { _ = try? sh("fsfreeze -u \(m) 2>/dev/null; umount \(m)") } }
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "off"
            integration_services = ["heartbeat", "vss"]
            backup_mount_points = ["\(mounts[0])", "\(mounts[1])"]
            backup_thaw_timeout_s = 5
            """)])
        defer { agent.signal(SIGKILL) }
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        let control = ["--runtime-dir", dir]
        #expect(try eventually(seconds: 10) { try run("viridian-host", ["backup", "check", "guest1"] + control).0 == 0 })
        let (checked, check) = try run("viridian-host", ["backup", "check", "guest1"] + control)
        #expect(checked == 0 && check.contains("flags 0x5"), "\(check)")

        let (frozen, freezeOut) = try run("viridian-host", ["backup", "freeze", "guest1"] + control)
        #expect(frozen == 0, "\(freezeOut)\n\(agent.text)")
        let writers = try mounts.map { try Child("/bin/sh", ["-c", "echo backup > \($0)/written"]) }
        usleep(1_500_000)
        let blocked = writers.allSatisfy { $0.process.isRunning }
        if !blocked { thawAll() }
        #expect(blocked, "a write to a frozen file system finished")
        for m in mounts {
            let (code, out) = try sh("fsfreeze --freeze \(m)")
            #expect(code != 0 && out.contains("busy"), "fsfreeze: \(out)")
        }
        let (thawed, thawOut) = try run("viridian-host", ["backup", "thaw", "guest1"] + control)
        #expect(thawed == 0, "\(thawOut)")
        #expect(writers.allSatisfy { $0.wait(seconds: 10) == 0 })
        thawAll()
        for m in mounts { #expect((try? String(contentsOfFile: "\(m)/written", encoding: .utf8)) == "backup\n") }

        // The host dies while the guest is frozen: the agent thaws without being told.
        #expect(try run("viridian-host", ["backup", "freeze", "guest1"] + control).0 == 0)
        let killed = Date()
        fixture.host.signal(SIGKILL)
        let late = try mounts.map { try Child("/bin/sh", ["-c", "echo after > \($0)/after"]) }
        #expect(late.allSatisfy { $0.wait(seconds: 15) == 0 }, "\(agent.text)")
        thawAll()
        #expect(Date().timeIntervalSince(killed) < 15)
        #expect(agent.text.contains("vss: thawing"), "\(agent.text)")
    }

    @Test("Copy-file: 100 MiB arrives with the same SHA-256 and mode; a copy killed halfway leaves nothing; refusals for paths outside, symlinks, existing files and a full disk")
    func copyFile() throws {
        let fixture = try HostFixture(config: "[[partition]]\nname = \"guest1\"\n")
        let dir = fixture.directory.path
        let incoming = "\(dir)/incoming"
        try FileManager.default.createDirectory(atPath: incoming, withIntermediateDirectories: true)
        let small = "\(dir)/small-fs"
        let root = getuid() == 0
        if root {
            try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
            #expect(try sh("mount -t tmpfs -o size=1m tmpfs \(small)").0 == 0)
        }
        defer { if root { _ = try? sh("umount \(small)") } }
        let agent = try Child("viridian-agent", ["run", "--config", try agentConfig(fixture, """
            timesync = "off"
            integration_services = ["heartbeat", "fcopy"]
            fcopy_directories = ["\(incoming)", "\(small)"]
            """)])
        defer { agent.signal(SIGKILL) }
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        let control = ["--runtime-dir", dir]
        let source = "\(dir)/random.bin"
        #expect(try sh("head -c 104857600 /dev/urandom > \(source) && chmod 0751 \(source)").0 == 0)
        let started = Date()
        var copied: (Int32, String) = (-1, "")
        #expect(try eventually(seconds: 10) {
            copied = try run("viridian-host", ["copy-file", "guest1", source, "\(incoming)/big.bin"] + control, seconds: 600)
            return !copied.1.contains("did not answer")
        })
        let seconds = Date().timeIntervalSince(started)
        #expect(copied.0 == 0 && copied.1.contains("104857600 bytes") && copied.1.contains(" %)"), "\(copied.1)\n\(agent.text)")
        print("copy-file: 100 MiB in \(String(format: "%.1f", seconds)) s (\(String(format: "%.0f", 100 / seconds)) MiB/s)")
        let (_, sums) = try sh("sha256sum < \(source); sha256sum < \(incoming)/big.bin; stat -c %a \(incoming)/big.bin")
        let lines = sums.split(separator: "\n")
        #expect(lines.count == 3 && lines[0] == lines[1] && lines[2] == "751", "\(sums)")

        // Killed halfway: the host cancels, the guest removes the partial file.
        let killedCopy = try Child("viridian-host", ["copy-file", "guest1", source, "\(incoming)/half.bin"] + control)
        #expect(eventually(seconds: 60) { killedCopy.text.contains(" %)") }, "\(killedCopy.text)")
        killedCopy.signal(SIGKILL)
        #expect(eventually(seconds: 10) { (try? FileManager.default.contentsOfDirectory(atPath: incoming)) == ["big.bin"] },
                "\((try? FileManager.default.contentsOfDirectory(atPath: incoming)) ?? [])\n\(agent.text)")
        #expect(eventually(seconds: 5) { fixture.host.text.contains("requester went away") })

        // Refused: outside the allowed directories, through a symlink, an existing file, traversal.
        symlink("/tmp", "\(incoming)/escape")
        for (destination, why) in [("/etc/viridian-fcopy-test", "refused"), ("\(incoming)/escape/f", "refused"),
                                   ("\(incoming)/../f", "refused"), ("\(incoming)/big.bin", "exists in the guest (use --overwrite)")] {
            let (code, out) = try run("viridian-host", ["copy-file", "guest1", source, destination] + control)
            #expect(code != 0 && out.contains(why), "\(destination): \(out)")
        }
        #expect(!FileManager.default.fileExists(atPath: "/etc/viridian-fcopy-test") && !FileManager.default.fileExists(atPath: "/tmp/f"))
        let (over, overOut) = try run("viridian-host", ["copy-file", "guest1", "/etc/hostname", "\(incoming)/big.bin", "--overwrite"] + control)
        #expect(over == 0 && (try? String(contentsOfFile: "\(incoming)/big.bin", encoding: .utf8)) == (try? String(contentsOfFile: "/etc/hostname", encoding: .utf8)), "\(overOut)")

        // DISK_FULL: 4 MiB into a 1 MiB file system, and nothing left behind.
        if root {
            #expect(try sh("head -c 4194304 /dev/urandom > \(dir)/four.bin").0 == 0)
            let (code, out) = try run("viridian-host", ["copy-file", "guest1", "\(dir)/four.bin", "\(small)/four.bin"] + control)
            #expect(code != 0 && out.contains("full") && out.contains("0x80070070"), "\(out)")
            #expect((try? FileManager.default.contentsOfDirectory(atPath: small)) == [])
        }
    }

    @Test("KVP IP injection: set-ip puts addresses, gateway and DNS on the guest's synthetic NIC (iproute2), get-ip reads them back")
    func ipInjection() throws {
        guard getuid() == 0 else {
            Issue.record("needs root for network namespaces and TAP devices")
            return
        }
        let rig = NetworkRig(tag: "ip", subnet: 9)
        defer { rig.tearDown() }
        let resolv = rig.scratch.appendingPathComponent("resolv.conf").path
        let fixture = try rig.start(agentExtra: """
            integration_services = ["heartbeat", "kvp"]
            ip_config = "iproute2"
            resolv_conf = "\(resolv)"
            """)
        try "search example\nnameserver 192.0.2.99\n".write(toFile: resolv, atomically: true, encoding: .utf8)
        let control = ["--runtime-dir", fixture.directory.path]
        #expect(try eventually(seconds: 20) { try fixture.status().partitions[0].heartbeat == "ok" })
        var set: (Int32, String) = (-1, "")
        #expect(try eventually(seconds: 20) {
            set = try run("viridian-host", ["kvp", "set-ip", "guest1", "0", "--address", "10.77.9.9/24", "--address", "fd00:77:9::9/64",
                                            "--gateway", "10.77.9.1", "--dns", "10.77.9.53", "--dns", "fd00:77:9::53"] + control)
            return !set.1.contains("did not answer")
        })
        #expect(set.0 == 0, "\(set.1)\n\(rig.logs)")
        let (_, shown) = try ipCommand(["-n", rig.guestNS, "addr", "show", "dev", rig.guestTap])
        #expect(shown.contains("inet 10.77.9.9/24") && shown.contains("inet6 fd00:77:9::9/64") && !shown.contains("10.77.9.2/"), "\(shown)")
        let (_, routes) = try ipCommand(["-n", rig.guestNS, "route", "show", "default"])
        #expect(routes.contains("default via 10.77.9.1 dev \(rig.guestTap)"), "\(routes)")
        let conf = (try? String(contentsOfFile: resolv, encoding: .utf8)) ?? ""
        #expect(conf == "search example\nnameserver 10.77.9.53\nnameserver fd00:77:9::53\n", "\(conf)")
        let (ping, pingOut) = try netnsExec(rig.hostNS, ["ping", "-c", "2", "-W", "3", "10.77.9.9"])
        #expect(ping == 0, "\(pingOut)")

        let (got, json) = try run("viridian-host", ["kvp", "get-ip", "guest1", "00:15:5d:00:00:00", "--json"] + control)
        #expect(got != 0 && json.contains("has no NIC"), "an unknown MAC: \(json)")
        let mac = try rig.nicStatus().mac
        let (read, readOut) = try run("viridian-host", ["kvp", "get-ip", "guest1", mac, "--json"] + control)
        #expect(read == 0, "\(readOut)")
        let info = try JSONDecoder().decode(ControlIPInfo.self, from: Data(readOut.utf8))
        #expect(info.addresses.contains("10.77.9.9") && info.addresses.contains("fd00:77:9::9"), "\(info)")
        #expect(zip(info.addresses, info.subnets).contains { $0 == "10.77.9.9" && $1 == "255.255.255.0" }, "\(info)")
        #expect(info.gateways == ["10.77.9.1"] && info.dns == ["10.77.9.53", "fd00:77:9::53"] && !info.dhcp, "\(info)")
    }
}
