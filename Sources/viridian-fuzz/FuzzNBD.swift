// Targets "nbd" and "nbd-pipelined": an NBD server on a Unix socket, made once, and one client
// connection per input sending the input (raw, or built into options and requests) as its bytes.

import Glibc
import NBD
import PartitionLink

let nbdTarget = FuzzTarget(
    name: "nbd",
    summary: "NBDServer handshake (options, INFO/GO parsing) and transmission requests over a socket, synchronous device"
) { data in
    NBDFuzz.run([UInt8](data), server: NBDFuzz.simple)
}

let nbdPipelinedTarget = FuzzTarget(
    name: "nbd-pipelined",
    summary: "NBDServer with a pipelined device: batched reads/writes, reply queueing and grouped replies"
) { data in
    NBDFuzz.run([UInt8](data), server: NBDFuzz.pipelined)
}

/// A 1 MiB disk in memory. Used by one connection thread at a time (the harness waits for the
/// connection to end before the next input resets it).
class FuzzNBDDisk: NBDBlockDevice, @unchecked Sendable {
    let storage: UnsafeMutableRawPointer
    let size: UInt64 = 1 << 20
    let isReadOnly: Bool
    let blockSize = 512
    var failWrites = false

    init(readOnly: Bool) {
        isReadOnly = readOnly
        storage = .allocate(byteCount: 1 << 20, alignment: 4096)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 20)
    }

    deinit { storage.deallocate() }

    func reset() {
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 20)
        failWrites = false
    }

    func inside(_ offset: UInt64, _ length: Int) -> Bool { length >= 0 && offset <= size && UInt64(length) <= size - offset }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> UInt32 {
        guard inside(offset, buffer.count) else { return 22 }
        if buffer.count > 0 { buffer.baseAddress!.copyMemory(from: storage + Int(offset), byteCount: buffer.count) }
        return 0
    }

    func write(offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) -> UInt32 {
        guard inside(offset, buffer.count) else { return 28 }
        if failWrites { return 5 }
        if buffer.count > 0 { (storage + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count) }
        return 0
    }

    func flush() -> UInt32 { failWrites ? 5 : 0 }

    func trim(offset: UInt64, length: UInt64) -> UInt32 {
        guard length <= size, inside(offset, Int(length)) else { return 22 }
        (storage + Int(offset)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(length))
        return 0
    }

    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool) -> UInt32 {
        mayTrim ? trim(offset: offset, length: length) : writeZeroesByWriting(offset: offset, length: length, fua: fua)
    }
}

/// The same disk with the pipelined interface: requests are held by the batch and completed when
/// the connection submits it (inside a reply group when `grouped`).
final class FuzzPipelinedNBDDisk: FuzzNBDDisk, NBDPipelinedDevice, @unchecked Sendable {
    var grouped = false

    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(length, 1), alignment: 8)
        let error = read(offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: copy[0..<length]))
        nonisolated(unsafe) let buffer = copy
        done(error, error == 0 ? [UnsafeRawBufferPointer(rebasing: buffer[0..<length])] : [], { buffer.deallocate() })
        return true
    }

    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool {
        done(write(offset: offset, from: data, fua: fua))
        return true
    }

    func makeBatch() -> any NBDRequestBatch { FuzzNBDBatch(disk: self) }
}

/// Holds started requests until `submit`, as a device with a submission queue does.
final class FuzzNBDBatch: NBDRequestBatch {
    let disk: FuzzPipelinedNBDDisk
    private var held: [() -> Void] = []

    init(disk: FuzzPipelinedNBDDisk) { self.disk = disk }

    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        // Every fifth read takes the synchronous path.
        guard offset % 5 != 3, length <= 1 << 20 else { return false }
        let disk = self.disk
        held.append { _ = disk.startRead(offset: offset, length: length, done: done) }
        return true
    }

    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool {
        // `data` is the connection's buffer: it is written now, completed at submit.
        let error = disk.write(offset: offset, from: data, fua: fua)
        held.append { done(error) }
        return true
    }

    func submit() {
        let jobs = held
        held.removeAll()
        if disk.grouped {
            NBDReplyGrouping.together { for job in jobs { job() } }
        } else {
            for job in jobs { job() }
        }
    }
}

enum NBDFuzz {
    static let exportName = "fuzz"
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleDisk = FuzzNBDDisk(readOnly: false)
    static let pipelinedDisk = FuzzPipelinedNBDDisk(readOnly: false)
    static let simple = FuzzNBDServer(name: "simple", device: simpleDisk)
    static let pipelined = FuzzNBDServer(name: "pipelined", device: pipelinedDisk)

    static func run(_ bytes: [UInt8], server: FuzzNBDServer) {
        simpleDisk.reset()
        pipelinedDisk.reset()
        var r = FuzzReader(bytes: bytes)
        let mode = r.u8()
        pipelinedDisk.grouped = mode & 0x40 != 0
        simpleDisk.failWrites = mode & 0x20 != 0
        pipelinedDisk.failWrites = mode & 0x20 != 0
        let stream = mode & 0x80 != 0 ? structured(&r) : r.rest()
        server.exchange(stream)
    }

    // MARK: Building a client's bytes

    static func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * (MemoryLayout<T>.size - 1 - $0))) }
    }

    /// Client flags, options (the last one usually GO), then transmission requests.
    static func structured(_ r: inout FuzzReader) -> [UInt8] {
        var out: [UInt8] = []
        let flags = r.u8()
        out += be(flags & 0x80 != 0 ? r.u32() : UInt32(1 | (flags & 2)))
        let options = Int(flags >> 2) & 7
        for i in 0...options {
            let sel = r.u8()
            let last = i == options
            let option: UInt32
            var data: [UInt8]
            switch sel % 8 {
            case 0, 1, 2:
                // INFO or GO: name length, name, request count, requests.
                option = last || sel & 0x80 == 0 ? 7 : 6
                let name = sel & 0x40 != 0 ? Array(exportName.utf8) : r.blob(limit: 16)
                let requests = (0..<Int(r.u8() % 4)).map { _ in r.u16() }
                data = be(UInt32(name.count))
                data += name
                data += be(UInt16(requests.count))
                for request in requests { data += be(request) }
                if sel & 0x20 != 0 && !data.isEmpty { data[Int(r.u8()) % data.count] = r.u8() }
            case 3:
                option = 1
                data = sel & 0x40 != 0 ? Array(exportName.utf8) : r.blob(limit: 16)
            default:
                option = [UInt32(2), 3, 5, 8, 9, r.u32()][Int(sel >> 5) % 6]
                data = r.blob(limit: 32)
            }
            var length = UInt32(data.count)
            if sel & 0x10 != 0 && i != options { length = r.u32() % 8192 }  // a length that lies
            out += be(optionMagic)
            out += be(option)
            out += be(length)
            out += data
        }
        var steps = 0
        while steps < 128 && !r.isAtEnd {
            steps += 1
            let sel = r.u8()
            let type: UInt16 = sel & 0x80 != 0 ? r.u16() : UInt16(sel % 8)
            let commandFlags: UInt16 = UInt16(r.u8() & 3)
            let offset = (UInt64(r.u32()) << UInt64(r.u8() % 13)) >> 8
            let length = UInt32(r.u16()) << UInt32(r.u8() % 9)
            let magic = sel & 0x40 != 0 ? r.u32() : requestMagic
            let handle = UInt64(r.u16())
            out += be(magic)
            out += be(commandFlags)
            out += be(type)
            out += be(handle)
            out += be(offset)
            out += be(length)
            if type == 1 {
                // WRITE data: what the input has, up to the length given (short data ends the stream).
                out += r.take(Int(min(length, 65536)))
            }
        }
        return out
    }
}

/// One NBD server on a per-process socket, and a client that plays one input against it.
final class FuzzNBDServer: @unchecked Sendable {
    let path: String
    let server: NBDServer

    init(name: String, device: any NBDBlockDevice) {
        let path = "/tmp/viridian-fuzz-nbd-\(getpid())-\(name).sock"
        self.path = path
        do {
            server = try NBDServer(path: path, exportName: NBDFuzz.exportName, device: device, logger: fuzzLogger)
        } catch {
            fatalError("viridian-fuzz: cannot start the NBD server at \(path): \(error)")
        }
        server.start()
    }

    /// Connects, sends `stream` while reading whatever comes back, half-closes and reads until the
    /// server closes. Two seconds without progress ends the exchange.
    func exchange(_ stream: [UInt8]) {
        guard let fd = try? UnixSocket.connect(path: path, type: Int32(SOCK_STREAM.rawValue)) else { return }
        defer { close(fd) }
        var sent = 0
        var writing = true
        if stream.isEmpty {
            shutdown(fd, Int32(SHUT_WR))
            writing = false
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN) | (writing ? Int16(POLLOUT) : 0), revents: 0)
            let ready = poll(&p, 1, 2000)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return }
            if writing && p.revents & Int16(POLLOUT) != 0 {
                let n = stream.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
                if n > 0 { sent += n }
                if sent == stream.count || (n < 0 && errno != EAGAIN && errno != EINTR) {
                    shutdown(fd, Int32(SHUT_WR))
                    writing = false
                }
            }
            if p.revents & (Int16(POLLIN) | Int16(POLLHUP) | Int16(POLLERR)) != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                if n == 0 { return }
                if n < 0 {
                    if errno == EAGAIN || errno == EINTR { continue }
                    return
                }
                buffer.withUnsafeBytes { fuzzConsume(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        }
    }
}
