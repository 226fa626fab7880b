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
    /// The socket file this server bound (device, inode): only that one is removed when it goes.
    private let boundFile: (dev: UInt64, ino: UInt64)?
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
        boundFile = NBDSocket.identity(path)
    }

    deinit {
        close(listenFD)
        // A connection thread may keep this server alive after a successor bound the same path
        // (the agent rejoining its host): removing the path then would take the successor's socket.
        if let boundFile, let now = NBDSocket.identity(path), now == boundFile { unlink(path) }
    }

    /// Connections served at once; more are closed at once.
    public static let maximumConnections = 16
    /// Requests and unsent replies one connection may hold (its reader waits beyond).
    public static var maximumQueued: Int { NBDConnection.maximumQueued }

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
            let admitted = stateLock.locked { () -> Bool? in
                if stopping { return nil }
                guard connections.count < Self.maximumConnections else { return false }
                connections.insert(fd)
                return true
            }
            guard let admitted else {
                close(fd)
                return
            }
            guard admitted else {
                // One thread and its buffers per connection: a client opening many makes no more.
                logger.warning("nbd: \(Self.maximumConnections) connections already; refusing another")
                close(fd)
                continue
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
    /// The device's pipelined interface (if it has one) and this connection's batch on it.
    private let pipelined: (any NBDPipelinedDevice)?
    private let batch: (any NBDRequestBatch)?
    /// Requests started through `batch` since the last `submitBatch()` (not yet in `inFlight`).
    private var unsubmitted = 0
    private var buffer: UnsafeMutableRawBufferPointer
    /// The header of the request being parsed.
    private let requestHeader: UnsafeMutableRawBufferPointer

    init(fd: Int32, server: NBDServer) {
        self.fd = fd
        self.server = server
        buffer = .allocate(byteCount: 1 << 20, alignment: 4096)
        requestHeader = .allocate(byteCount: 28, alignment: 8)
        inbox = .allocate(byteCount: 65536, alignment: 8)
        iov = .allocate(capacity: NBDConnection.maximumIOV)
        replyHeaders = .allocate(byteCount: 16 * NBDConnection.maximumIOV, alignment: 8)
        let pipelined = server.device as? any NBDPipelinedDevice
        self.pipelined = pipelined
        batch = pipelined?.makeBatch()
    }

    deinit {
        buffer.deallocate()
        requestHeader.deallocate()
        inbox.deallocate()
        iov.deallocate()
        replyHeaders.deallocate()
    }

    /// A reply waiting to be sent (pipelined mode).
    private struct Reply {
        var handle: UInt64
        var error: UInt32
        var data: [UnsafeRawBufferPointer]
        var release: (@Sendable () -> Void)?
        /// Bytes of it already on the socket (a non-blocking write stopped inside it).
        var sent = 0

        /// Header and data bytes.
        var size: Int { data.reduce(16) { $0 + $1.count } }
    }

    // Guarded by `replyMutex`:
    /// Replies waiting to be sent, in order.
    private var replies: [Reply] = []
    /// Requests started whose reply is not queued yet.
    private var inFlight = 0
    private var closing = false
    /// Some thread is writing replies; only that thread touches the socket's sending side and `outgoing`.
    private var sending = false
    /// A write failed: later replies are dropped (their buffers released) instead of sent.
    private var broken = false
    /// Queued replies wait for the end of a reply group that will flush them.
    private var groupFlushPending = false
    private var replyMutex = pthread_mutex_t()
    private var replyReady = pthread_cond_t()
    /// Signalled when queued replies go to the socket (or it fails): the reader may go on.
    private var roomReady = pthread_cond_t()

    // Owned by the thread that set `sending`:
    /// The replies being written.
    private var outgoing: [Reply] = []
    private let iov: UnsafeMutablePointer<iovec>
    /// 16-byte simple reply headers, one per reply of a `sendmsg`.
    private let replyHeaders: UnsafeMutableRawPointer
    /// Pieces per `sendmsg` (below IOV_MAX).
    private static let maximumIOV = 256
    /// Bytes a reply group writes itself at most (more goes to the sender thread).
    private static let groupedWriteLimit = 256 << 10

    func run() {
        defer { server.connectionEnded(fd) }
        pthread_mutex_init(&replyMutex, nil)
        pthread_cond_init(&replyReady, nil)
        pthread_cond_init(&roomReady, nil)
        var sender: pthread_t?
        if pipelined != nil {
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
        // Held requests still go to the device; the sender waits for their replies.
        submitBatch()
        if let sender {
            // Let in-flight requests finish, then stop the sender.
            pthread_mutex_lock(&replyMutex)
            closing = true
            pthread_cond_broadcast(&replyReady)
            pthread_mutex_unlock(&replyMutex)
            pthread_join(sender, nil)
        }
    }

    /// Queues a reply from any thread (pipelined mode). Inside `NBDReplyGrouping.together` it waits
    /// for the group's end, which writes it; otherwise the sender thread is woken.
    private func enqueue(_ handle: UInt64, _ error: UInt32, data: [UnsafeRawBufferPointer] = [], release: (@Sendable () -> Void)? = nil) {
        let group = ReplyGroup.active
        var join = false
        pthread_mutex_lock(&replyMutex)
        replies.append(Reply(handle: handle, error: error, data: data, release: release))
        inFlight -= 1
        if group != nil {
            join = !groupFlushPending
            groupFlushPending = true
        } else {
            pthread_cond_signal(&replyReady)
        }
        pthread_mutex_unlock(&replyMutex)
        if join { group?.add(self) }
    }

    /// The end of a reply group: unless another thread is writing, this thread writes what is
    /// queued without blocking; what the socket does not take goes to the sender thread.
    func flushGroupedReplies() {
        pthread_mutex_lock(&replyMutex)
        groupFlushPending = false
        // A writing thread looks at the queue again when it is done.
        guard !sending, !replies.isEmpty else {
            pthread_mutex_unlock(&replyMutex)
            return
        }
        // Large replies gain nothing from skipping the thread hop; the sender copies them.
        var bytes = 0
        for reply in replies { bytes += reply.size - reply.sent }
        guard bytes <= Self.groupedWriteLimit else {
            pthread_cond_signal(&replyReady)
            pthread_mutex_unlock(&replyMutex)
            return
        }
        sending = true
        swap(&replies, &outgoing)
        pthread_cond_signal(&roomReady)
        let abandon = broken
        pthread_mutex_unlock(&replyMutex)
        let result = abandon ? (written: outgoing.count, failed: false) : writeOutgoing(blocking: false)
        let finished = result.failed ? outgoing.count : result.written
        for i in 0..<finished { outgoing[i].release?() }
        pthread_mutex_lock(&replyMutex)
        if result.failed { broken = true }
        // The socket is full: the sender finishes these before anything queued meanwhile.
        if finished < outgoing.count { replies.insert(contentsOf: outgoing[finished...], at: 0) }
        outgoing.removeAll(keepingCapacity: true)
        sending = false
        if !replies.isEmpty || closing { pthread_cond_signal(&replyReady) }
        pthread_mutex_unlock(&replyMutex)
    }

    /// The sender thread: writes queued replies in order until the connection closes and nothing is in flight.
    private func sendReplies() {
        pthread_mutex_lock(&replyMutex)
        while true {
            while replies.isEmpty || sending {
                if closing && inFlight == 0 && replies.isEmpty && !sending {
                    pthread_mutex_unlock(&replyMutex)
                    return
                }
                pthread_cond_wait(&replyReady, &replyMutex)
            }
            sending = true
            swap(&replies, &outgoing)
            pthread_cond_signal(&roomReady)
            let abandon = broken
            pthread_mutex_unlock(&replyMutex)
            let failed = abandon ? false : writeOutgoing(blocking: true).failed
            for reply in outgoing { reply.release?() }
            outgoing.removeAll(keepingCapacity: true)
            pthread_mutex_lock(&replyMutex)
            if failed {
                broken = true
                pthread_cond_signal(&roomReady)
            }
            sending = false
        }
    }

    /// Writes `outgoing` in order, many replies per `sendmsg`. Blocking: until everything is written
    /// or the socket fails. Non-blocking: stops when the socket is full. Returns how many replies are
    /// completely written (`outgoing[written].sent` counts the bytes of a partly written one) and
    /// whether the socket failed. Only the thread that set `sending` calls this.
    private func writeOutgoing(blocking: Bool) -> (written: Int, failed: Bool) {
        var first = 0
        while first < outgoing.count {
            // The unsent bytes from `first` on, in at most `maximumIOV` pieces. Only `outgoing[first]`
            // can be partly sent, so every later reply adds its header and the header slots suffice.
            var pieces = 0
            var index = first
            gather: while index < outgoing.count && pieces < Self.maximumIOV {
                let reply = outgoing[index]
                let header = replyHeaders + 16 * (index - first)
                header.storeBytes(of: NBD.simpleReplyMagic.bigEndian, toByteOffset: 0, as: UInt32.self)
                header.storeBytes(of: reply.error.bigEndian, toByteOffset: 4, as: UInt32.self)
                header.storeBytes(of: reply.handle.bigEndian, toByteOffset: 8, as: UInt64.self)
                var skip = reply.sent
                if skip < 16 {
                    iov[pieces] = iovec(iov_base: header + skip, iov_len: 16 - skip)
                    pieces += 1
                    skip = 0
                } else {
                    skip -= 16
                }
                for segment in reply.data {
                    if skip >= segment.count {
                        skip -= segment.count
                        continue
                    }
                    guard pieces < Self.maximumIOV else { break gather }
                    iov[pieces] = iovec(iov_base: UnsafeMutableRawPointer(mutating: segment.baseAddress! + skip), iov_len: segment.count - skip)
                    pieces += 1
                    skip = 0
                }
                index += 1
            }
            var message = msghdr()
            message.msg_iov = iov
            message.msg_iovlen = pieces
            let n = sendmsg(fd, &message, Int32(MSG_NOSIGNAL) | (blocking ? 0 : Int32(MSG_DONTWAIT)))
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                guard e == EAGAIN else { return (first, true) }
                if !blocking { return (first, false) }
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, -1)
                continue
            }
            guard n > 0 else { return (first, true) }
            // Account the bytes written, reply by reply.
            var left = n
            while left > 0 {
                let remaining = outgoing[first].size - outgoing[first].sent
                if left < remaining {
                    outgoing[first].sent += left
                    break
                }
                left -= remaining
                outgoing[first].sent += remaining
                first += 1
            }
        }
        return (first, false)
    }

    private func started() {
        pthread_mutex_lock(&replyMutex)
        inFlight += 1
        pthread_mutex_unlock(&replyMutex)
    }

    /// Hands the requests held by `batch` to the device. Called before this thread blocks on the
    /// socket, before a synchronous request and when the connection ends.
    private func submitBatch() {
        guard unsubmitted > 0 else { return }
        pthread_mutex_lock(&replyMutex)
        inFlight += unsubmitted
        pthread_mutex_unlock(&replyMutex)
        unsubmitted = 0
        batch?.submit()
    }

    /// A reply from the request thread: direct, or through the sender's queue (pipelined mode) so
    /// replies never interleave on the socket.
    private func syncReply(_ handle: UInt64, _ error: UInt32, data: UnsafeRawBufferPointer? = nil) throws(NBDSocketError) {
        guard pipelined != nil else { return try simpleReply(handle, error, data: data) }
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

    /// Requests at the device and replies not yet handed to the socket, per connection. The reader
    /// waits at the limit: a client that keeps sending without reading its replies makes the
    /// server hold no more (the replies being written add at most as many again).
    static let maximumQueued = 256

    private func waitForRoom() {
        guard pipelined != nil else { return }
        pthread_mutex_lock(&replyMutex)
        let full = unsubmitted + inFlight + replies.count >= Self.maximumQueued
        pthread_mutex_unlock(&replyMutex)
        guard full else { return }
        // Held requests go to the device first: their replies are what frees room.
        submitBatch()
        pthread_mutex_lock(&replyMutex)
        while inFlight + replies.count >= Self.maximumQueued && !broken { pthread_cond_wait(&roomReady, &replyMutex) }
        pthread_mutex_unlock(&replyMutex)
    }

    private func transmission() throws(NBDSocketError) {
        while true {
            waitForRoom()
            try receive(into: requestHeader)
            let request = UnsafeRawBufferPointer(requestHeader)
            guard request.loadBE(UInt32.self, at: 0) == NBD.requestMagic else { return }
            let flags = request.loadBE(UInt16.self, at: 4)
            let type = request.loadBE(UInt16.self, at: 6)
            let handle = request.loadBE(UInt64.self, at: 8)
            let offset = request.loadBE(UInt64.self, at: 16)
            let length = Int(request.loadBE(UInt32.self, at: 24))
            let inRange = offset <= device.size && UInt64(length) <= device.size - offset
            // Requests that can wait (pipelined reads and writes) are started through the batch; the
            // batch goes to the device before this thread blocks on the socket (receive) or runs
            // anything synchronously, so it holds only requests that were already buffered.
            switch NBD.Command(rawValue: type) {
            case .read?:
                guard length <= NBD.maximumRequest else { return try syncReply(handle, NBD.Error.inval) }
                guard inRange else {
                    try syncReply(handle, NBD.Error.inval)
                    continue
                }
                if let batch {
                    let accepted = batch.startRead(offset: offset, length: length) { [self] error, segments, release in
                        enqueue(handle, error, data: error == 0 ? segments : [], release: release)
                    }
                    if accepted {
                        unsubmitted += 1
                        continue
                    }
                }
                submitBatch()
                let out = scratch(length)
                let error = device.read(offset: offset, into: out)
                try syncReply(handle, error, data: error == 0 ? UnsafeRawBufferPointer(out) : nil)
            case .write?:
                guard length <= NBD.maximumRequest else { return }
                let data = scratch(length)
                try receive(into: data)
                if inRange, !device.isReadOnly, let batch {
                    let accepted = batch.startWrite(offset: offset, data: UnsafeRawBufferPointer(data), fua: flags & NBD.CommandFlags.fua != 0) {
                        [self] error in enqueue(handle, error)
                    }
                    if accepted {
                        unsubmitted += 1
                        continue
                    }
                }
                submitBatch()
                let error = !inRange ? NBD.Error.nospc : device.isReadOnly ? NBD.Error.perm
                    : device.write(offset: offset, from: UnsafeRawBufferPointer(data), fua: flags & NBD.CommandFlags.fua != 0)
                try syncReply(handle, error)
            case .flush?:
                submitBatch()
                try syncReply(handle, device.flush())
            case .trim?:
                submitBatch()
                try syncReply(handle, !inRange ? NBD.Error.inval : device.isReadOnly ? NBD.Error.perm : device.trim(offset: offset, length: UInt64(length)))
            case .writeZeroes?:
                submitBatch()
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
    private let inbox: UnsafeMutableRawBufferPointer
    private var inboxStart = 0, inboxEnd = 0

    private func receive(into buffer: UnsafeMutableRawBufferPointer) throws(NBDSocketError) {
        var got = 0
        while got < buffer.count {
            if inboxStart < inboxEnd {
                let n = min(inboxEnd - inboxStart, buffer.count - got)
                (buffer.baseAddress! + got).copyMemory(from: inbox.baseAddress! + inboxStart, byteCount: n)
                inboxStart += n
                got += n
                continue
            }
            // Everything buffered is parsed: what was started goes to the device before recv may block.
            submitBatch()
            let want = buffer.count - got
            if want >= inbox.count {
                // Large payloads go straight to their destination.
                let n = recv(fd, buffer.baseAddress! + got, want, 0)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw .closed }
                got += n
            } else {
                let n = recv(fd, inbox.baseAddress!, inbox.count, 0)
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

extension UnsafeRawBufferPointer {
    /// Reads a big-endian integer at `offset`; bounds are checked by the caller.
    fileprivate func loadBE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
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

    /// The device and inode of the file at `path` (not followed), if there is one.
    static func identity(_ path: String) -> (dev: UInt64, ino: UInt64)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
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
