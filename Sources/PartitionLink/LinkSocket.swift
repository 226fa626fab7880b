// Unix SOCK_SEQPACKET sockets that carry link frames with descriptors attached.

import CSystem
import Glibc

/// One connected SOCK_SEQPACKET socket. Owned: closed on deinit (or `close()`).
public final class LinkSocket: @unchecked Sendable {
    public private(set) var fd: Int32

    public init(adopting fd: Int32) { self.fd = fd }
    deinit { close() }

    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Parses `unix:PATH` (a bare path is accepted too).
    public static func path(of address: String) throws(LinkError) -> String {
        let path = address.hasPrefix("unix:") ? String(address.dropFirst(5)) : address
        guard !path.isEmpty, path.utf8.count < 108 else { throw .badAddress(address) }
        return path
    }

    /// Connects to a listening partition socket.
    public static func connect(to address: String) throws(LinkError) -> LinkSocket {
        LinkSocket(adopting: try UnixSocket.connect(path: try Self.path(of: address), type: Int32(SOCK_SEQPACKET.rawValue)))
    }

    /// Sends a frame with descriptors.
    /// Sends one frame with `fds` attached. `wait: false` never blocks: a peer whose queue is
    /// full (it does not read) gives `.system(call: "sendmsg", errno: EAGAIN)`.
    public func send(_ frame: LinkFrame, fds: [Int32] = [], wait: Bool = true) throws(LinkError) {
        let bytes = frame.encode()
        let n = bytes.withUnsafeBytes { b in fds.withUnsafeBufferPointer { f in
            wait ? viridian_send_with_fds(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
                : viridian_send_with_fds_nowait(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
        } }
        guard n == bytes.count else { throw n < 0 ? .system(call: "sendmsg", errno: errno) : .closed }
    }

    /// Receives one frame and its descriptors (the caller owns them).
    public func receive() throws(LinkError) -> (LinkFrame, [Int32]) {
        var buffer = [UInt8](repeating: 0, count: LinkFrame.maximumSize + 1)
        var fds = [Int32](repeating: -1, count: 64)
        var count: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { b in fds.withUnsafeMutableBufferPointer { f in
            viridian_recv_with_fds(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count), &count)
        } }
        let received = Array(fds[0..<Int(count)])
        guard n > 0 else {
            received.forEach { Glibc.close($0) }
            throw n == 0 ? .closed : .system(call: "recvmsg", errno: errno)
        }
        do {
            return (try LinkFrame(decoding: Array(buffer[0..<n])), received)
        } catch {
            received.forEach { Glibc.close($0) }
            throw error
        }
    }
}

/// A listening SOCK_SEQPACKET socket at a filesystem path; the path is removed on close.
public final class LinkListener: @unchecked Sendable {
    public let fd: Int32
    public let path: String
    /// Whether this listener made the socket file (and removes it when it goes).
    let ownsPath: Bool

    /// Binds `path`, replacing a stale socket file left by a dead host.
    public init(path: String) throws(LinkError) {
        fd = try UnixSocket.listen(path: path, type: Int32(SOCK_SEQPACKET.rawValue))
        self.path = path
        ownsPath = true
    }

    /// Takes over a listening socket bound by another process (a partition worker's, bound by its
    /// supervisor): the descriptor is closed when the listener goes, the socket file is left.
    public init(adopting fd: Int32, path: String) {
        self.fd = fd
        self.path = path
        ownsPath = false
    }

    deinit {
        Glibc.close(fd)
        if ownsPath { unlink(path) }
    }

    /// Accepts one connection.
    public func accept() throws(LinkError) -> LinkSocket {
        let client = viridian_accept(fd)
        guard client >= 0 else { throw .system(call: "accept", errno: errno) }
        return LinkSocket(adopting: client)
    }

    /// The pid of the peer of an accepted socket (SO_PEERCRED).
    public static func peerPID(_ socket: LinkSocket) -> Int32 {
        viridian_peer_pid(socket.fd)
    }
}

/// Plain Unix-domain socket set-up shared by the link and the host's control socket.
public enum UnixSocket {
    /// Connects a new socket of `type` (SOCK_STREAM, SOCK_SEQPACKET) to `path`; returns the descriptor.
    public static func connect(path: String, type: Int32) throws(LinkError) -> Int32 {
        guard !path.isEmpty, path.utf8.count < 108 else { throw .badAddress(path) }
        let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        var addr = sockaddr_un.make(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw .system(call: "connect(\(path))", errno: e)
        }
        return fd
    }

    /// Binds and listens on `path`, replacing a stale socket file left by a dead process. The
    /// socket file gets `mode` (owner only by default) before it listens, so no other user can
    /// connect in between.
    public static func listen(path: String, type: Int32, backlog: Int32 = 16, mode: mode_t = 0o600) throws(LinkError) -> Int32 {
        guard !path.isEmpty, path.utf8.count < 108 else { throw .badAddress(path) }
        let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system(call: "socket", errno: errno) }
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        var addr = sockaddr_un.make(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, chmod(path, mode) == 0, Glibc.listen(fd, backlog) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw .system(call: "bind(\(path))", errno: e)
        }
        return fd
    }
}

extension sockaddr_un {
    /// A Unix socket address for `path` (truncated to fit).
    public static func make(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return addr
    }
}
