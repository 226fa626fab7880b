// A guest without integration components: legacy drivers for the emulated IDE disk and NE2000 NIC,
// every register access one trap, exported through the same NBD and TAP surfaces as the synthetic devices.

import CSystem
import EmulatedDevices
import Foundation
import Glibc
import Logging
import NBD
import PartitionLink
import SyntheticNetwork

/// IN/OUT through PartitionLink: each access is one round trip to the host, like a VM exit.
final class LinkPortIO: PortIO, @unchecked Sendable {
    let link: any GuestPlatform
    let vp: UInt32
    init(link: any GuestPlatform, vp: UInt32) {
        self.link = link
        self.vp = vp
    }
    func read(port: UInt16, size: Int) -> UInt32 { link.portIn(vp: vp, port: port, size: size) ?? 0xFFFF_FFFF }
    func write(port: UInt16, size: Int, value: UInt32) { link.portOut(vp: vp, port: port, size: size, value: value) }
}

/// Waits for a legacy interrupt line's eventfd.
final class LinkInterruptWait: InterruptWait, @unchecked Sendable {
    let line: EventFD
    init(line: EventFD) { self.line = line }
    func wait(timeoutMs: Int) -> Bool {
        guard line.poll(timeoutMs: timeoutMs) else { return false }
        line.wait()
        return true
    }
}

/// An emulated ATA disk served to NBD clients, one command at a time.
final class ATABlockDevice: NBDBlockDevice, @unchecked Sendable {
    let driver: ATADriver
    let size: UInt64
    let isReadOnly: Bool
    let blockSize = 512
    private let lock = Lock()
    /// Sectors per command (bounded staging buffer).
    static let chunkSectors = 256

    init(driver: ATADriver, readOnly: Bool) {
        self.driver = driver
        size = driver.sectors * 512
        isReadOnly = readOnly
    }

    private func code(_ error: ATADriverError) -> UInt32 {
        switch error {
        case .device(_, let e) where e & ATAError.abort != 0 && isReadOnly: NBD.Error.perm
        case .outOfRange: NBD.Error.inval
        default: NBD.Error.io
        }
    }

    /// Whole sectors from `start` (bytes, sector aligned) into `p`.
    private func sectors(read: Bool, start: UInt64, count: Int, _ p: UnsafeMutableRawPointer) -> UInt32 {
        var done = 0
        while done < count {
            let n = min(count - done, Self.chunkSectors)
            do {
                if read {
                    try driver.read(lba: start / 512 + UInt64(done), count: n, into: p + done * 512)
                } else {
                    try driver.write(lba: start / 512 + UInt64(done), count: n, from: p + done * 512)
                }
            } catch {
                return code(error)
            }
            done += n
        }
        return 0
    }

    func read(offset: UInt64, into out: UnsafeMutableRawBufferPointer) -> UInt32 {
        lock.withLock {
            let start = offset & ~511, end = (offset + UInt64(out.count) + 511) & ~511
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: 8)
            defer { staging.deallocate() }
            let e = sectors(read: true, start: start, count: staging.count / 512, staging.baseAddress!)
            if e == 0 { out.baseAddress!.copyMemory(from: staging.baseAddress! + Int(offset - start), byteCount: out.count) }
            return e
        }
    }

    func write(offset: UInt64, from data: UnsafeRawBufferPointer, fua: Bool) -> UInt32 {
        lock.withLock {
            let start = offset & ~511, end = (offset + UInt64(data.count) + 511) & ~511
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(end - start), alignment: 8)
            defer { staging.deallocate() }
            if start != offset || end != offset + UInt64(data.count) {
                let e = sectors(read: true, start: start, count: staging.count / 512, staging.baseAddress!)
                guard e == 0 else { return e }
            }
            (staging.baseAddress! + Int(offset - start)).copyMemory(from: data.baseAddress!, byteCount: data.count)
            var e = sectors(read: false, start: start, count: staging.count / 512, staging.baseAddress!)
            if e == 0 && fua { e = (try? driver.flush()) == nil ? NBD.Error.io : 0 }
            return e
        }
    }

    func flush() -> UInt32 { lock.withLock { (try? driver.flush()) == nil ? NBD.Error.io : 0 } }

    func trim(offset: UInt64, length: UInt64) -> UInt32 { 0 }  // advisory; IDE has no TRIM here

    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool) -> UInt32 {
        writeZeroesByWriting(offset: offset, length: length, fua: fua)
    }
}

/// The NE2000 bridged to a guest TAP: one thread waits on the TAP and the IRQ line and drives the card.
final class EmulatedNIC: @unchecked Sendable {
    let driver: NE2000Driver
    let tap: TapDevice
    let irq: LinkInterruptWait
    private let stopping = EventFD.make()
    private var thread: OSThread?
    private(set) var framesOut: UInt64 = 0
    private(set) var framesIn: UInt64 = 0

    init(driver: NE2000Driver, tap: TapDevice, irq: LinkInterruptWait) {
        self.driver = driver
        self.tap = tap
        self.irq = irq
    }

    func start() { thread = OSThread { [self] in loop() } }

    func stop() {
        stopping?.ring()
        thread?.join()
        thread = nil
    }

    private func loop() {
        let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 8)
        let header = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 8)
        let iov = UnsafeMutableBufferPointer<iovec>.allocate(capacity: 2)
        defer {
            frame.deallocate()
            header.deallocate()
            iov.deallocate()
        }
        let zero = VirtioNetHeader()
        var fds = [pollfd(fd: tap.descriptor, events: Int16(POLLIN), revents: 0), pollfd(fd: irq.line.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stopping?.fd ?? -1, events: Int16(POLLIN), revents: 0)]
        while true {
            for i in fds.indices { fds[i].revents = 0 }
            guard poll(&fds, 3, 1000) >= 0 else { continue }
            if fds[2].revents != 0 { return }
            if fds[1].revents != 0 {
                irq.line.wait()
                let events = driver.handleInterrupt()
                if events.received {
                    while let n = driver.receive(into: frame) {
                        zero.store(to: header)
                        iov[0] = iovec(iov_base: header, iov_len: VirtioNetHeader.size)
                        iov[1] = iovec(iov_base: frame.baseAddress, iov_len: n)
                        if tap.send(UnsafeBufferPointer(iov)) { framesIn &+= 1 }
                    }
                }
            }
            if fds[0].revents != 0 {
                // Frames from the guest stack: the TAP has no offloads, so each is a plain frame.
                iov[0] = iovec(iov_base: header, iov_len: VirtioNetHeader.size)
                iov[1] = iovec(iov_base: frame.baseAddress, iov_len: frame.count)
                var budget = 16
                while budget > 0, let n = tap.receive(UnsafeBufferPointer(iov)), n > VirtioNetHeader.size {
                    budget -= 1
                    if driver.transmit(UnsafeRawBufferPointer(rebasing: frame[0..<(n - VirtioNetHeader.size)])) { framesOut &+= 1 }
                }
            }
        }
    }
}

extension EventFD {
    /// A new eventfd, or nil if the system has none left.
    static func make() -> EventFD? { try? EventFD() }
}

/// What a guest without enlightenments uses: the emulated IDE disks exported over NBD and the
/// emulated NE2000 bridged to a TAP, driven through port I/O traps and legacy interrupt lines.
public final class EmulatedGuest: @unchecked Sendable {
    let link: any GuestPlatform
    let logger: Logger
    private var servers: [NBDServer] = []
    private var nic: EmulatedNIC?
    public private(set) var exports: [DiskExport] = []
    public private(set) var nicInfo: NICInfo?
    private var stateDir: String?

    public init(link: any GuestPlatform, logger: Logger) {
        self.link = link
        self.logger = logger
    }

    /// Waits up to `timeoutMs` for the host's interrupt line `irq` (it comes right after the welcome).
    private func line(_ irq: UInt32, timeoutMs: Int) -> EventFD? {
        let deadline = viridian_now_ns() + UInt64(timeoutMs) * 1_000_000
        while viridian_now_ns() < deadline {
            if let l = link.interruptLine(irq) { return l }
            usleep(5000)
        }
        return link.interruptLine(irq)
    }

    /// Probes the IDE channel and the NE2000 and brings up what answers.
    public func start(exportDir: String, stateDir: String, tapName: String, netns: String?) throws {
        try FileManager.default.createDirectory(atPath: exportDir, withIntermediateDirectories: true)
        if let l14 = line(14, timeoutMs: 1000) {
            let irq = LinkInterruptWait(line: l14)
            for unit in UInt8(0)...1 {
                guard let driver = try? ATADriver(io: LinkPortIO(link: link, vp: 0), interrupt: irq, unit: unit) else { continue }
                let path = "\(exportDir)/ide0-\(unit == 0 ? "master" : "slave").sock"
                let server = try NBDServer(path: path, exportName: "", device: ATABlockDevice(driver: driver, readOnly: false), logger: logger)
                server.start()
                servers.append(server)
                exports.append(DiskExport(controller: 0, lun: unit, sizeBytes: driver.sectors * 512, readOnly: false, export: path))
                logger.info("ide: \(unit == 0 ? "master" : "slave") \(driver.model), \((driver.sectors * 512) >> 20) MiB, PIO multiple \(driver.multiple), nbd+unix:///?socket=\(path)")
            }
        }
        if let l9 = line(9, timeoutMs: 200) {
            let irq = LinkInterruptWait(line: l9)
            do {
                let driver = try NE2000Driver(io: LinkPortIO(link: link, vp: UInt32(min(1, link.vpCount - 1))), interrupt: irq)
                let tap = try TapDevice(name: tapName, namespace: netns)
                try tap.configure(mac: driver.mac, mtu: 1500, up: true)
                let nic = EmulatedNIC(driver: driver, tap: tap, irq: irq)
                nic.start()
                self.nic = nic
                nicInfo = NICInfo(index: 0, relid: 0, tap: tap.name, netns: netns, mac: MACAddress.format(driver.mac), mtu: 1500,
                                  carrier: true, nvspVersion: "none (NE2000)", queues: 1)
                logger.info("ne2000: MAC \(MACAddress.format(driver.mac)), TAP \(tap.name)\(netns.map { " (netns \($0))" } ?? "")")
            } catch {
                logger.error("ne2000: \(error)")
            }
        }
        try record(stateDir: stateDir)
    }

    private func record(stateDir: String) throws {
        self.stateDir = stateDir
        try AgentStateFile.write(exports, to: DiskExporter.statePath(stateDir))
        try AgentStateFile.write(nicInfo.map { [$0] } ?? [], to: NetworkAttachments.statePath(stateDir))
    }

    /// Stops the NIC and the exports and forgets the state files, as the enlightened exporters do.
    public func stop() {
        nic?.stop()
        nic = nil
        for s in servers { s.stop() }
        servers.removeAll()
        if let stateDir {
            unlink(DiskExporter.statePath(stateDir))
            unlink(NetworkAttachments.statePath(stateDir))
        }
    }
}
