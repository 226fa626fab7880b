// Linux's own VMBus drivers (Debian's unmodified hv_storvsc, hv_netvsc, hv_utils) against viridian-host,
// through KernelGlue's VMBus core in the QEMU guest.

import Foundation
import Glibc
import Testing

extension QEMUGuestTests {
    /// The guest's command line for the stock-driver mode: KernelGlue's VMBus core instead of
    /// viridian_glue and the agent (make-image.sh --vmbus-core).
    static let stockDriverMode = "viridian.core=vmbus modprobe.blacklist=viridian_glue"

    @Test("Debian's own hv_storvsc, hv_netvsc and hv_utils bind to viridian-host's offers: a partitioned ext4 disk, ping and TCP, heartbeat, time, KVP, shutdown")
    func stockDrivers() throws {
        guard GuestImage.present || GuestImage.required else { return }
        #expect(GuestImage.present, "the guest image is missing: make guest-image")
        guard GuestImage.present else { return }
        let started = Date()
        // The host's clock is two hours ahead for this partition: hv_utils' SYNC steps the guest to it.
        let rig = try QEMUGuestRig(subnet: 92, append: Self.stockDriverMode, partition: "time_offset_ms = 7200000")
        defer { rig.tearDown() }
        let (login, loginOut) = try rig.waitForLogin()
        try #require(login == 0, "no login prompt: \(loginOut)\nQEMU: \(rig.qemu.text)\nhost: \(rig.fixture.host.text)")
        var phase = Date()
        func lap(_ what: String) {
            print("QEMU stock drivers: \(what) took \(String(format: "%.1f", Date().timeIntervalSince(phase))) s")
            phase = Date()
        }

        // The bus: every offer is a device, each bound by its stock driver (udev loads them by modalias).
        let bound = try eventually(seconds: 120) {
            let (_, out) = try rig.guest("ls /sys/bus/vmbus/drivers/hv_storvsc /sys/bus/vmbus/drivers/hv_netvsc /sys/bus/vmbus/drivers/hv_utils 2>/dev/null | grep -c -- -")
            return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 >= 5
        }
        let (_, listing) = try rig.guest("""
            for d in /sys/bus/vmbus/devices/*; do printf '%s relid %s class %s driver %s\\n' "$(basename $d)" "$(cat $d/id)" "$(cat $d/class_id)" "$(basename "$(readlink $d/driver)")"; done
            lsmod | grep -E '^(hv_|viridian)' | awk '{print $1}' | sort | tr '\\n' ' '; echo; cat /proc/sys/kernel/tainted
            """)
        print("QEMU stock drivers: /sys/bus/vmbus/devices\n\(listing)")
        #expect(bound, "drivers not bound:\n\(listing)\n\((try? rig.guest("dmesg | grep -iE 'vmbus|hv_|storvsc|netvsc' | tail -40").1) ?? "")")
        for driver in ["hv_storvsc", "hv_netvsc", "hv_utils", "viridian_vmbus"] {
            #expect(listing.contains(driver), "\(driver) missing:\n\(listing)")
        }
        #expect(!listing.contains("viridian_glue"), "viridian_glue is loaded in the stock-driver mode")
        // The stock modules loaded without --force-modversion: no forced-load taint (bit 1).
        let taint = Int(listing.split(separator: "\n").last ?? "") ?? -1
        #expect(taint >= 0 && taint & 2 == 0, "taint \(taint)")
        lap("boot to bound drivers")

        // Storage: hv_storvsc's SCSI disk, partitioned, ext4, 100 files, e2fsck -f; the host reads them from its image.
        // In a subshell: the console's shell is shared, and set -e would outlive this command.
        let (fsCode, fsOut) = try rig.guest("""
            (set -e; disk=$(lsblk -ndo NAME | grep '^sd' | head -1)
            test -n "$disk"; echo "disk /dev/$disk"; cat /sys/block/$disk/device/vendor /sys/block/$disk/device/model
            echo 'start=2048, type=83' | sfdisk -q /dev/$disk
            for i in $(seq 50); do [ -b /dev/${disk}1 ] && break; sleep 0.2; done
            mkfs.ext4 -q -F /dev/${disk}1; mkdir -p /mnt/s; mount /dev/${disk}1 /mnt/s
            \(QEMUGuestRig.fillFiles("/mnt/s"))
            e2fsck -f -n /dev/${disk}1 >/dev/null; cat /root/sums)
            """, seconds: 600)
        #expect(fsCode == 0, "\(fsOut)\n\((try? rig.guest("dmesg | grep -iE 'storvsc|scsi|sd ' | tail -30").1) ?? "")")
        try rig.expectHostImage(holds: fsOut, offset: 1 << 20)
        lap("sfdisk + mkfs.ext4 + 100 files + e2fsck -f on hv_storvsc's disk, checksums on the host")

        // Network: hv_netvsc's interface carries the host's MAC; ping and TCP both ways; offloads negotiated.
        let (_, nic) = try rig.guest("ip -o link | grep -i 00:15:5d:51:00:02 | awk -F': ' '{print $2}'")
        let ifname = nic.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!ifname.isEmpty, "no interface with the host's MAC: \((try? rig.guest("ip -o link").1) ?? "")")
        try rig.guest("ip addr add 10.77.\(rig.subnet).2/24 dev \(ifname); ip link set \(ifname) up")
        let (ping, pingOut) = try netnsExec(rig.hostNS, ["ping", "-c", "3", "-W", "5", "10.77.\(rig.subnet).2"], seconds: 60)
        #expect(ping == 0, "\(pingOut)\n\((try? rig.guest("dmesg | grep -iE 'netvsc|rndis' | tail -30").1) ?? "")")
        let (_, offloads) = try rig.guest("ethtool -k \(ifname) | grep -E '^(rx-checksumming|tx-checksumming|tcp-segmentation-offload|generic-receive-offload|scatter-gather):'; ethtool -i \(ifname) | head -2")
        print("QEMU stock drivers: ethtool -k \(ifname)\n\(offloads)")
        #expect(offloads.contains("tx-checksumming: on") && offloads.contains("tcp-segmentation-offload: on"), "\(offloads)")
        try rig.tcpBothWays()
        lap("ping, 4 MiB each way over TCP through hv_netvsc, checksummed")

        // hv_netvsc closes and re-requests its sub-channels on a channel-count change (and on an
        // MTU change); the host offers new ones each time and traffic goes on.
        let (channels, channelsOut) = try rig.guest("""
            ethtool -L \(ifname) combined 1 && ethtool -L \(ifname) combined 2 && ethtool -l \(ifname) | tail -1
            ip link set \(ifname) up; ip addr replace 10.77.\(rig.subnet).2/24 dev \(ifname); sleep 1
            ping -c 2 -W 5 10.77.\(rig.subnet).1 >/dev/null && echo reachable
            """, seconds: 120)
        #expect(channels == 0 && channelsOut.contains("Combined:\t2") && channelsOut.contains("reachable"),
                "\(channelsOut)\n\((try? rig.guest("dmesg | tail -20; journalctl -b --no-pager | tail -20").1) ?? "")")
        // storvsc: a LUN hot-added and removed by the host (ENUMERATE_BUS, then INVALID_LUN for the gone one).
        let extra = rig.fixture.directory.appendingPathComponent("disk1.img").path
        let (added, addedOut) = try rig.host(["disk", "add", "guest1", extra, "--size-mib", "16"])
        #expect(added == 0, "\(addedOut)")
        #expect(try eventually(seconds: 30) { try rig.guest("lsblk -ndo NAME,SIZE").1.contains("16M") }, "no second disk")
        let (removed, removedOut) = try rig.host(["disk", "remove", "guest1", "1"])
        #expect(removed == 0, "\(removedOut)")
        #expect(try eventually(seconds: 30) { !(try rig.guest("lsblk -ndo NAME,SIZE").1.contains("16M")) }, "the removed disk stayed")
        lap("netvsc channels 1 → 2, a LUN hot-added and removed")

        // hv_utils: heartbeat, the clock stepped to the host's (+2 h), KVP through hv_kvp_daemon.
        #expect(try eventually(seconds: 60) { try rig.fixture.status().partitions[0].heartbeat == "ok" }, "\(rig.fixture.host.text)")
        let (_, guestClock) = try rig.guest("date +%s; cat /sys/class/ptp/ptp*/clock_name 2>/dev/null")
        let skew = (Double(guestClock.split(separator: "\n").first ?? "") ?? 0) - Date().timeIntervalSince1970
        print("QEMU stock drivers: guest clock - host clock = \(String(format: "%.1f", skew)) s (host offset +7200 s); PTP: \(guestClock.split(separator: "\n").dropFirst().joined())")
        #expect(abs(skew - 7200) < 30, "hv_utils did not step the clock to the host's: \(guestClock)")
        #expect(guestClock.contains("hyperv"), "no hyperv PTP clock: \(guestClock)")
        try rig.guest("setsid -f hv_kvp_daemon -n </dev/null >/root/kvp.log 2>&1; sleep 2")
        let (_, release) = try rig.guest("uname -r")
        var kvp = ""
        let kvpOK = try eventually(seconds: 90) {
            kvp = try rig.host(["kvp", "get", "guest1"]).1
            return kvp.contains(release.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        print("QEMU stock drivers: viridian-host kvp get guest1\n\(kvp)")
        #expect(kvpOK, "\(kvp)\n\((try? rig.guest("cat /root/kvp.log; dmesg | grep -i kvp | tail").1) ?? "")")
        lap("heartbeat, time, KVP")

        // Throughput: the in-kernel VSCs, then in the same guest with the same host the agent's
        // user-space VSCs (viridian_vmbus unloaded, viridian_glue and the agent started), then back.
        let stock = try measureThroughput(rig, stack: "stock (hv_storvsc, hv_netvsc)", device: "/dev/$(lsblk -ndo NAME | grep '^sd' | head -1)")
        // hv_netvsc's TCP goes out in multi-range GPA-direct packets: when the core sent only one
        // range of each, 2000–3000 segments a run were lost and retransmitted.
        #expect(stock.retransmits.map { $0 < 100 } == true, "TCP retransmissions through hv_netvsc: \(String(describing: stock.retransmits))")
        let (toAgent, toAgentOut) = try rig.guest("""
            systemctl stop hv-kvp-daemon hv-vss-daemon hv-fcopy-daemon 2>/dev/null; pkill -x hv_kvp_daemon; sleep 1
            rmmod hv_utils hv_netvsc hv_storvsc && rmmod viridian_vmbus && modprobe viridian_glue && systemctl start viridian-agent
            """, seconds: 120)
        #expect(toAgent == 0, "\(toAgentOut)")
        #expect(try eventually(seconds: 60) { try rig.fixture.status().partitions[0].attachCount >= 2 && rig.guest("ls /run/viridian/disks/*.sock").0 == 0 },
                "the agent did not join after the switch: \(rig.fixture.host.text.suffix(1500))")
        try rig.guest("ip link set viridian0 up; ip addr replace 10.77.\(rig.subnet).2/24 dev viridian0")
        try rig.guest("modprobe nbd; sock=$(ls /run/viridian/disks/*.sock | head -1); nbd-client -unix $sock /dev/nbd0 -b 4096 >/dev/null")
        let agent = try measureThroughput(rig, stack: "agent (NBD export, viridian0 TAP)", device: "/dev/nbd0")
        let (back, backOut) = try rig.guest("""
            nbd-client -d /dev/nbd0 >/dev/null; systemctl stop viridian-agent && rmmod viridian_glue && modprobe viridian_vmbus && echo back
            """, seconds: 120)
        #expect(back == 0 && backOut.contains("back"), "\(backOut)")
        for (name, t) in [("stock", stock), ("agent", agent)] {
            #expect(t.writeMBs != nil && t.readMBs != nil && t.txMbits != nil && t.rxMbits != nil, "\(name): \(t)")
        }
        func ratio(_ a: Double?, _ b: Double?) -> String { a.flatMap { x in b.map { String(format: "%.2f", x / $0) } } ?? "?" }
        print("""
            throughput (same guest, same host; stock / agent): storage write \(ratio(stock.writeMBs, agent.writeMBs)), \
            read \(ratio(stock.readMBs, agent.readMBs)); TCP guest → host \(ratio(stock.txMbits, agent.txMbits)), \
            host → guest \(ratio(stock.rxMbits, agent.rxMbits))
            """)
        lap("throughput, both stacks")
        // The core joined again (a third attach): the stock drivers are bound again and answer.
        #expect(try eventually(seconds: 60) {
            let p = try rig.fixture.status().partitions[0]
            return p.attachCount >= 3 && p.heartbeat == "ok"
        }, "hv_utils did not come back: \(rig.fixture.host.text.suffix(1500))")

        // Shutdown: hv_utils powers the guest off.
        let (off, offOut) = try rig.host(["shutdown", "guest1"])
        #expect(off == 0, "\(offOut)")
        #expect(rig.qemu.wait(seconds: 120) != nil, "QEMU still running after shutdown")
        print("QEMU stock drivers: whole test \(Int(Date().timeIntervalSince(started))) s")
    }

    /// What `measureThroughput` read off dd and iperf3.
    struct Throughput {
        var writeMBs: Double?
        var readMBs: Double?
        var txMbits: Double?
        var rxMbits: Double?
        var retransmits: Int?
    }

    /// dd with direct I/O on `device` (a shell word naming the disk) and iperf3 both ways, printed
    /// as "throughput:" lines.
    @discardableResult
    func measureThroughput(_ rig: QEMUGuestRig, stack: String, device: String) throws -> Throughput {
        var t = Throughput()
        // "33554432 bytes (34 MB, 32 MiB) copied, 0.114555 s, 293 MB/s"
        func rate(_ line: Substring, unit: String) -> Double? {
            let words = line.split(separator: " ")
            guard let i = words.firstIndex(where: { $0.hasPrefix(unit) }), i > words.startIndex else { return nil }
            return Double(words[words.index(before: i)])
        }
        let (_, dd) = try rig.guest("""
            disk=\(device)
            dd if=/dev/zero of=$disk bs=1M count=32 seek=16 oflag=direct 2>&1 | tail -1
            dd if=$disk of=/dev/null bs=1M count=32 skip=16 iflag=direct 2>&1 | tail -1
            """, seconds: 300)
        let lines = dd.split(separator: "\n")
        t.writeMBs = lines.first.flatMap { rate($0, unit: "MB/s") ?? rate($0, unit: "GB/s").map { $0 * 1000 } }
        t.readMBs = lines.dropFirst().first.flatMap { rate($0, unit: "MB/s") ?? rate($0, unit: "GB/s").map { $0 * 1000 } }
        print("throughput: \(stack) storage (dd 32 x 1 MiB direct, write | read): \(lines.joined(separator: " | "))")
        for reverse in [false, true] {
            let server = try Child(nsenterTool, netnsEnter(rig.hostNS) + ["iperf3", "-s", "-1", "-p", "5201"])
            defer { server.signal(SIGKILL); server.wait(seconds: 5) }
            usleep(500_000)
            let (_, iperf) = try rig.guest("iperf3 -c 10.77.\(rig.subnet).1 -p 5201 -t 5 -f m\(reverse ? " -R" : "") 2>&1 | grep -E 'sender|receiver'", seconds: 120)
            print("throughput: \(stack) network (iperf3 \(reverse ? "host → guest" : "guest → host"), 5 s): \(iperf.split(separator: "\n").joined(separator: " | "))")
            // "[  5]   0.00-5.00   sec  1.51 GBytes  2599 Mbits/sec    0             sender"
            guard let receiver = iperf.split(separator: "\n").first(where: { $0.hasSuffix("receiver") }) else { continue }
            if reverse { t.rxMbits = rate(receiver, unit: "Mbits/sec") } else { t.txMbits = rate(receiver, unit: "Mbits/sec") }
            if !reverse, let sender = iperf.split(separator: "\n").first(where: { $0.hasSuffix("sender") }) {
                t.retransmits = sender.split(separator: " ").dropLast().last.flatMap { Int($0) }
            }
        }
        return t
    }
}
