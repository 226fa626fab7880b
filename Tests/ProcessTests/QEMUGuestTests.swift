// A real Linux guest: Debian's cloud kernel under QEMU (TCG) joins viridian-host through KernelGlue.

import Foundation
import Glibc
import HostRuntime
import Testing

/// The QEMU test guest that `make guest-image` (scripts/guest/make-image.sh) leaves in .cache/guest.
enum GuestImage {
    static let root: URL = {
        // Tests/ProcessTests/QEMUGuestTests.swift → the repository root.
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }()
    static var directory: URL {
        ProcessInfo.processInfo.environment["VIRIDIAN_GUEST_DIR"].map { URL(fileURLWithPath: $0) }
            ?? root.appendingPathComponent(".cache/guest")
    }
    /// The kernel and an initramfs (run-qemu.sh picks whichever compression make-image.sh used).
    static var present: Bool {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return files.contains("vmlinuz") && files.contains { $0.hasPrefix("initrd.cpio") }
    }
    /// The guest must run where CI runs (root); elsewhere it runs when the image was built.
    static var required: Bool { getuid() == 0 && ProcessInfo.processInfo.environment["CI"] != nil }
    static var script: URL { root.appendingPathComponent("scripts/guest") }
    /// The same guest after `apt-get purge` of the packages in its root (make-image.sh's purged/).
    static var purgedDirectory: URL { directory.appendingPathComponent("purged") }
    /// The release the packages carry (VERSION).
    static var version: String {
        ((try? String(contentsOf: root.appendingPathComponent("VERSION"), encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// One booted guest: viridian-host with a QEMU partition, QEMU itself, and the guest's serial console.
final class QEMUGuestRig: @unchecked Sendable {
    let fixture: HostFixture
    let qemu: Child
    let console: String
    let hostNS: String
    let subnet: Int
    let image: String

    /// `memoryMiB`: the guest's RAM; its root (the initramfs) may fill half of it (with 1024 MiB
    /// the root's 386 MiB left 9 MiB free: too little for the copies the tests make). `append`:
    /// more kernel command line; `partition`: more lines of the partition's configuration.
    init(subnet: Int = 91, imageDirectory: URL = GuestImage.directory, memoryMiB: Int = 1280,
         append: String = "", partition: String = "") throws {
        self.subnet = subnet
        hostNS = "vqh-\(getpid())"
        _ = try ipCommand(["netns", "add", hostNS])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-qemu-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        image = dir.appendingPathComponent("disk0.img").path
        let ram = "/dev/shm/viridian-test-\(getpid()).ram"
        fixture = try HostFixture(config: """
            [[partition]]
            name = "guest1"
            carrier = "qemu"
            memory_mib = \(memoryMiB)
            vps = 2
            echo_devices = 0
            heartbeat_interval_ms = 1000
            ram_file = "\(ram)"
            \(partition)
            [[partition.disk]]
            path = "\(image)"
            size_mib = 64
            [[partition.nic]]
            tap = "vq0"
            netns = "\(hostNS)"
            mac = "00:15:5d:51:00:02"
            """)
        console = fixture.directory.appendingPathComponent("console.sock").path
        qemu = try Child(GuestImage.script.appendingPathComponent("run-qemu.sh").path, [
            "--ram-file", ram, "--memory", String(memoryMiB), "--vps", "2",
            "--ivshmem-socket", fixture.directory.appendingPathComponent("guest1.ivshmem").path, "--vectors", "32",
            "--console-socket", console, "--image-dir", imageDirectory.path,
        ] + (append.isEmpty ? [] : ["--append", append]))
        try waitFor(path: console, seconds: 30)
        _ = try ipCommand(["-n", hostNS, "addr", "add", "10.77.\(subnet).1/24", "dev", "vq0"])
        _ = try ipCommand(["-n", hostNS, "link", "set", "vq0", "up"])
    }

    /// Runs `command` in the guest's root shell; its status and output.
    @discardableResult
    func guest(_ command: String, seconds: Double = 120) throws -> (Int32, String) {
        try run("/usr/bin/python3", [GuestImage.script.appendingPathComponent("console.py").path, "--socket", console,
                                     "run", "--timeout", String(Int(seconds)), "--", command], seconds: seconds + 10)
    }

    func waitForLogin(seconds: Double = 240) throws -> (Int32, String) {
        try run("/usr/bin/python3", [GuestImage.script.appendingPathComponent("console.py").path, "--socket", console,
                                     "wait-login", "--timeout", String(Int(seconds))], seconds: seconds + 10)
    }

    func host(_ arguments: [String]) throws -> (Int32, String) {
        try run("viridian-host", arguments + ["--runtime-dir", fixture.directory.path])
    }

    /// Shell lines for the guest: 100 files of random sizes into the file system at `mountpoint`,
    /// their sorted SHA-256 sums into /root/sums, then sync and unmount.
    static func fillFiles(_ mountpoint: String) -> String {
        """
        for i in $(seq 1 100); do head -c $((i * 397 % 60000 + 1)) /dev/urandom > \(mountpoint)/file$i; done
        (cd \(mountpoint) && sha256sum file* | sort) > /root/sums; sync; umount \(mountpoint)
        """
    }

    /// The 100 sums the guest printed (`fillFiles`) are those of the files in the host's image,
    /// mounted read-only at byte `offset` (the start of the guest's partition).
    func expectHostImage(holds guestOutput: String, offset: Int = 0) throws {
        let guestSums = guestOutput.split(separator: "\n").filter { $0.contains("file") }.map(String.init)
        #expect(guestSums.count == 100, "\(guestOutput)")
        let mnt = fixture.directory.appendingPathComponent("mnt").path
        let (code, hostSums) = try sh("mkdir -p \(mnt) && mount -o ro,loop,noload\(offset > 0 ? ",offset=\(offset)" : "") \(image) \(mnt) && (cd \(mnt) && sha256sum file* | sort); umount \(mnt)")
        #expect(code == 0 && hostSums.split(separator: "\n").map(String.init) == guestSums, "host: \(hostSums)")
    }

    /// 4 MiB of random bytes over TCP host → guest (nc listening in the guest, into /root/rx) and
    /// back guest → host, each direction checked by SHA-256. Returns the payload file and its sum.
    @discardableResult
    func tcpBothWays() throws -> (payload: String, sum: String) {
        let payload = fixture.directory.appendingPathComponent("payload").path
        _ = try sh("head -c 4194304 /dev/urandom > \(payload)")
        let sum = String(try sh("sha256sum < \(payload)").1.prefix(64))
        try guest("(nc -l 5001 > /root/rx &) ; sleep 1")
        let (sendCode, sendOut) = try netnsExec(hostNS, ["socat", "-u", "FILE:\(payload)", "TCP:10.77.\(subnet).2:5001"], seconds: 120)
        #expect(sendCode == 0, "\(sendOut)")
        #expect(try eventually(seconds: 60) { try guest("sha256sum < /root/rx").1.contains(sum) })
        let received = fixture.directory.appendingPathComponent("received").path
        let listener = try Child(nsenterTool, netnsEnter(hostNS) + ["socat", "-u", "TCP-LISTEN:5002,reuseaddr", "CREATE:\(received)"])
        usleep(500_000)
        let (upCode, upOut) = try guest("nc -N -w 30 10.77.\(subnet).1 5002 < /root/rx", seconds: 180)
        #expect(upCode == 0, "\(upOut)")
        listener.wait(seconds: 60)
        #expect(try sh("sha256sum < \(received)").1.hasPrefix(sum))
        return (payload, sum)
    }

    func tearDown() {
        qemu.signal(SIGKILL)
        qemu.wait(seconds: 10)
        _ = try? ipCommand(["netns", "delete", hostNS])
        unlink("/dev/shm/viridian-test-\(getpid()).ram")
    }
}

@Suite("A real Linux guest under QEMU", .serialized)
struct QEMUGuestTests {
    @Test("Stock Debian kernel boots, KernelGlue and the agent join; disk, NIC, KVP, shutdown; bad doorbells and a second QEMU are refused")
    func realGuest() throws {
        guard GuestImage.present || GuestImage.required else {
            print("QEMU guest test not run: no guest image (make guest-image builds it, as root)")
            return
        }
        #expect(GuestImage.present, "the guest image is missing: make guest-image")
        guard GuestImage.present else { return }
        let started = Date()
        let rig = try QEMUGuestRig()
        defer { rig.tearDown() }
        let (login, loginOut) = try rig.waitForLogin()
        try #require(login == 0, "no login prompt: \(loginOut)\nQEMU: \(rig.qemu.text)\nhost: \(rig.fixture.host.text)")
        let bootSeconds = Date().timeIntervalSince(started)

        // The agent joins by itself (systemd, udev): heartbeat ok, every device listed.
        let joined = try eventually(seconds: 180) { try rig.fixture.status().partitions[0].heartbeat == "ok" }
        let joinSeconds = Date().timeIntervalSince(started)
        let journal = joined ? "" : try rig.guest("journalctl -b -u viridian-agent --no-pager | tail -40").1
        #expect(joined, "host: \(rig.fixture.host.text)\nguest: \(journal)")
        let (_, lsmod) = try rig.guest("lsmod | grep -c viridian_glue; uname -r")
        #expect(lsmod.hasPrefix("1"), "\(lsmod)")
        let status = try rig.fixture.status().partitions[0]
        #expect(status.carrier == "qemu" && status.state == "attached")
        _ = try #require(try eventually(seconds: 60) { try rig.guest("viridian-agent list --running").0 == 0 })
        let (_, list) = try rig.guest("viridian-agent list --running")
        for device in ["Heartbeat", "Time Synchronization", "Operating system shutdown", "Data Exchange", "VSS (Backup/Restore)", "Guest services", "Synthetic SCSI Controller", "Synthetic network adapter"] {
            #expect(list.contains(device), "\(device) missing from:\n\(list)")
        }
        print("QEMU guest: login after \(Int(bootSeconds)) s, heartbeat ok after \(Int(joinSeconds)) s")
        print(list)
        try checkInstalledPackages(rig)

        // Storage: the kernel's nbd driver on the agent's export; ext4 made, filled and checked in the guest.
        var phase = Date()
        func lap(_ what: String) {
            print("QEMU guest: \(what) took \(String(format: "%.1f", Date().timeIntervalSince(phase))) s")
            phase = Date()
        }
        let (fsCode, fsOut) = try rig.guest("""
            set -e; modprobe nbd; sock=$(ls /run/viridian/disks/*.sock | head -1); nbd-client -unix $sock /dev/nbd0 -b 4096 >/dev/null
            mkfs.ext4 -q -F /dev/nbd0; mkdir -p /mnt/d; mount /dev/nbd0 /mnt/d
            \(QEMUGuestRig.fillFiles("/mnt/d"))
            e2fsck -f -n /dev/nbd0 >/dev/null; nbd-client -d /dev/nbd0 >/dev/null; cat /root/sums
            """, seconds: 600)
        #expect(fsCode == 0, "\(fsOut)")
        try rig.expectHostImage(holds: fsOut)
        lap("nbd-client + mkfs.ext4 + 100 files + e2fsck in the guest, checksums on the host")

        // Network: the guest TAP has the host's MAC; ping and TCP both ways across VMBus.
        let (_, link) = try rig.guest("ip -o link show viridian0")
        #expect(link.contains("00:15:5d:51:00:02"), "\(link)")
        try rig.guest("ip addr add 10.77.\(rig.subnet).2/24 dev viridian0; ip link set viridian0 up")
        let (ping, pingOut) = try netnsExec(rig.hostNS, ["ping", "-c", "3", "-W", "5", "10.77.\(rig.subnet).2"], seconds: 60)
        #expect(ping == 0, "\(pingOut)")
        print(pingOut.split(separator: "\n").filter { $0.contains("rtt") }.joined())
        phase = Date()
        let (payload, payloadSum) = try rig.tcpBothWays()
        lap("4 MiB each way over TCP, checksummed")

        // KVP: the guest's real OS name, kernel release and address.
        let (_, release) = try rig.guest("uname -r")
        let (kvpCode, kvp) = try rig.host(["kvp", "get", "guest1"])
        #expect(kvpCode == 0 && kvp.contains("Debian") && kvp.contains(release.trimmingCharacters(in: .whitespacesAndNewlines))
                && kvp.contains("10.77.\(rig.subnet).2"), "\(kvp)")
        phase = Date()
        try checkGuestServices(rig, payload: payload, payloadSum: payloadSum)
        lap("backup freeze/thaw, copy-file, IP injection through networkd")

        // The package's sandbox refused nothing the agent did above (TAP, NBD sockets, the clock
        // through the drop-in, KVP).
        let (_, warnings) = try rig.guest("journalctl -b -u viridian-agent -p warning -o cat --no-pager")
        print("QEMU guest: the agent's warnings: [\(warnings.trimmingCharacters(in: .whitespacesAndNewlines))]")
        for refusal in ["not permitted", "denied", "EPERM", "EACCES", "Read-only file system"] {
            #expect(!warnings.contains(refusal), "\(warnings)")
        }

        // Hostile: a second QEMU on the ivshmem socket; a doorbell rung by a guest that never joined.
        let (_, second) = try run("/usr/bin/socat", ["-u", "UNIX-CONNECT:\(rig.fixture.directory.path)/guest1.ivshmem", "OPEN:/dev/null"], seconds: 10)
        #expect(eventually(seconds: 10) { rig.fixture.host.text.contains("refused a second QEMU") }, "\(second)")
        try rig.guest("systemctl stop viridian-agent")
        #expect(try eventually(seconds: 30) { try rig.fixture.status().partitions[0].state == "waiting" })
        let (ringCode, ringOut) = try rig.guest("viridian-agent glue ring 1")
        #expect(ringCode == 0, "\(ringOut)")
        #expect(eventually(seconds: 10) { rig.fixture.host.text.contains("before the KernelGlue ready handshake") })
        try rig.guest("systemctl start viridian-agent")
        #expect(try eventually(seconds: 120) {
            let p = try rig.fixture.status().partitions[0]
            return p.state == "attached" && p.heartbeat == "ok" && p.attachCount >= 2
        }, "the agent rejoined: \(rig.fixture.host.text)")

        // Shutdown through systemd: QEMU exits by itself.
        // The rejoined agent negotiates the shutdown service after the heartbeat: ask until it answers.
        var offOut = ""
        let off = try eventually(seconds: 60) {
            let (code, out) = try rig.host(["shutdown", "guest1"])
            offOut = out
            return code == 0
        }
        #expect(off, "\(offOut)")
        #expect(rig.qemu.wait(seconds: 120) != nil, "QEMU still running after shutdown")
        print("QEMU guest: whole test \(Int(Date().timeIntervalSince(started))) s")
    }

    /// Backup, file copy and IP injection against the guest's real file system, its systemd-networkd
    /// and the packaged agent's sandbox.
    func checkGuestServices(_ rig: QEMUGuestRig, payload: String, payloadSum: String) throws {
        var phase = Date()
        func lap(_ what: String) {
            print("QEMU guest: \(what) took \(String(format: "%.1f", Date().timeIntervalSince(phase))) s")
            phase = Date()
        }
        // Backup: the ext4 on the agent's own NBD disk freezes (writes wait, fsfreeze agrees) and thaws.
        let (mounted, mountOut) = try rig.guest("""
            sock=$(ls /run/viridian/disks/*.sock | head -1); nbd-client -unix $sock /dev/nbd0 -b 4096 >/dev/null && mount /dev/nbd0 /mnt/d && echo mounted
            """, seconds: 120)
        #expect(mounted == 0 && mountOut.contains("mounted"), "\(mountOut)")
        let (check, checkOut) = try rig.host(["backup", "check", "guest1"])
        #expect(check == 0 && checkOut.contains("flags 0x5"), "\(checkOut)")
        let (frozen, frozenOut) = try rig.host(["backup", "freeze", "guest1"])
        #expect(frozen == 0, "\(frozenOut)")
        // The writer and fsfreeze run detached from the console shell (setsid -f): a command of the
        // console's own that touches the frozen file system leaves the shell's line unfinished.
        let (spawned, spawnOut) = try rig.guest("""
            rm -f /run/wdone /run/fsfreeze.out; setsid -f sh -c 'echo frozen > /mnt/d/during; echo done > /run/wdone' </dev/null >/dev/null 2>&1
            setsid -f sh -c 'fsfreeze -f /mnt/d > /run/fsfreeze.out 2>&1; echo rc=$? >> /run/fsfreeze.out' </dev/null >/dev/null 2>&1; echo spawned
            """, seconds: 30)
        let (waited, during) = try rig.guest("sleep 3; cat /run/wdone 2>/dev/null || echo blocked; cat /run/fsfreeze.out", seconds: 30)
        #expect(spawned == 0 && waited == 0 && during.contains("blocked") && during.contains("busy") && during.contains("rc=1"), "\(spawnOut) \(during)")
        let (thawed, thawedOut) = try rig.host(["backup", "thaw", "guest1"])
        #expect(thawed == 0, "\(thawedOut)")
        let (_, after) = try rig.guest("sleep 1; cat /run/wdone /mnt/d/during; umount /mnt/d; nbd-client -d /dev/nbd0 >/dev/null")
        #expect(after.contains("done\nfrozen"), "\(after)")
        let (_, vssLog) = try rig.guest("journalctl -b -u viridian-agent -o cat --no-pager | grep -e vss: | tail -n 3")
        print("QEMU guest: \(vssLog.trimmingCharacters(in: .whitespacesAndNewlines))")
        lap("backup check, freeze, a blocked write, thaw")

        // File copy into the allowed directory, refused outside it; a killed copy leaves nothing.
        let (copied, copyOut) = try rig.host(["copy-file", "guest1", payload, "/var/lib/viridian/incoming/payload.bin"])
        #expect(copied == 0, "\(copyOut)")
        let (_, sum) = try rig.guest("sha256sum < /var/lib/viridian/incoming/payload.bin; stat -c %a /var/lib/viridian/incoming/payload.bin")
        var st = stat()
        stat(payload, &st)
        #expect(sum.contains(payloadSum) && sum.contains("\n\(String(st.st_mode & 0o777, radix: 8))"), "\(sum)")
        let (outside, outsideOut) = try rig.host(["copy-file", "guest1", payload, "/etc/viridian-copied"])
        #expect(outside != 0 && outsideOut.contains("refused"), "\(outsideOut)")
        lap("copy-file of 4 MiB, and one refused")
        let killed = try Child("viridian-host", ["copy-file", "guest1", payload, "/var/lib/viridian/incoming/half.bin", "--runtime-dir", rig.fixture.directory.path])
        #expect(eventually(seconds: 60) { killed.text.contains(" %)") }, "\(killed.text)")
        killed.signal(SIGKILL)
        killed.wait(seconds: 5)
        #expect(try eventually(seconds: 30) { try rig.guest("ls -A /var/lib/viridian/incoming").1.trimmingCharacters(in: .whitespacesAndNewlines) == "payload.bin" })

        lap("a copy killed halfway, nothing left")
        // IP injection: networkd gets a .network file for viridian0 and the new address answers pings.
        let address = "10.77.\(rig.subnet).3"
        let (set, setOut) = try rig.host(["kvp", "set-ip", "guest1", "0", "--address", "\(address)/24", "--gateway", "10.77.\(rig.subnet).1",
                                          "--dns", "10.77.\(rig.subnet).1"])
        #expect(set == 0, "\(setOut)")
        let (_, networkd) = try rig.guest("cat /etc/systemd/network/10-viridian-viridian0.network")
        #expect(networkd.contains("Address=\(address)/24") && networkd.contains("Gateway=10.77.\(rig.subnet).1"), "\(networkd)")
        let configured = try eventually(seconds: 60) { try rig.guest("ip -o -4 addr show viridian0").1.contains("\(address)/24") }
        let networkctl = configured ? "" : try rig.guest("networkctl status viridian0 --no-pager; journalctl -b -u systemd-networkd -o cat --no-pager | tail").1
        #expect(configured, "\(networkctl)")
        let (ping, pingOut) = try netnsExec(rig.hostNS, ["ping", "-c", "2", "-W", "5", address], seconds: 60)
        #expect(ping == 0, "\(pingOut)")
        let (got, gotOut) = try rig.host(["kvp", "get-ip", "guest1", "0", "--json"])
        #expect(got == 0 && gotOut.contains(address) && gotOut.contains("255.255.255.0"), "\(gotOut)")
        lap("set-ip through networkd, ping, get-ip")
    }

    /// What the packages installed, as a user of the guest sees it: systemd runs the agent from the
    /// package's unit, DKMS built the module for this kernel, the unit's sandbox and syntax.
    func checkInstalledPackages(_ rig: QEMUGuestRig) throws {
        let (_, active) = try rig.guest("systemctl is-active viridian-agent; systemctl show -p FragmentPath --value viridian-agent")
        #expect(active.hasPrefix("active\n/lib/systemd/system/viridian-agent.service"), "\(active)")
        let (_, versions) = try rig.guest("dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' viridian-agent viridian-glue-dkms")
        for package in ["viridian-agent", "viridian-glue-dkms"] {
            #expect(versions.contains("\(package) \(GuestImage.version)-1 installed"), "\(versions)")
        }
        let (_, release) = try rig.guest("uname -r")
        let (_, dkms) = try rig.guest("dkms status; modinfo -n viridian_glue")
        #expect(dkms.contains("viridian-glue/\(GuestImage.version), \(release.trimmingCharacters(in: .whitespacesAndNewlines)), x86_64: installed"), "\(dkms)")
        #expect(dkms.contains("/updates/dkms/viridian_glue.ko"), "the loaded module is DKMS's: \(dkms)")
        let (_, man) = try rig.guest("ls /usr/share/man/man1/viridian-agent.1.gz && zcat /usr/share/man/man1/viridian-agent.1.gz | grep -c '^.SH'")
        #expect(man.hasPrefix("/usr/share/man/man1/viridian-agent.1.gz\n") && (Int(man.split(separator: "\n").last ?? "") ?? 0) >= 8,
                "the man page, one section per subcommand: \(man)")
        // --man=no: the test guest has no man-db (the page itself is checked above).
        let (verifyCode, verify) = try rig.guest("systemd-analyze verify --man=no /lib/systemd/system/viridian-agent.service 2>&1; echo rc=$?")
        #expect(verifyCode == 0 && verify.trimmingCharacters(in: .whitespacesAndNewlines) == "rc=0", "systemd-analyze verify: \(verify)")
        let (_, security) = try rig.guest("systemd-analyze security --no-pager viridian-agent.service | tail -n 1")
        // "→ Overall exposure level for viridian-agent.service: 2.7 OK :-)"
        let score = security.range(of: ".service: ").flatMap { security[$0.upperBound...].split(separator: " ").first }.flatMap { Double($0) }
        print("QEMU guest: systemd-analyze security viridian-agent.service: \(security.trimmingCharacters(in: .whitespacesAndNewlines))")
        #expect(score.map { $0 < 4.0 } == true, "exposure \(security)")
    }

    @Test("Packages: an upgrade keeps the edited conffile and restarts the agent; purge removes module, unit and state; the purged root boots")
    func packages() throws {
        guard GuestImage.present || GuestImage.required else { return }
        let upgrade = "/root/debs/viridian-agent_\(GuestImage.version)-2_amd64.deb"
        do {
            // The upgrade unpacks a second agent (60 MB) beside the first in the RAM-backed root.
            let rig = try QEMUGuestRig(subnet: 92, memoryMiB: 2048)
            defer { rig.tearDown() }
            let (login, loginOut) = try rig.waitForLogin()
            try #require(login == 0, "no login prompt: \(loginOut)")
            #expect(try eventually(seconds: 180) { try rig.fixture.status().partitions[0].heartbeat == "ok" }, "\(rig.fixture.host.text)")
            let (_, before) = try rig.guest("sha256sum < /etc/viridian/agent.toml; systemctl show -p MainPID --value viridian-agent")
            let attaches = try rig.fixture.status().partitions[0].attachCount

            // Upgrade to revision 2 with apt: the administrator's agent.toml stays, the service restarts.
            let (code, out) = try rig.guest("DEBIAN_FRONTEND=noninteractive apt-get install -y \(upgrade) 2>&1", seconds: 300)
            #expect(code == 0, "\(out)")
            let (_, after) = try rig.guest("sha256sum < /etc/viridian/agent.toml; systemctl show -p MainPID --value viridian-agent")
            let (beforeLines, afterLines) = (before.split(separator: "\n"), after.split(separator: "\n"))
            #expect(beforeLines.count == 2 && afterLines.count == 2 && beforeLines[0] == afterLines[0], "conffile kept: \(before) → \(after)")
            #expect(beforeLines.last != afterLines.last && afterLines.last != "0", "the agent restarted: \(before) → \(after)")
            let (_, version) = try rig.guest("dpkg-query -W -f='${Version}' viridian-agent; ls /etc/viridian")
            #expect(version.hasPrefix("\(GuestImage.version)-2") && !version.contains("dpkg-"), "\(version)\napt-get: \(out)")
            #expect(try eventually(seconds: 120) {
                let p = try rig.fixture.status().partitions[0]
                return p.attachCount > attaches && p.heartbeat == "ok"
            }, "the upgraded agent rejoined: \(rig.fixture.host.text)")

            // Purge: the agent leaves the bus, and the module, the unit, the udev rule and the state go.
            let (purgeCode, purgeOut) = try rig.guest("DEBIAN_FRONTEND=noninteractive apt-get purge -y viridian-agent viridian-glue-dkms 2>&1", seconds: 300)
            #expect(purgeCode == 0, "\(purgeOut)")
            #expect(try eventually(seconds: 30) { try rig.fixture.status().partitions[0].state == "waiting" }, "the agent left")
            // It stopped on SIGTERM and exited 0 (it left the bus), not killed after the stop timeout.
            let (_, journal) = try rig.guest("journalctl -u viridian-agent --no-pager -o cat | tail -n 8")
            #expect(journal.contains("Deactivated successfully") && !journal.contains("SIGKILL") && !journal.contains("Failed with result"), "\(journal)")
            let (_, left) = try rig.guest("""
                for f in /lib/systemd/system/viridian-agent.service /etc/systemd/system/multi-user.target.wants/viridian-agent.service \\
                    /lib/udev/rules.d/60-viridian-agent.rules /etc/viridian /var/lib/viridian /usr/bin/viridian-agent \\
                    /usr/src/viridian-glue-\(GuestImage.version) /var/lib/dkms/viridian-glue; do [ -e $f ] && echo "left: $f"; done
                modinfo -n viridian_glue 2>/dev/null | sed 's/^/left: /'; dkms status | sed 's/^/left: /'
                systemctl list-unit-files 'viridian-agent*' --no-legend | sed 's/^/left: /'; echo checked
                """)
            #expect(!left.contains("left:") && left.contains("checked"), "\(left)")
        }
        // The root the packages were installed in and purged from (by apt, in make-image.sh) boots.
        let purged = GuestImage.purgedDirectory
        #expect(FileManager.default.fileExists(atPath: purged.appendingPathComponent("vmlinuz").path), "make-image.sh made no purged image")
        guard FileManager.default.fileExists(atPath: purged.appendingPathComponent("vmlinuz").path) else { return }
        let rig = try QEMUGuestRig(subnet: 93, imageDirectory: purged)
        defer { rig.tearDown() }
        let (login, loginOut) = try rig.waitForLogin()
        try #require(login == 0, "the purged root does not boot: \(loginOut)")
        let (_, state) = try rig.guest("systemctl is-system-running --wait; systemctl --failed --no-legend; dpkg -l 'viridian*' 2>&1 | grep -c '^ii'")
        #expect(state.hasPrefix("running\n0"), "the purged guest: \(state)")
        #expect(try rig.fixture.status().partitions[0].state == "waiting", "no agent joins from the purged root")
        let (_, off) = try run("/usr/bin/python3", [GuestImage.script.appendingPathComponent("console.py").path, "--socket", rig.console, "poweroff"], seconds: 90)
        #expect(rig.qemu.wait(seconds: 90) != nil, "the purged guest did not power off: \(off)")
    }
}

@Suite("KernelGlue carrier errors")
struct KernelGlueErrorTests {
    @Test("An agent with link = kernelglue and no module says so in one line")
    func noModule() throws {
        guard access("/sys/module/viridian_glue", F_OK) != 0 else { return }
        let (code, out) = try run("viridian-agent", ["run", "--link", "kernelglue"], seconds: 30)
        #expect(code != 0)
        let lines = out.split(separator: "\n").filter { !$0.isEmpty }
        #expect(lines.count == 1 && out.contains("KernelGlue is not loaded") && out.contains("modprobe viridian_glue"), "\(out)")
    }
}
