// Backup (VSS), guest file copy (FCOPY) and KVP IP injection over a VMBus session in memory:
// the layouts pinned, both ends together, and what a hostile host may send.

import Foundation
import Glibc
import IntegrationServices
import Loopback
import Testing
import VMBusWire

/// A freezer that records what it was asked and can be told to fail.
final class FakeFreezer: FileSystemFreezer {
    var frozen: [String] = []
    var fail = false
    var thaws = 0
    var isFrozen: Bool { !frozen.isEmpty }
    func freeze() throws(FreezeError) -> [String] {
        if fail { throw .failed("/mnt/b", errno: EIO) }
        frozen = ["/mnt/a", "/mnt/b"]
        return frozen
    }
    func thaw() -> [String] {
        thaws += 1
        frozen = []
        return []
    }
}

/// An IP configurator that keeps what it was given.
final class FakeIP: IPConfigurator {
    var applied: [KVPIPInfo] = []
    func read(adapterID: String) throws(IPConfigError) -> KVPIPInfo {
        guard adapterID == "00:15:5D:00:00:01" else { throw .noSuchAdapter(adapterID) }
        return applied.last ?? KVPIPInfo(adapterID: adapterID, addresses: ["192.0.2.9"], subnets: ["255.255.255.0"])
    }
    func apply(_ info: KVPIPInfo) throws(IPConfigError) {
        _ = try IPPlan(info, interface: "eth0")
        applied.append(info)
    }
}

func temporaryDirectory(_ tag: String) -> String {
    let d = NSTemporaryDirectory() + "viridian-\(tag)-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

@Suite("Backup, file copy and IP injection")
struct GuestServicesTests {
    @Test("Layouts: hv_vss_msg 12 bytes, hv_start_fcopy 1088, hv_do_fcopy 6196, hv_kvp_ip_msg 7428, fields where Linux has them")
    func layouts() throws {
        let vss = VSSMessage(.hotBackup, flags: 5).encoded
        #expect(vss == [2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0])

        let start = try FCopyStart(fileName: "a", pathName: "/b", flags: [.overwrite, .createPath], fileSize: 0x0102_0304_0506_0708, mode: 0o640).encoded()
        #expect(start.count == 1088)
        #expect(start[0..<4] == [0, 0, 0, 0])
        #expect(start[36..<40] == [0x61, 0, 0, 0])           // file_name "a", NUL
        #expect(start[556..<562] == [0x2F, 0, 0x62, 0, 0, 0]) // path_name "/b", NUL
        #expect(start[1076..<1080] == [3, 0, 0, 0])
        #expect(start[1080..<1088] == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(Array(start[20..<28]) == Array("VRDNMODE".utf8) && start[28..<32] == [0xA0, 0x01, 0, 0])
        #expect(try FCopyStart(decoding: start) == FCopyStart(fileName: "a", pathName: "/b", flags: [.overwrite, .createPath],
                                                             fileSize: 0x0102_0304_0506_0708, mode: 0o640))

        let data: [UInt8] = [9, 8, 7]
        let fragment = data.withUnsafeBytes { FCopyFragment.body(offset: 0x1122, data: $0) }
        #expect(fragment.count == 6196)
        #expect(fragment[0..<4] == [1, 0, 0, 0] && fragment[36..<40] == [0, 0, 0, 0])
        #expect(fragment[40..<48] == [0x22, 0x11, 0, 0, 0, 0, 0, 0] && fragment[48..<52] == [3, 0, 0, 0] && fragment[52..<55] == [9, 8, 7])

        var ip = [UInt8](repeating: 0, count: KVPIPInfo.size)
        try KVPIPInfo(adapterID: "A", family: 1, dhcp: true, addresses: ["1", "2"], subnets: ["3"], gateways: ["4"], dns: ["5"]).write(into: &ip)
        #expect(ip.count == 7428)
        #expect(ip[2..<6] == [0x41, 0, 0, 0] && ip[258] == 1 && ip[259] == 1)
        #expect(ip[260..<268] == [0x31, 0, 0x3B, 0, 0x32, 0, 0, 0])   // "1;2"
        #expect(ip[2308] == 0x33 && ip[4356] == 0x34 && ip[5380] == 0x35)
    }

    @Test("VSS: negotiates 3.0/5.0; freeze, check, thaw; a failed freeze leaves nothing frozen; no THAW thaws by itself")
    func vss() throws {
        let time = VirtualTime()
        let provider = VSSProvider(instanceID: GUID(low: 5, high: 5), logger: quiet, now: time.now)
        let freezer = FakeFreezer()
        let service = VSSService(freezer: freezer, autoThawNs: 10_000_000_000, now: time.now, logger: quiet, background: false)
        let (machine, client) = try icMachine(provider, service: service)
        #expect(client.negotiated == ICVersion(5, 0) && provider.negotiated?.framework == ICVersion(3, 0))
        func ask(_ op: VSSOperation) -> VSSAnswer? {
            var answer: VSSAnswer??
            provider.send(op) { answer = .some($0) }
            machine.pump()
            return answer ?? nil
        }
        #expect(ask(.hotBackup) == VSSAnswer(status: ICStatus.ok, flags: VSSMessage.noAutoRecovery))
        #expect(ask(.getDMInfo) == VSSAnswer(status: ICStatus.ok, flags: 0))
        #expect(ask(.freeze)?.status == ICStatus.ok && freezer.frozen == ["/mnt/a", "/mnt/b"])
        #expect(ask(.thaw)?.status == ICStatus.ok && !freezer.isFrozen && freezer.thaws == 1)

        freezer.fail = true
        #expect(ask(.freeze)?.status == ICStatus.fail && !freezer.isFrozen)
        freezer.fail = false

        // The host never sends THAW: the guest thaws once the timeout has passed, not before.
        #expect(ask(.freeze)?.status == ICStatus.ok)
        time.ns += 9_000_000_000
        client.service.tick(now: time.ns)
        #expect(freezer.isFrozen)
        time.ns += 2_000_000_000
        client.service.tick(now: time.ns)
        #expect(!freezer.isFrozen && service.autoThaws == 1)

        // The channel going away while frozen thaws too.
        #expect(ask(.freeze)?.status == ICStatus.ok)
        client.service.channelClosed()
        #expect(!freezer.isFrozen)
    }

    @Test("VSS: a message shorter than hv_vss_msg is refused, not read past its end")
    func vssShort() throws {
        let service = VSSService(freezer: FakeFreezer(), autoThawNs: 1, now: { 0 }, logger: quiet, background: false)
        let header = ICHeader(framework: ICVersion(3, 0), type: .vss, version: ICVersion(5, 0), bodySize: 4)
        var packet = ICHeader.packet(header, body: [5, 0, 0, 0])
        let (_, client) = try icMachine(VSSProvider(instanceID: GUID(low: 6, high: 6), logger: quiet, now: { 0 }), service: service)
        #expect(service.handle(header, packet: &packet, version: ICVersion(5, 0), transactionID: 0, client: client) == ICStatus.invalidArgument)
    }

    /// A loopback FCOPY pair writing under a fresh allowed directory.
    struct CopyRig {
        let machine: LoopbackMachineHandle
        let provider: FCopyProvider
        let service: FCopyService
        let client: ICClient
        let root: String

        init() throws {
            root = temporaryDirectory("fcopy")
            provider = FCopyProvider(instanceID: GUID(low: 7, high: 7), logger: quiet, now: { 0 })
            service = FCopyService(allowed: [root + "/in"], now: { 0 }, logger: quiet, background: false)
            try FileManager.default.createDirectory(atPath: root + "/in", withIntermediateDirectories: true)
            let (m, c) = try icMachine(provider, service: service)
            machine = LoopbackMachineHandle(m)
            client = c
        }

        /// Copies `bytes` to `destination` through the provider.
        func copy(_ bytes: [UInt8], to destination: String, flags: FCopyFlags = [], mode: UInt32 = 0o640, cancelAt: UInt64? = nil) throws -> FCopyResult? {
            let source = root + "/source-\(UUID().uuidString.prefix(6))"
            #expect(FileManager.default.createFile(atPath: source, contents: Data(bytes)))
            let fd = open(source, O_RDONLY)
            defer { close(fd) }
            var result: FCopyResult?
            var sent: UInt64 = 0
            provider.copy(fd: fd, size: UInt64(bytes.count), destination: destination, flags: flags, mode: mode,
                          progress: { sent = $0 }, cancelled: { cancelAt.map { sent >= $0 } ?? false }, completion: { result = $0 })
            try machine.value.run(until: { result != nil }, "copy")
            return result
        }

        /// What the allowed directory holds (temporary files included), recursively.
        var listing: [String] { (FileManager.default.subpaths(atPath: root + "/in") ?? []).sorted() }

        /// Sends one raw FCOPY request as a host would.
        func raw(_ body: [UInt8]) throws -> UInt32? {
            var status: UInt32?
            provider.request(.fileCopy, body: body) { if case .answered(let h, _) = $0 { status = h.status } }
            try machine.value.run(until: { status != nil }, "answer")
            return status
        }
    }

    @Test("FCOPY: a file arrives whole with its mode; an existing one needs overwrite; create-path makes directories")
    func fcopy() throws {
        let rig = try CopyRig()
        defer { try? FileManager.default.removeItem(atPath: rig.root) }
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 7) }
        #expect(try rig.copy(bytes, to: rig.root + "/in/data.bin") == .copied(100_000))
        #expect(FileManager.default.contents(atPath: rig.root + "/in/data.bin") == Data(bytes))
        var st = stat()
        stat(rig.root + "/in/data.bin", &st)
        #expect(st.st_mode & 0o777 == 0o640)
        #expect(try rig.copy([1], to: rig.root + "/in/data.bin") == .refused(step: "START_FILE_COPY", status: ICStatus.alreadyExists))
        #expect(try rig.copy([1, 2], to: rig.root + "/in/data.bin", flags: .overwrite) == .copied(2))
        #expect(FileManager.default.contents(atPath: rig.root + "/in/data.bin") == Data([1, 2]))
        #expect(try rig.copy([3], to: rig.root + "/in/x/y/z") == .refused(step: "START_FILE_COPY", status: ICStatus.fail))
        #expect(try rig.copy([3], to: rig.root + "/in/x/y/z", flags: .createPath) == .copied(1))
        #expect(try rig.copy([], to: rig.root + "/in/empty") == .copied(0))
        #expect(rig.listing == ["data.bin", "empty", "x", "x/y", "x/y/z"])
    }

    @Test("FCOPY: cancelled halfway, the guest keeps nothing; neither does a closed channel")
    func fcopyCancel() throws {
        let rig = try CopyRig()
        defer { try? FileManager.default.removeItem(atPath: rig.root) }
        let bytes = [UInt8](repeating: 7, count: 60_000)
        #expect(try rig.copy(bytes, to: rig.root + "/in/half", cancelAt: 30_000) == .cancelled)
        #expect(rig.listing.isEmpty)
        _ = try rig.raw(try FCopyStart(fileName: "open", pathName: rig.root + "/in", flags: [], fileSize: 10).encoded())
        #expect(rig.listing.count == 1 && rig.service.inProgress)
        rig.client.service.channelClosed()
        #expect(rig.listing.isEmpty)
        // A host that stops sending fragments: after two idle minutes the partial file goes.
        _ = try rig.raw(try FCopyStart(fileName: "idle", pathName: rig.root + "/in", flags: [], fileSize: 10).encoded())
        rig.client.service.tick(now: FCopyService.idleTimeoutNs)
        #expect(rig.listing.count == 1, "not idle long enough yet")
        rig.client.service.tick(now: FCopyService.idleTimeoutNs + 1)
        #expect(rig.listing.isEmpty && !rig.service.inProgress)
    }

    @Test("FCOPY hostile: traversal, absolute escapes, symlinks, bad names, unterminated and embedded-NUL names, bad fragments")
    func fcopyHostile() throws {
        let rig = try CopyRig()
        defer { try? FileManager.default.removeItem(atPath: rig.root) }
        let outside = rig.root + "/outside"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: rig.root + "/in/link", withDestinationPath: outside)
        symlink(outside + "/target", rig.root + "/in/dangling")
        let invalid = FCopyResult.refused(step: "START_FILE_COPY", status: ICStatus.invalidArgument)
        #expect(try rig.copy([1], to: rig.root + "/in/../outside/f") == invalid)
        #expect(try rig.copy([1], to: outside + "/f") == invalid)
        #expect(try rig.copy([1], to: "/etc/passwd-viridian") == invalid)
        #expect(try rig.copy([1], to: rig.root + "/in/link/f") == invalid)
        #expect(try rig.copy([1], to: rig.root + "/in/link/f", flags: .createPath) == invalid)
        #expect(try rig.copy([1], to: rig.root + "/in/dangling", flags: .overwrite) == invalid)
        #expect(try rig.copy([1], to: rig.root + "/in/link", flags: .overwrite) == invalid)
        #expect(try rig.copy([1], to: rig.root + "/in/.") == invalid)
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)

        func start(_ name: [UInt16], path: String) throws -> [UInt8] {
            var b = try FCopyStart(fileName: "x", pathName: path, flags: [], fileSize: 4).encoded()
            for i in 0..<260 { b.putLE(i < name.count ? name[i] : 0, at: 36 + 2 * i) }
            return b
        }
        let dir = rig.root + "/in"
        #expect(try rig.raw(try start([UInt16](repeating: 0x41, count: 260), path: dir)) == ICStatus.invalidArgument)   // no NUL
        #expect(try rig.raw(try start([0x61, 0, 0x62], path: dir)) == ICStatus.invalidArgument)                      // "a\0b"
        #expect(try rig.raw(try start([0x61, 0x2F, 0x62], path: dir)) == ICStatus.invalidArgument)                   // "a/b"
        #expect(try rig.raw(try start([0xD800], path: dir)) == ICStatus.invalidArgument)                             // lone surrogate
        #expect(try rig.raw(Array(try start([0x61], path: dir)[0..<600])) == ICStatus.invalidArgument)              // truncated
        #expect(try rig.raw([9, 0, 0, 0]) == ICStatus.invalidArgument)                                               // unknown operation

        // Fragments: none before START, none out of order, none past the declared size, none oversized.
        func fragment(_ offset: UInt64, _ count: Int, size: UInt32? = nil) -> [UInt8] {
            var b = [UInt8](repeating: 1, count: count).withUnsafeBytes { FCopyFragment.body(offset: offset, data: $0) }
            if let size { b.putLE(size, at: 48) }
            return b
        }
        #expect(try rig.raw(fragment(0, 4)) == ICStatus.fail)
        #expect(try rig.raw(try start([0x61], path: dir)) == ICStatus.ok)
        #expect(try rig.raw(fragment(2, 2)) == ICStatus.invalidArgument)
        #expect(rig.listing == ["dangling", "link"], "an out-of-order fragment ends the copy")
        #expect(try rig.raw(try start([0x61], path: dir)) == ICStatus.ok)
        #expect(try rig.raw(fragment(0, 5)) == ICStatus.invalidArgument)
        #expect(try rig.raw(try start([0x61], path: dir)) == ICStatus.ok)
        #expect(try rig.raw(fragment(0, 2, size: 7000)) == ICStatus.invalidArgument)
        #expect(try rig.raw(try start([0x61], path: dir)) == ICStatus.ok)
        #expect(try rig.raw(fragment(0, 2)) == ICStatus.ok)
        #expect(try rig.raw(FCopyFragment.bare(.complete)) == ICStatus.fail, "COMPLETE after 2 of 4 bytes")
        #expect(rig.listing == ["dangling", "link"])
    }

    @Test("KVP IP: set-ip reaches the configurator, get-ip reads it back; malformed or cutting-off requests are refused")
    func kvpIP() throws {
        let directory = temporaryDirectory("kvp-ip")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let provider = KVPProvider(instanceID: GUID(low: 8, high: 8), logger: quiet, now: { 0 })
        let ip = FakeIP()
        let service = KVPService(store: try KVPStore(directory: directory), intrinsic: { [] }, ip: ip, logger: quiet, background: false)
        let (machine, client) = try icMachine(provider, service: service)
        defer { withExtendedLifetime(client) {} }
        func set(_ info: KVPIPInfo) throws -> UInt32? {
            var status: UInt32??
            try provider.setIP(info) { status = .some($0) }
            machine.pump()
            return status ?? nil
        }
        let good = KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3", "fd00::3"], subnets: ["255.255.255.0", "64"],
                             gateways: ["10.1.2.1"], dns: ["10.1.2.53"])
        let first = try set(good)
        #expect(first == ICStatus.ok)
        #expect(ip.applied == [good])
        var got: Result<KVPIPInfo, KVPEnumerationError>?
        try provider.getIP(adapterID: "00:15:5D:00:00:01") { got = $0 }
        machine.pump()
        #expect(try got?.get() == good)
        try provider.getIP(adapterID: "00:15:5D:00:00:99") { got = $0 }
        machine.pump()
        #expect(got.map { if case .failure(.status(ICStatus.guidNotFound)) = $0 { true } else { false } } == true)

        for bad in [KVPIPInfo(adapterID: "00:15:5D:00:00:01"),                                                       // nothing left
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3"], subnets: []),                  // no mask
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.300"], subnets: ["24"]),            // bad address
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3"], subnets: ["255.0.255.0"]),     // holes in the mask
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3"], subnets: ["33"]),
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3"], subnets: ["24"], gateways: ["gw"]),
                    KVPIPInfo(adapterID: "00:15:5D:00:00:01", addresses: ["10.1.2.3"], subnets: ["24"], dns: ["1.1.1.1;rm -rf"])] {
            #expect(try set(bad) == ICStatus.invalidArgument, "\(bad)")
        }
        #expect(ip.applied.count == 1)
        #expect(try set(KVPIPInfo(adapterID: "00:15:5D:00:00:01", dhcp: true)) == ICStatus.ok, "DHCP with no static address is fine")

        // Raw: an unterminated adapter id, and a message shorter than hv_kvp_ip_msg.
        var raw = [UInt8](repeating: 0x41, count: KVPIPInfo.size)
        raw[0] = KVPOperation.setIPInfo.rawValue
        raw[1] = 0
        var status: UInt32?
        provider.request(.kvpExchange, body: raw) { if case .answered(let h, _) = $0 { status = h.status } }
        machine.pump()
        #expect(status == ICStatus.invalidArgument)
        status = nil
        provider.request(.kvpExchange, body: Array(raw[0..<100])) { if case .answered(let h, _) = $0 { status = h.status } }
        machine.pump()
        #expect(status == ICStatus.invalidArgument)
        #expect(ip.applied.count == 2)
    }

    @Test("IPPlan: masks and prefixes, IPv4 and IPv6")
    func plan() throws {
        let p = try IPPlan(KVPIPInfo(adapterID: "x", addresses: ["192.0.2.1", "2001:db8::1", "198.51.100.7"], subnets: ["255.255.255.128", "48", "32"]),
                           interface: "eth0")
        #expect(p.addresses.map { "\($0.address)/\($0.prefix)" } == ["192.0.2.1/25", "2001:db8::1/48", "198.51.100.7/32"])
        #expect(IPPlan.mask(25) == "255.255.255.128" && IPPlan.mask(0) == "0.0.0.0" && IPPlan.mask(32) == "255.255.255.255")
        #expect(IPPlan.prefix("0.0.0.0", family: AF_INET) == 0 && IPPlan.prefix("255.255.255.255", family: AF_INET) == 32)
        #expect(IPPlan.prefix("255.255.255.0", family: AF_INET6) == nil && IPPlan.prefix("129", family: AF_INET6) == nil)
    }

    @Test("Mount table: block-device writable file systems, loop devices first, the root last, each superblock once")
    func mounts() {
        let table = """
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
            23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=10m
            24 22 8:2 / /boot/efi rw shared:3 - vfat /dev/sda2 rw
            25 22 8:3 / /srv ro shared:4 - xfs /dev/sda3 rw
            26 22 7:0 / /mnt/loop\\040a rw shared:5 - ext4 /dev/loop0 rw
            27 22 8:4 / /data rw shared:6 - ext4 /dev/sda4 ro
            28 22 8:3 / /srv2 rw shared:7 - xfs /dev/sda3 rw
            29 22 0:40 / /tmp rw - tmpfs tmpfs rw
            bad line
            """
        #expect(freezeCandidates(mountInfo: table, only: []).map(\.mountPoint) == ["/mnt/loop a", "/srv", "/"])
        #expect(freezeCandidates(mountInfo: table, only: ["/srv2", "/mnt/loop a"]).map(\.mountPoint) == ["/mnt/loop a", "/srv2"])
    }
}

/// Keeps a loopback machine with a value-type rig.
final class LoopbackMachineHandle {
    let value: LoopbackMachine
    init(_ m: LoopbackMachine) { value = m }
}
