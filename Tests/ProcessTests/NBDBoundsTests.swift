// The NBD export's bounds against a client that asks for more than it reads.

import Foundation
import Glibc
import Logging
import NBD
import PartitionLink
import Testing
import VMBusWire

/// A pipelined device that holds every read until the test lets it go.
final class HoldingDevice: NBDPipelinedDevice, @unchecked Sendable {
    let size: UInt64 = 1 << 20
    let isReadOnly = false
    let blockSize = 512
    private let lock = NSLock()
    private var held: [@Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void] = []
    private(set) var started = 0
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> UInt32 { 0 }
    func write(offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) -> UInt32 { 0 }
    func flush() -> UInt32 { 0 }
    func trim(offset: UInt64, length: UInt64) -> UInt32 { 0 }
    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool) -> UInt32 { 0 }
    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        lock.withLock {
            held.append(done)
            started += 1
        }
        return true
    }
    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool { false }
    func makeBatch() -> any NBDRequestBatch { ImmediateBatch(device: self) }
    var startedCount: Int { lock.withLock { started } }
    /// Completes every held read (with an error: no data to keep alive).
    func releaseAll() {
        let all = lock.withLock { () -> [@Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void] in
            defer { held.removeAll() }
            return held
        }
        for done in all { done(NBD.Error.io, [], {}) }
    }
}

final class ImmediateBatch: NBDRequestBatch {
    let device: HoldingDevice
    init(device: HoldingDevice) { self.device = device }
    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        device.startRead(offset: offset, length: length, done: done)
    }
    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool { false }
    func submit() {}
}

@Suite("NBD export bounds", .serialized)
struct NBDBoundsTests {
    func connect(_ path: String) throws -> Int32 {
        let fd = try UnixSocket.connect(path: path, type: Int32(SOCK_STREAM.rawValue))
        var hello = [UInt8](repeating: 0, count: 18)
        guard recv(fd, &hello, 18, Int32(MSG_WAITALL)) == 18 else { throw HarnessError.missing("no NBD hello") }
        var reply: [UInt8] = [0, 0, 0, 3]  // fixed newstyle, no zeroes
        reply += [0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54, 0, 0, 0, 1, 0, 0, 0, 0]  // IHAVEOPT, EXPORT_NAME, ""
        _ = send(fd, reply, reply.count, Int32(MSG_NOSIGNAL))
        var info = [UInt8](repeating: 0, count: 10)
        guard recv(fd, &info, 10, Int32(MSG_WAITALL)) == 10 else { throw HarnessError.missing("no export info") }
        return fd
    }

    @Test("A client that sends 2000 reads and reads no reply: the server starts at most its limit; the rest follow as replies go out; a 17th connection is refused")
    func bounded() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-nbd-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let device = HoldingDevice()
        let server = try NBDServer(path: "\(dir)/nbd.sock", exportName: "", device: device, logger: Logger(label: "test"))
        server.start()
        defer { server.stop() }
        let fd = try connect("\(dir)/nbd.sock")
        defer { close(fd) }
        // The requests go from a thread of their own: the server stops reading them, so sends block.
        Thread.detachNewThread {
            var request = [UInt8](repeating: 0, count: 28)
            request.putBE(NBD.requestMagic, at: 0)
            request.putBE(UInt32(512), at: 24)
            for i in 0..<2000 {
                request.putBE(UInt64(i), at: 8)
                guard send(fd, request, 28, Int32(MSG_NOSIGNAL)) == 28 else { return }
            }
        }
        _ = eventually(seconds: 2) { device.startedCount >= NBDServer.maximumQueued }
        usleep(200_000)
        #expect(device.startedCount == NBDServer.maximumQueued, "\(device.startedCount) reads started")
        // Replies drain (the client reads them): the server takes the rest, never more than the limit at once.
        var bytes = 0
        var buffer = [UInt8](repeating: 0, count: 16 * 256)
        let deadline = Date().addingTimeInterval(30)
        while bytes < 2000 * 16 && Date() < deadline {
            device.releaseAll()
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { break }
            bytes += n
        }
        #expect(bytes == 2000 * 16 && device.startedCount == 2000, "\(bytes / 16) replies, \(device.startedCount) started")
        // One thread per connection: beyond the limit they are closed at once.
        let extra = try (1..<NBDServer.maximumConnections).map { _ in try connect("\(dir)/nbd.sock") }
        defer { extra.forEach { close($0) } }
        let refused = try UnixSocket.connect(path: "\(dir)/nbd.sock", type: Int32(SOCK_STREAM.rawValue))
        defer { close(refused) }
        var byte: UInt8 = 0
        var p = pollfd(fd: refused, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, 2000)
        #expect(recv(refused, &byte, 1, 0) == 0, "the 17th connection got a hello")
    }

    @Test("An export that outlives its successor on the same path (a connection thread still holds it) leaves the successor's socket in place when it goes")
    func successorKeepsSocket() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-nbd-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = "\(dir)/lun0.sock"
        var old: NBDServer? = try NBDServer(path: path, exportName: "", device: HoldingDevice(), logger: Logger(label: "test"))
        old?.start()
        let client = try connect(path)
        old?.stop()
        // The agent rejoined: a new export binds the same path while the old connection lingers.
        let successor = try NBDServer(path: path, exportName: "", device: HoldingDevice(), logger: Logger(label: "test"))
        successor.start()
        defer { successor.stop() }
        weak let gone = old
        old = nil
        close(client)
        #expect(eventually(seconds: 5) { gone == nil }, "the old export was never released")
        #expect(FileManager.default.fileExists(atPath: path), "the old export removed its successor's socket")
        let fd = try connect(path)
        close(fd)
    }
}
