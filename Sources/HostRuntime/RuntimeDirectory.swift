// The host's runtime directory: sockets live there, so it must be this user's own.

import Glibc

/// Creates or checks the directory that holds the host's sockets. An existing directory must be
/// a real directory (not a symbolic link), owned by this user and writable by no one else:
/// otherwise another user who made `/tmp/viridian-UID` first could swap the sockets.
public enum RuntimeDirectory {
    /// Why a runtime directory is refused.
    public struct Refused: Error, CustomStringConvertible {
        public let path: String
        public let why: String
        public var description: String { "runtime directory \(path): \(why)" }
    }

    /// Makes `path` (mode 0700, parents as needed) or checks the existing one.
    public static func prepare(_ path: String) throws(Refused) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw Refused(path: path, why: "mkdir \(prefix): \(String(cString: strerror(errno)))")
            }
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw Refused(path: path, why: String(cString: strerror(errno))) }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw Refused(path: path, why: "not a directory (a symbolic link?)") }
        guard st.st_uid == getuid() else { throw Refused(path: path, why: "owned by uid \(st.st_uid), not this user (uid \(getuid()))") }
        guard st.st_mode & 0o022 == 0 else {
            throw Refused(path: path, why: "writable by others (mode \(String(st.st_mode & 0o7777, radix: 8))); chmod go-w it")
        }
    }
}
