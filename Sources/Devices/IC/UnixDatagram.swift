// One Unix datagram to a path (chrony's SOCK refclock, systemd's notify socket).

import Glibc

/// Sends `bytes` as one datagram to the Unix socket at `path` ("@name" for the abstract namespace).
func sendDatagram(_ bytes: [UInt8], to path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let raw = Array(path.utf8)
    guard raw.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
    withUnsafeMutableBytes(of: &addr.sun_path) { dst in
        dst.copyBytes(from: raw)
        if raw.first == UInt8(ascii: "@") { dst[0] = 0 }
    }
    let length = socklen_t(MemoryLayout<sa_family_t>.size + raw.count + (raw.first == UInt8(ascii: "@") ? 0 : 1))
    let n = bytes.withUnsafeBytes { b in
        withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, b.baseAddress, b.count, 0, $0, length) }
        }
    }
    return n == bytes.count
}

/// Tells systemd something through $NOTIFY_SOCKET (READY=1, WATCHDOG=1); false when not under systemd.
@discardableResult
public func systemdNotify(_ state: String) -> Bool {
    guard let path = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return false }
    return sendDatagram(Array(state.utf8), to: path)
}
