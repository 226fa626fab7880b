// Host and guest TAP devices: open or create, configure, move frames with their virtio headers.

import CSystem
import Glibc

/// Why a network operation failed.
public enum NetworkError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case invalid(String)

    public var description: String {
        switch self {
        case .system(let call, let e): "\(call): \(String(cString: strerror(e)))"
        case .invalid(let why): why
        }
    }
}

/// Where a network adapter's frames go on the far side: a TAP device, or a test's queue. Every
/// frame carries a 10-byte virtio_net_hdr first (iovec 0).
public protocol FramePort: AnyObject {
    /// A descriptor that is readable when frames wait, or -1.
    var descriptor: Int32 { get }
    /// Writes one frame (header + data) gathered from `iov`; false if the port dropped it.
    func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool
    /// Reads one frame scattered into `iov`; the byte count, or nil when nothing waits.
    func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int?
    /// Which offloads the reader accepts (TUN_F_* bits).
    func setOffload(_ flags: UInt32)
    /// The port's carrier.
    func setCarrier(_ on: Bool)
    /// The port is gone for good (its TAP was deleted): reads and writes fail until it is replaced.
    var isLost: Bool { get }
}

extension FramePort {
    public var isLost: Bool { false }
}

/// TUNSETOFFLOAD bits.
public enum TunOffload {
    public static let checksum: UInt32 = 0x01
    public static let tso4: UInt32 = 0x02
    public static let tso6: UInt32 = 0x04
    public static let tsoECN: UInt32 = 0x08
}

/// Runs `body` with the calling thread inside network namespace `name` (nil or empty: as it is).
public func inNetworkNamespace<T>(_ name: String?, _ body: () throws -> T) throws -> T {
    guard let name, !name.isEmpty else { return try body() }
    let saved = viridian_netns_enter(name)
    guard saved >= 0 else { throw NetworkError.system(call: "setns(/run/netns/\(name))", errno: errno) }
    defer { _ = viridian_netns_restore(saved) }
    return try body()
}

/// A TAP device with IFF_VNET_HDR, non-blocking. Created if it does not exist (a persistent TAP
/// of that name is attached instead). One descriptor per queue.
public final class TapDevice: FramePort {
    public let name: String
    public let namespace: String?
    public let descriptor: Int32
    public private(set) var writeErrors: UInt64 = 0
    /// A read or write failed the way a deleted TAP fails (EBADFD, EIO, ENODEV, ENXIO).
    public private(set) var isLost = false

    public init(name: String, namespace: String? = nil, multiQueue: Bool = false) throws {
        guard !name.isEmpty, name.utf8.count < 16 else { throw NetworkError.invalid("TAP name \"\(name)\" must be 1–15 bytes") }
        var actual = [CChar](repeating: 0, count: 16)
        let fd = try inNetworkNamespace(namespace) { viridian_tap_open(name, multiQueue ? 1 : 0, &actual) }
        guard fd >= 0 else { throw NetworkError.system(call: "TUNSETIFF \(name)", errno: errno) }
        descriptor = fd
        self.name = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.namespace = namespace
    }

    deinit { close(descriptor) }

    /// Sets the interface's MAC, MTU and administrative state (nil keeps each).
    public func configure(mac: [UInt8]? = nil, mtu: Int? = nil, up: Bool? = nil) throws {
        let rc = try inNetworkNamespace(namespace) { () -> Int32 in
            if let mac {
                guard mac.count == 6 else { throw NetworkError.invalid("a MAC is 6 bytes") }
                return mac.withUnsafeBufferPointer { viridian_netif_configure(name, $0.baseAddress, Int32(mtu ?? 0), up.map { $0 ? 1 : 0 } ?? -1) }
            }
            return viridian_netif_configure(name, nil, Int32(mtu ?? 0), up.map { $0 ? 1 : 0 } ?? -1)
        }
        guard rc == 0 else { throw NetworkError.system(call: "configure \(name)", errno: errno) }
    }

    /// The interface's MAC, MTU and flags as the kernel has them.
    public func query() throws -> (mac: [UInt8], mtu: Int, flags: UInt32) {
        var mac = [UInt8](repeating: 0, count: 6)
        var mtu: Int32 = 0
        var flags: UInt32 = 0
        let rc = try inNetworkNamespace(namespace) { viridian_netif_query(name, &mac, &mtu, &flags) }
        guard rc == 0 else { throw NetworkError.system(call: "query \(name)", errno: errno) }
        return (mac, Int(mtu), flags)
    }

    public func send(_ iov: UnsafeBufferPointer<iovec>) -> Bool {
        if viridian_writev(descriptor, iov.baseAddress, Int32(iov.count)) >= 0 { return true }
        writeErrors &+= 1
        noteFailure(errno)
        return false
    }

    public func receive(_ iov: UnsafeBufferPointer<iovec>) -> Int? {
        let n = viridian_readv(descriptor, iov.baseAddress, Int32(iov.count))
        if n < 0 { noteFailure(errno) }
        return n > 0 ? n : nil
    }

    private func noteFailure(_ e: Int32) {
        if e == EBADFD || e == EIO || e == ENODEV || e == ENXIO { isLost = true }
    }

    /// Puts the TAP queue open on `fd` (a TAP of the same name made again) behind this device's
    /// descriptor number, so watchers keep the number; `fd` is closed.
    public func reattach(_ fd: Int32) -> Bool {
        defer { close(fd) }
        guard dup2(fd, descriptor) == descriptor else { return false }
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        isLost = false
        return true
    }

    public func setOffload(_ flags: UInt32) { _ = viridian_tap_set_offload(descriptor, flags) }

    public func setCarrier(_ on: Bool) { _ = viridian_tap_set_carrier(descriptor, on ? 1 : 0) }
}

/// MAC address text ("00:15:5d:01:02:03") and back.
public enum MACAddress {
    public static func parse(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":")
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == 6 ? bytes : nil
    }

    public static func format(_ mac: [UInt8]) -> String {
        mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}
