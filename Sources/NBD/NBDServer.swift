// An NBD server on a Unix socket: fixed-newstyle handshake, option haggling, simple replies.

import Glibc
import Logging
import VMBusWire

/// Serves one export on a Unix socket so that nbdfuse, nbdinfo, nbdcopy, qemu-img and the kernel
/// client use the disk unchanged. One thread per connection; everything a client sends is checked.
public final class NBDServer: @unchecked Sendable {
    public let path: String
    public let exportName: String
    let device: any NBDBlockDevice
    let logger: Logger
    private let listenFD: Int32
    private var acceptThread: pthread_t?
    private let stateLock = NSLockLike()
    private var stopping = false
    private var connections: Set<Int32> = []

    public init(path: String, exportName: String, device: any NBDBlockDevice, logger: Logger) throws(NBDSocketError) {
        self.path = path
        self.exportName = exportName
        self.device = device
        self.logger = logger
        listenFD = try NBDSocket.listen(path: path)
    }

    deinit {
        close(listenFD)
        unlink(path)
    }

    /// Starts accepting connections.
    public func start() {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<NBDServer>.fromOpaque(arg!).takeRetainedValue()
            me.acceptLoop()
            return nil
        }, box.toOpaque())
        acceptThread = thread
    }

    /// Stops accepting, closes every connection.
    public func stop() {
        stateLock.locked { stopping = true; for fd in connections { shutdown(fd, Int32(SHUT_RDWR)) } }
        shutdown(listenFD, Int32(SHUT_RDWR))
        if let t = acceptThread { pthread_join(t, nil) }
        acceptThread = nil
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            let rejected = stateLock.locked { () -> Bool in
                if stopping { return true }
                connections.insert(fd)
                return false
            }
            if rejected {
                close(fd)
                return
            }
            let connection = NBDConnection(fd: fd, server: self)
            var thread = pthread_t()
            let box = Unmanaged.passRetained(connection)
            pthread_create(&thread, nil, { arg in
                let c = Unmanaged<NBDConnection>.fromOpaque(arg!).takeRetainedValue()
                c.run()
                return nil
            }, box.toOpaque())
            pthread_detach(thread)
        }
    }

    func connectionEnded(_ fd: Int32) {
        stateLock.locked { _ = connections.remove(fd) }
        close(fd)
    }
}

/// One client.
final class NBDConnection: @unchecked Sendable {
    let fd: Int32
    let server: NBDServer
    var device: any NBDBlockDevice { server.device }
    private var buffer: UnsafeMutableRawBufferPointer

    init(fd: Int32, server: NBDServer) {
        self.fd = fd
        self.server = server
        buffer = .allocate(byteCount: 1 << 20, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    /// Replies waiting to be sent (pipelined mode), guarded by `replyLock`.
    private var replies: [(header: [UInt8], data: [UnsafeRawBufferPointer], release: (@Sendable () -> Void)?)] = []
    private var inFlight = 0
    private var closing = false
    private var replyMutex = pthread_mutex_t()
    private var replyReady = pthread_cond_t()

    func run() {
        defer { server.connectionEnded(fd) }
        pthread_mutex_init(&replyMutex, nil)
        pthread_cond_init(&replyReady, nil)
        var sender: pthread_t?
        if device is any NBDPipelinedDevice {
            var t = pthread_t()
            let box = Unmanaged.passRetained(self)
            pthread_create(&t, nil, { arg in
                let c = Unmanaged<NBDConnection>.fromOpaque(arg!).takeRetainedValue()
                c.sendReplies()
                return nil
            }, box.toOpaque())
            sender = t
        }
        do {
            if try handshake() { try transmission() }
        } catch {
            server.logger.debug("nbd: connection closed: \(error)")
        }
        if let sender {
            // Let in-flight requests finish, then stop the sender.
            pthread_mutex_lock(&replyMutex)
            closing = true
            pthread_cond_broadcast(&replyReady)
            pthread_mutex_unlock(&replyMutex)
            pthread_join(sender, nil)
        }
    }

    /// Queues a reply from any thread (pipelined mode).
    private func enqueue(_ handle: UInt64, _ error: UInt32, data: [UnsafeRawBufferPointer] = [], release: (@Sendable () -> Void)? = nil) {
        var header = [UInt8](repeating: 0, count: 16)
        header.putBE(NBD.simpleReplyMagic, at: 0)
        header.putBE(error, at: 4)
        header.putBE(handle, at: 8)
        pthread_mutex_lock(&replyMutex)
        replies.append((header, data, release))
        pthread_cond_signal(&replyReady)
        pthread_mutex_unlock(&replyMutex)
    }

    /// The sender thread: writes queued replies in order until the connection closes and nothing is in flight.
    private func sendReplies() {
        var broken = false
        while true {
            pthread_mutex_lock(&replyMutex)
            while replies.isEmpty && !(closing && inFlight == 0) { pthread_cond_wait(&replyReady, &replyMutex) }
            if replies.isEmpty {
                pthread_mutex_unlock(&replyMutex)
                return
            }
            let batch = replies
            replies.removeAll(keepingCapacity: true)
            inFlight -= batch.count
            pthread_mutex_unlock(&replyMutex)
            for reply in batch {
                if !broken {
                    do {
                        try send(reply.header)
                        for segment in reply.data { try send(segment) }
                    } catch { broken = true }
                }
                reply.release?()
            }
        }
    }

    private func started() {
        pthread_mutex_lock(&replyMutex)
        inFlight += 1
        pthread_mutex_unlock(&replyMutex)
    }

    /// A reply from the request thread: direct, or through the sender's queue (pipelined mode) so
    /// replies never interleave on the socket.
    private func syncReply(_ handle: UInt64, _ error: UInt32, data: UnsafeRawBufferPointer? = nil) throws(NBDSocketError) {
        guard device is any NBDPipelinedDevice else { return try simpleReply(handle, error, data: data) }
        var owned: UnsafeMutableRawBufferPointer?
        if let data, data.count > 0 {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: data.count, alignment: 8)
            copy.copyMemory(from: data)
            owned = copy
        }
        nonisolated(unsafe) let buffer = owned
        started()
        enqueue(handle, error, data: buffer.map { [UnsafeRawBufferPointer($0)] } ?? [], release: { buffer?.deallocate() })
    }

    // MARK: Handshake

    /// Returns true when the client entered the transmission phase.
    private func handshake() throws(NBDSocketError) -> Bool {
        var hello = [UInt8](repeating: 0, count: 18)
        hello.putBE(NBD.initMagic, at: 0)
        hello.putBE(NBD.optionMagic, at: 8)
        hello.putBE(NBD.flagFixedNewstyle | NBD.flagNoZeroes, at: 16)
        try send(hello)
        let clientFlags = try receive(4).be(UInt32.self, at: 0)
        guard clientFlags & 1 != 0 else { return false }  // only fixed newstyle
        let noZeroes = clientFlags & 2 != 0
        for _ in 0..<64 {
            let header = try receive(16)
            guard header.be(UInt64.self, at: 0) == NBD.optionMagic else { return false }
            let option = header.be(UInt32.self, at: 8)
            let length = Int(header.be(UInt32.self, at: 12))
            guard length <= 4096 else {
                try discard(length)
                try reply(option, NBD.Reply.errTooBig)
                continue
            }
            let data = try receive(length)
            switch NBD.Option(rawValue: option) {
            case .exportName?:
                guard String(decoding: data, as: UTF8.self) == server.exportName || data.isEmpty else { return false }
                var b = [UInt8](repeating: 0, count: 10 + (noZeroes ? 0 : 124))
                b.putBE(device.size, at: 0)
                b.putBE(transmissionFlags, at: 8)
                try send(b)
                return true
            case .abort?:
                try reply(option, NBD.Reply.ack)
                return false
            case .list?:
                var name = [UInt8](repeating: 0, count: 4)
                name.putBE(UInt32(server.exportName.utf8.count), at: 0)
                try reply(option, NBD.Reply.server, name + Array(server.exportName.utf8))
                try reply(option, NBD.Reply.ack)
            case .info?, .go?:
                guard data.count >= 6 else {
                    try reply(option, NBD.Reply.errInvalid)
                    continue
                }
                let nameLength = Int(data.be(UInt32.self, at: 0))
                guard 4 + nameLength + 2 <= data.count else {
                    try reply(option, NBD.Reply.errInvalid)
                    continue
                }
                let name = String(decoding: data[4..<(4 + nameLength)], as: UTF8.self)
                let requests = Int(data.be(UInt16.self, at: 4 + nameLength))
                guard 4 + nameLength + 2 + 2 * requests == data.count else {
                    try reply(option, NBD.Reply.errInvalid)
                    continue
                }
                guard name.isEmpty || name == server.exportName else {
                    try reply(option, NBD.Reply.errUnknown)
                    continue
                }
                var export = [UInt8](repeating: 0, count: 12)
                export.putBE(NBD.Info.export, at: 0)
                export.putBE(device.size, at: 2)
                export.putBE(transmissionFlags, at: 10)
                try reply(option, NBD.Reply.info, export)
                var sizes = [UInt8](repeating: 0, count: 14)
                sizes.putBE(NBD.Info.blockSize, at: 0)
                sizes.putBE(UInt32(device.blockSize), at: 2)
                sizes.putBE(UInt32(4096), at: 6)
                sizes.putBE(UInt32(NBD.maximumRequest), at: 10)
                try reply(option, NBD.Reply.info, sizes)
                try reply(option, NBD.Reply.ack)
                if option == NBD.Option.go.rawValue { return true }
            case .startTLS?:
                try reply(option, NBD.Reply.errPolicy)
            default:
                try reply(option, NBD.Reply.errUnsupported)
            }
        }
        return false
    }

    private var transmissionFlags: UInt16 {
        var f = NBD.Flags.hasFlags | NBD.Flags.sendFlush | NBD.Flags.sendFUA | NBD.Flags.sendTrim | NBD.Flags.sendWriteZeroes
        if device.isReadOnly { f |= NBD.Flags.readOnly }
        return f
    }

    private func reply(_ option: UInt32, _ type: UInt32, _ data: [UInt8] = []) throws(NBDSocketError) {
        var b = [UInt8](repeating: 0, count: 20)
        b.putBE(NBD.replyMagic, at: 0)
        b.putBE(option, at: 8)
        b.putBE(type, at: 12)
        b.putBE(UInt32(data.count), at: 16)
        try send(b + data)
    }

    // MARK: Transmission

    private func transmission() throws(NBDSocketError) {
        while true {
            let request = try receive(28)
            guard request.be(UInt32.self, at: 0) == NBD.requestMagic else { return }
            let flags = request.be(UInt16.self, at: 4)
            let type = request.be(UInt16.self, at: 6)
            let handle = request.be(UInt64.self, at: 8)
            let offset = request.be(UInt64.self, at: 16)
            let length = Int(request.be(UInt32.self, at: 24))
            let inRange = offset <= device.size && UInt64(length) <= device.size - offset
            switch NBD.Command(rawValue: type) {
            case .read?:
                guard length <= NBD.maximumRequest else { return try syncReply(handle, NBD.Error.inval) }
                guard inRange else {
                    try syncReply(handle, NBD.Error.inval)
                    continue
                }
                if let pipelined = device as? any NBDPipelinedDevice {
                    started()
                    let accepted = pipelined.startRead(offset: offset, length: length) { [self] error, segments, release in
                        enqueue(handle, error, data: error == 0 ? segments : [], release: release)
                    }
                    if accepted { continue }
                    pthread_mutex_lock(&replyMutex)
                    inFlight -= 1
                    pthread_mutex_unlock(&replyMutex)
                }
                let out = scratch(length)
                let error = device.read(offset: offset, into: out)
                try syncReply(handle, error, data: error == 0 ? UnsafeRawBufferPointer(out) : nil)
            case .write?:
                guard length <= NBD.maximumRequest else { return }
                let data = scratch(length)
                try receive(into: data)
                if inRange, !device.isReadOnly, let pipelined = device as? any NBDPipelinedDevice {
                    started()
                    let accepted = pipelined.startWrite(offset: offset, data: UnsafeRawBufferPointer(data), fua: flags & NBD.CommandFlags.fua != 0) {
                        [self] error in enqueue(handle, error)
                    }
                    if accepted { continue }
                    pthread_mutex_lock(&replyMutex)
                    inFlight -= 1
                    pthread_mutex_unlock(&replyMutex)
                }
                let error = !inRange ? NBD.Error.nospc : device.isReadOnly ? NBD.Error.perm
                    : device.write(offset: offset, from: UnsafeRawBufferPointer(data), fua: flags & NBD.CommandFlags.fua != 0)
                try syncReply(handle, error)
            case .flush?:
                try syncReply(handle, device.flush())
            case .trim?:
                try syncReply(handle, !inRange ? NBD.Error.inval : device.isReadOnly ? NBD.Error.perm : device.trim(offset: offset, length: UInt64(length)))
            case .writeZeroes?:
                try syncReply(handle, !inRange ? NBD.Error.nospc : device.isReadOnly ? NBD.Error.perm
                    : device.writeZeroes(offset: offset, length: UInt64(length), mayTrim: flags & NBD.CommandFlags.noHole == 0,
                                         fua: flags & NBD.CommandFlags.fua != 0))
            case .disconnect?:
                return
            default:
                try syncReply(handle, NBD.Error.inval)
            }
        }
    }

    private func scratch(_ length: Int) -> UnsafeMutableRawBufferPointer {
        if buffer.count < length {
            buffer.deallocate()
            buffer = .allocate(byteCount: length, alignment: 4096)
        }
        return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
    }

    private func simpleReply(_ handle: UInt64, _ error: UInt32, data: UnsafeRawBufferPointer? = nil) throws(NBDSocketError) {
        var b = [UInt8](repeating: 0, count: 16)
        b.putBE(NBD.simpleReplyMagic, at: 0)
        b.putBE(error, at: 4)
        b.putBE(handle, at: 8)
        try send(b)
        if let data { try send(data) }
    }

    // MARK: Socket I/O

    private func send(_ bytes: [UInt8]) throws(NBDSocketError) {
        let ok = bytes.withUnsafeBytes { b in (try? send(b)) != nil }
        guard ok else { throw .closed }
    }

    private func send(_ bytes: UnsafeRawBufferPointer) throws(NBDSocketError) {
        var sent = 0
        while sent < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .closed }
            sent += n
        }
    }

    private func receive(_ count: Int) throws(NBDSocketError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBytes { b in (try? receive(into: b)) != nil }
        guard ok else { throw .closed }
        return out
    }

    /// Bytes received but not yet consumed (one recv often brings many requests).
    private var inbox = [UInt8](repeating: 0, count: 65536)
    private var inboxStart = 0, inboxEnd = 0

    private func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NBDSocketError) {
        var got = 0
        while got < buffer.count {
            if inboxStart < inboxEnd {
                let n = min(inboxEnd - inboxStart, buffer.count - got)
                inbox.withUnsafeBytes { (buffer.baseAddress! + got).copyMemory(from: $0.baseAddress! + inboxStart, byteCount: n) }
                inboxStart += n
                got += n
                continue
            }
            let want = buffer.count - got
            if want >= inbox.count {
                // Large payloads go straight to their destination.
                let n = recv(fd, buffer.baseAddress! + got, want, 0)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw .closed }
                got += n
            } else {
                let n = inbox.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw .closed }
                inboxStart = 0
                inboxEnd = n
            }
        }
    }

    private func discard(_ count: Int) throws(NBDSocketError) {
        var left = count
        let chunk = scratch(min(count, 65536))
        while left > 0 {
            let n = min(left, chunk.count)
            try receive(into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<n]))
            left -= n
        }
    }
}

/// Socket errors of the NBD server.
public enum NBDSocketError: Error, Equatable, Sendable {
    case system(call: String, errno: Int32)
    case closed
}

enum NBDSocket {
    static func listen(path: String) throws(NBDSocketError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        unlink(path)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let raw = Array(path.utf8)
        guard raw.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw .system(call: "bind(\(path)): path too long", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: raw + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, Glibc.listen(fd, 16) == 0 else {
            let e = errno
            close(fd)
            throw .system(call: "bind(\(path))", errno: e)
        }
        return fd
    }
}

/// A pthread mutex with a closure API.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}
