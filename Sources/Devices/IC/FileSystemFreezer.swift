// The guest's file-system freezer for backups: which mounts hv_vss_daemon would freeze, frozen
// with FIFREEZE in a safe order, all or nothing.

import CSystem
import Glibc

/// Freezes and thaws the guest's file systems for a backup.
public protocol FileSystemFreezer: AnyObject {
    /// Freezes every selected file system and returns their mount points. On a failure it thaws
    /// those it froze and throws: all or nothing.
    func freeze() throws(FreezeError) -> [String]
    /// Thaws in reverse order; returns what could not be thawed.
    func thaw() -> [String]
    var isFrozen: Bool { get }
}

/// Why a freeze was not done.
public enum FreezeError: Error, Equatable, Sendable, CustomStringConvertible {
    case cannotOpen(String, errno: Int32)
    case failed(String, errno: Int32)
    case noMountTable(errno: Int32)

    public var description: String {
        switch self {
        case .cannotOpen(let p, let e): "cannot open \(p): \(String(cString: strerror(e)))"
        case .failed(let p, let e): "cannot freeze \(p): \(String(cString: strerror(e)))"
        case .noMountTable(let e): "cannot read /proc/self/mountinfo: \(String(cString: strerror(e)))"
        }
    }
}

/// One line of /proc/self/mountinfo, the fields the freezer needs.
public struct MountEntry: Equatable, Sendable {
    public var mountPoint: String
    public var device: String
    public var fileSystem: String
    public var source: String
    public var readOnly: Bool

    /// Parses one mountinfo line (`id parent major:minor root mountpoint options [optional…] - type source superoptions`).
    public init?(line: Substring) {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash >= 6, dash + 3 < fields.count else { return nil }
        device = String(fields[2])
        mountPoint = Self.unescape(fields[4])
        fileSystem = String(fields[dash + 1])
        source = Self.unescape(fields[dash + 2])
        readOnly = fields[dash + 3].split(separator: ",").first == "ro"
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: Substring) -> String {
        let b = Array(s.utf8)
        func octal(_ c: UInt8) -> UInt8? { (0x30...0x37).contains(c) ? c - 0x30 : nil }
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 3 < b.count, let h = octal(b[i + 1]), h <= 3, let m = octal(b[i + 2]), let l = octal(b[i + 3]) {
                out.append(h << 6 | m << 3 | l)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Whether it sits on a loop device (block major 7).
    public var onLoopDevice: Bool { device.hasPrefix("7:") }
}

/// The mounts hv_vss_daemon freezes — block-device file systems (`/dev/…`) mounted writable,
/// not vfat, each superblock once — optionally only those at `only`. Order: file systems on loop
/// devices first (freezing one after its backing file system would hang on its own sync), then
/// the rest in mount order, the root last.
public func freezeCandidates(mountInfo: String, only: [String]) -> [MountEntry] {
    var seen = Set<String>()
    var chosen: [MountEntry] = []
    for line in mountInfo.split(separator: "\n") {
        guard let m = MountEntry(line: line), m.source.hasPrefix("/dev/"), !m.readOnly, m.fileSystem != "vfat" else { continue }
        guard only.isEmpty || only.contains(m.mountPoint), seen.insert(m.device).inserted else { continue }
        chosen.append(m)
    }
    let loops = chosen.filter { $0.onLoopDevice }
    let rest = chosen.filter { !$0.onLoopDevice && $0.mountPoint != "/" }
    return loops + rest + chosen.filter { !$0.onLoopDevice && $0.mountPoint == "/" }
}

/// The real freezer: FIFREEZE on each candidate, the directories kept open so the thaw needs no
/// path lookups on frozen file systems.
public final class MountFreezer: FileSystemFreezer {
    let only: [String]
    let mountInfoPath: String
    private var frozen: [(mountPoint: String, fd: Int32)] = []

    public init(only: [String], mountInfoPath: String = "/proc/self/mountinfo") {
        self.only = only
        self.mountInfoPath = mountInfoPath
    }

    deinit { _ = thaw() }

    public var isFrozen: Bool { !frozen.isEmpty }

    public func freeze() throws(FreezeError) -> [String] {
        guard frozen.isEmpty else { return frozen.map(\.mountPoint) }
        guard let table = Self.readAll(mountInfoPath) else { throw .noMountTable(errno: errno) }
        for m in freezeCandidates(mountInfo: table, only: only) {
            let fd = viridian_open(m.mountPoint, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0)
            guard fd >= 0 else {
                let e = errno
                _ = thaw()
                throw .cannotOpen(m.mountPoint, errno: e)
            }
            if viridian_fsfreeze(fd, 1) == 0 {
                frozen.append((m.mountPoint, fd))
                continue
            }
            let e = errno
            close(fd)
            // EOPNOTSUPP: this file system cannot freeze. EBUSY: someone else froze it (not ours to thaw).
            if e == EOPNOTSUPP || e == EBUSY { continue }
            _ = thaw()
            throw .failed(m.mountPoint, errno: e)
        }
        return frozen.map(\.mountPoint)
    }

    public func thaw() -> [String] {
        var failures: [String] = []
        for f in frozen.reversed() {
            if viridian_fsfreeze(f.fd, 0) != 0 && errno != EINVAL { failures.append("\(f.mountPoint): \(String(cString: strerror(errno)))") }
            close(f.fd)
        }
        frozen.removeAll()
        return failures
    }

    static func readAll(_ path: String) -> String? {
        let fd = viridian_open(path, O_RDONLY, 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while data.count < 16 << 20 {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data += chunk[0..<n]
        }
        return String(decoding: data, as: UTF8.self)
    }
}
