// A guest without integration components: legacy drivers for the emulated IDE disk (PIO, or bus-master
// DMA behind a PIIX4) and NICs (DEC 21140, NE2000), every register access one trap, exported through
// the same NBD and TAP surfaces as the synthetic devices.

import CSystem
import EmulatedDevices
import Foundation
import Glibc
import GuestMemory
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
    /// The channel's lock: master and slave share the task file, the interrupt line and the
    /// bus master's PRD table and buffer, so one command at a time on the channel.
    private let lock: Lock
    /// Sectors per command: what the driver moves at once (its DMA buffer, or a PIO command).
    let chunkSectors: Int

    init(driver: ATADriver, readOnly: Bool, channel lock: Lock) {
        self.driver = driver
        self.lock = lock
        chunkSectors = min(driver.maximumTransfer, 256 * 8)
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
            let n = min(count - done, chunkSectors)
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

/// An emulated NIC (DEC 21140 or NE2000) bridged to a guest TAP: one thread waits on the TAP and
/// the IRQ line and drives the card.
final class EmulatedNIC: @unchecked Sendable {
    let driver: any LegacyNICDriver
    let tap: TapDevice
    let irq: LinkInterruptWait
    private let stopping = EventFD.make()
    private var thread: OSThread?
    private(set) var framesOut: UInt64 = 0
    private(set) var framesIn: UInt64 = 0

    init(driver: any LegacyNICDriver, tap: TapDevice, irq: LinkInterruptWait) {
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
                    driver.receiveDone()
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
/// emulated NICs bridged to TAPs, driven through port I/O traps and legacy interrupt lines. The
/// PCI bus is scanned first, as a kernel does: a PIIX4 IDE function means bus-master DMA for the
/// IDE disks (as ata_piix), a DEC 21140 a NIC with descriptor rings (as tulip); the NE2000 is
/// probed at its ISA port as ne.c does.
public final class EmulatedGuest: @unchecked Sendable {
    let link: any GuestPlatform
    let logger: Logger
    private var servers: [NBDServer] = []
    private var nics: [EmulatedNIC] = []
    public private(set) var exports: [DiskExport] = []
    public private(set) var nicInfo: [NICInfo] = []
    private var stateDir: String?
    /// Guest pages for the DMA devices' tables, rings and buffers.
    private var pages: GuestPageAllocator

    public init(link: any GuestPlatform, logger: Logger) {
        self.link = link
        self.logger = logger
        pages = GuestPageAllocator(pageCount: link.pool.pageCount)
    }

    /// `bytes` of guest memory, contiguous in guest-physical addresses below 4 GiB (32-bit bus masters).
    private func dmaWindow(bytes: Int) -> DMAWindow? {
        let count = (bytes + 4095) / 4096
        guard let first = try? pages.allocate(pages: count) else { return nil }
        let pfns = link.pool.pfns(first: first, count: count)
        guard pfns.indices.allSatisfy({ pfns[$0] == pfns[0] + UInt64($0) }), (pfns[0] + UInt64(count)) << 12 <= 1 << 32,
            let p = try? link.pool.pointer(page: first, count: count * 4096)
        else {
            pages.release(firstPage: first, pages: count)
            return nil
        }
        return DMAWindow(base: p, gpa: pfns[0] << 12, size: count * 4096)
    }

    /// The PIIX4's bus master for the primary channel, set up as ata_piix does (decode enabled
    /// in IDETIM, I/O and bus mastering on), with a PRD page and a 1 MiB buffer.
    private func piix4BusMaster(_ pci: PCIConfigAccess, _ f: PCIFunctionAddress) -> ATABusMaster? {
        guard pci.read(f, PIIX4IDE.idetimPrimary, size: 2) & UInt32(PIIX4IDE.decodeEnable) != 0 else {
            logger.warning("ide: PIIX4 \(f): primary channel disabled in IDETIM; using PIO")
            return nil
        }
        pci.enable(f, busMaster: true)
        guard let port = pci.ioBar(f, 4, span: 16), let table = dmaWindow(bytes: 4096), let buffer = dmaWindow(bytes: 1 << 20) else {
            logger.warning("ide: PIIX4 \(f): no BMIDE BAR or no DMA memory; using PIO")
            return nil
        }
        return ATABusMaster(port: port, table: table, buffer: buffer)
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

    /// Scans PCI, probes the IDE channel and the NICs and brings up what answers. NIC n (the 21140
    /// first, then the NE2000) gets the TAP `tapPattern` with %d replaced by n (without a %d: the
    /// name itself for NIC 0, the name and n for the others).
    public func start(exportDir: String, stateDir: String, tapPattern: String, netns: String?) throws {
        try FileManager.default.createDirectory(atPath: exportDir, withIntermediateDirectories: true)
        let pci = PCIConfigAccess(io: LinkPortIO(link: link, vp: 0))
        let functions = pci.scan()
        logger.info("pci: \(functions.isEmpty ? "no functions" : functions.map { "\($0) \(hex4($0.vendor)):\(hex4($0.deviceID))" }.joined(separator: ", "))")
        let piix4 = functions.first { $0.vendor == PIIX4IDE.vendor && $0.deviceID == PIIX4IDE.device }
        let tulip = functions.first { $0.vendor == DEC21140Function.vendor && $0.deviceID == DEC21140Function.device }
        if let l14 = line(14, timeoutMs: 1000) {
            let irq = LinkInterruptWait(line: l14)
            let busMaster = piix4.flatMap { piix4BusMaster(pci, $0) }
            let channel = Lock()
            for unit in UInt8(0)...1 {
                guard let driver = try? ATADriver(io: LinkPortIO(link: link, vp: 0), interrupt: irq, unit: unit, busMaster: busMaster) else { continue }
                if let piix4, let mode = driver.dmaMode, mode & 0x40 != 0 {
                    // do_pata_set_dmamode: UDMA timing for the drive, then its enable bit.
                    let shift = 4 * Int(unit)
                    let timing = pci.read(piix4, PIIX4IDE.udmaTiming, size: 2) & ~(3 << UInt32(shift)) | UInt32(mode & 7) << UInt32(shift)
                    pci.write(piix4, PIIX4IDE.udmaTiming, size: 2, value: timing)
                    pci.write(piix4, PIIX4IDE.udmaControl, size: 1, value: pci.read(piix4, PIIX4IDE.udmaControl, size: 1) | 1 << UInt32(unit))
                }
                let path = "\(exportDir)/ide0-\(unit == 0 ? "master" : "slave").sock"
                let server = try NBDServer(path: path, exportName: "", device: ATABlockDevice(driver: driver, readOnly: false, channel: channel), logger: logger)
                server.start()
                servers.append(server)
                exports.append(DiskExport(controller: 0, lun: unit, sizeBytes: driver.sectors * 512, readOnly: false, export: path))
                let transfer = driver.dmaMode.map { m in m & 0x40 != 0 ? "UDMA\(m & 7) bus-master DMA" : "MWDMA\(m & 7) bus-master DMA" }
                    ?? "PIO multiple \(driver.multiple)"
                logger.info("ide: \(unit == 0 ? "master" : "slave") \(driver.model), \((driver.sectors * 512) >> 20) MiB, \(transfer), nbd+unix:///?socket=\(path)")
            }
        }
        let nicVP = UInt32(min(1, link.vpCount - 1))
        if let tulip, let l11 = line(11, timeoutMs: 200) {
            let irq = LinkInterruptWait(line: l11)
            do {
                pci.enable(tulip, busMaster: true)
                guard let port = pci.ioBar(tulip, 0, span: DEC21140.registerBytes) else { throw TulipDriverError.noDevice("BAR 0 is not an I/O BAR") }
                guard let window = dmaWindow(bytes: TulipDriver.windowBytes) else { throw TulipDriverError.memory(needed: TulipDriver.windowBytes) }
                let driver = try TulipDriver(io: LinkPortIO(link: link, vp: nicVP), interrupt: irq, base: port, window: window)
                try bringUp(driver, irq: irq, kind: "DEC 21140", tapPattern: tapPattern, netns: netns)
            } catch {
                logger.error("dec21140: \(error)")
            }
        }
        if let l9 = line(9, timeoutMs: 200) {
            let irq = LinkInterruptWait(line: l9)
            do {
                let driver = try NE2000Driver(io: LinkPortIO(link: link, vp: nicVP), interrupt: irq)
                try bringUp(driver, irq: irq, kind: "NE2000", tapPattern: tapPattern, netns: netns)
            } catch {
                logger.error("ne2000: \(error)")
            }
        }
        try record(stateDir: stateDir)
    }

    /// Bridges a NIC driver to the next TAP.
    private func bringUp(_ driver: any LegacyNICDriver, irq: LinkInterruptWait, kind: String, tapPattern: String, netns: String?) throws {
        let index = nics.count
        let name = tapPattern.contains("%d") ? tapPattern.replacingOccurrences(of: "%d", with: String(index))
            : index == 0 ? tapPattern : tapPattern + String(index)
        let tap = try TapDevice(name: name, namespace: netns)
        try tap.configure(mac: driver.mac, mtu: 1500, up: true)
        let nic = EmulatedNIC(driver: driver, tap: tap, irq: irq)
        nic.start()
        nics.append(nic)
        nicInfo.append(NICInfo(index: index, relid: 0, tap: tap.name, netns: netns, mac: MACAddress.format(driver.mac), mtu: 1500,
                               carrier: true, nvspVersion: "none (\(kind))", queues: 1))
        logger.info("\(kind): MAC \(MACAddress.format(driver.mac)), TAP \(tap.name)\(netns.map { " (netns \($0))" } ?? "")")
    }

    private func record(stateDir: String) throws {
        self.stateDir = stateDir
        try AgentStateFile.write(exports, to: DiskExporter.statePath(stateDir))
        try AgentStateFile.write(nicInfo, to: NetworkAttachments.statePath(stateDir))
    }

    /// Stops the NIC and the exports and forgets the state files, as the enlightened exporters do.
    public func stop() {
        for nic in nics { nic.stop() }
        nics.removeAll()
        for s in servers { s.stop() }
        servers.removeAll()
        if let stateDir {
            unlink(DiskExporter.statePath(stateDir))
            unlink(NetworkAttachments.statePath(stateDir))
        }
    }
}

/// Four hex digits.
private func hex4(_ v: UInt16) -> String {
    let h = String(v, radix: 16)
    return String(repeating: "0", count: 4 - h.count) + h
}
