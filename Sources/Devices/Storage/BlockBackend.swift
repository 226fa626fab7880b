// What a virtual disk stores into: a raw image file read and written with real syscalls.

import CSystem
import Glibc

/// Why the backing store failed.
public enum BlockError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    case outOfRange
    public var description: String {
        switch self {
        case .system(let call, let e): "\(call): \(String(cString: strerror(e)))"
        case .outOfRange: "access beyond the end of the disk"
        }
    }
}

/// A byte-addressed backing store with scatter/gather I/O.
public protocol BlockBackend: AnyObject {
    var sizeBytes: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Reads `segments` back to back starting at `offset`.
    func read(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws(BlockError)
    /// Writes `segments` back to back starting at `offset`.
    func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError)
    func flush() throws(BlockError)
    /// Releases the range (reads return zeros afterwards).
    func discard(offset: UInt64, length: UInt64) throws(BlockError)
    /// Reads only if it cannot block (the data is cached); false means "use `read` elsewhere".
    func readWithoutBlocking(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) -> Bool
}

extension BlockBackend {
    public func readWithoutBlocking(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) -> Bool { false }
}

/// A raw image file (sparse-friendly), through the page cache; flush is fsync.
public final class FileBackend: BlockBackend, @unchecked Sendable {
    public let path: String
    public let fd: Int32
    public let sizeBytes: UInt64
    public let isReadOnly: Bool

    /// Opens `path`; creates a sparse file of `createSize` bytes if it does not exist.
    public convenience init(path: String, readOnly: Bool = false, createSize: UInt64? = nil) throws(BlockError) {
        try self.init(adopting: Self.open(path: path, readOnly: readOnly, create: createSize != nil), path: path, readOnly: readOnly,
                      createSize: createSize)
    }

    /// Opens an image the way `init(path:)` does and returns the descriptor (a supervisor opens
    /// images for the partition worker that serves them).
    public static func open(path: String, readOnly: Bool, create: Bool) throws(BlockError) -> Int32 {
        // O_NOFOLLOW: a path whose last component is a symbolic link is refused (ELOOP), so a
        // path given over the control socket cannot be pointed at another file.
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOFOLLOW
        if create && !readOnly { flags |= O_CREAT }
        let fd = Glibc.open(path, flags, 0o644)
        guard fd >= 0 else {
            let e = errno
            throw .system(call: e == ELOOP ? "open(\(path)): a symbolic link (give the image's own path)" : "open(\(path))", errno: e)
        }
        return fd
    }

    /// Serves the image open on `fd` (taken over: closed when the backend goes, or on failure);
    /// an empty file becomes `createSize` bytes (sparse).
    public init(adopting fd: Int32, path: String, readOnly: Bool, createSize: UInt64? = nil) throws(BlockError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw .system(call: "fstat", errno: e)
        }
        var size = UInt64(st.st_size)
        if size == 0, let createSize {
            guard let length = off_t(exactly: createSize) else {
                close(fd)
                throw .system(call: "ftruncate", errno: EFBIG)
            }
            guard ftruncate(fd, length) == 0 else {
                let e = errno
                close(fd)
                throw .system(call: "ftruncate", errno: e)
            }
            size = createSize
        }
        self.path = path
        self.fd = fd
        self.sizeBytes = size
        self.isReadOnly = readOnly
    }

    deinit { close(fd) }

    public func read(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws(BlockError) {
        var at = offset
        for s in segments where s.count > 0 {
            var done = 0
            while done < s.count {
                let n = pread(fd, s.baseAddress! + done, s.count - done, off_t(at) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw .system(call: "pread", errno: errno)
                }
                if n == 0 {
                    // Beyond the end of a short file: zeros.
                    (s.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: s.count - done)
                    break
                }
                done += n
            }
            at += UInt64(s.count)
        }
    }

    public func write(offset: UInt64, from segments: [UnsafeRawBufferPointer]) throws(BlockError) {
        var at = offset
        for s in segments where s.count > 0 {
            var done = 0
            while done < s.count {
                let n = pwrite(fd, s.baseAddress! + done, s.count - done, off_t(at) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw .system(call: "pwrite", errno: errno)
                }
                done += n
            }
            at += UInt64(s.count)
        }
    }

    public func readWithoutBlocking(offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) -> Bool {
        var at = offset
        for s in segments where s.count > 0 {
            // A short read (cache partly filled) also sends the whole command to a worker.
            guard viridian_pread_nowait(fd, s.baseAddress!, s.count, Int64(at)) == s.count else { return false }
            at += UInt64(s.count)
        }
        return true
    }

    public func flush() throws(BlockError) {
        guard fsync(fd) == 0 else { throw .system(call: "fsync", errno: errno) }
    }

    public func discard(offset: UInt64, length: UInt64) throws(BlockError) {
        guard viridian_punch_hole(fd, Int64(offset), Int64(length)) == 0 else {
            throw .system(call: "fallocate(punch hole)", errno: errno)
        }
    }
}
