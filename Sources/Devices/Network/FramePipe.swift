// Two frame ports joined back to back (a SOCK_SEQPACKET socket pair): what one end sends, the other receives.

import CSystem
import Glibc

/// A pair of `FramePort`s that carry frames, virtio_net_hdr first, between two adapters in one
/// process, the way a veth pair joins two interfaces: a parent partition relays its child's
/// synthetic NIC into its own with one. Each end is a non-blocking descriptor that is readable
/// when frames wait; a frame that does not fit the socket buffer is dropped (the sender sees
/// false), as a TAP queue drops.
public final class FramePipe {
    public let first: FramePipeEnd
    public let second: FramePipeEnd

    /// Socket buffer per direction: room for a burst of 64 KiB segments.
    public static let bufferBytes: Int32 = 4 << 20

    public init(label: String) throws(NetworkError) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw .system(call: "socketpair", errno: errno) }
        for fd in fds {
            var size = Self.bufferBytes
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        first = FramePipeEnd(descriptor: fds[0], name: "\(label).0")
        second = FramePipeEnd(descriptor: fds[1], name: "\(label).1")
        first.peer = second
        second.peer = first
    }
}

/// One end of a `FramePipe`. Its carrier is what the far end set (a relaying parent passes its
/// own adapter's link on to its child's); `onCarrier` hears the far end change it.
public final class FramePipeEnd: FramePort, @unchecked Sendable {
    public let descriptor: Int32
    public let name: String
    weak var peer: FramePipeEnd?
    /// Frames the socket refused (its buffer full or the far end closed).
    public private(set) var drops: UInt64 = 0
    /// The TUN_F_* offloads the reader of this end said it accepts.
    public private(set) var acceptedOffloads: UInt32 = 0
    /// Called when the far end sets its carrier (on that end's thread).
    public var onCarrier: ((Bool) -> Void)?

    init(descriptor: Int32, name: String) {
        self.descriptor = descriptor
        self.name = name
    }

    deinit { close(descriptor) }

    public func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool {
        if viridian_writev(descriptor, iov.baseAddress, Int32(iov.count)) >= 0 { return true }
        drops &+= 1
        return false
    }

    public func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? {
        let n = viridian_readv(descriptor, iov.baseAddress, Int32(iov.count))
        return n > 0 ? n : nil
    }

    public func setOffload(_ flags: UInt32) { acceptedOffloads = flags }

    public func setCarrier(_ on: Bool) { peer?.onCarrier?(on) }
}
