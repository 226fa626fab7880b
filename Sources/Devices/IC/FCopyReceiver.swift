// Guest file copy (FCOPY), guest end: files land in a temporary file beside their destination and
// are renamed into place on COMPLETE; nothing outside the allowed directories, no symlink followed.

import CSystem
import Glibc
import Logging
import Synchronization
import VMBusWire

/// Why a copy was refused, and the status the host gets for it.
public enum FCopyRefusal: Error, Equatable, Sendable, CustomStringConvertible {
    case notAllowed(String)
    case badName(String)
    case exists(String)
    case diskFull
    case ioError(String, Int32)
    case noCopy
    case outOfOrder(expected: UInt64, got: UInt64)
    case pastEnd(UInt64)
    case incomplete(written: UInt64, declared: UInt64)
    case malformed(String)

    public var status: UInt32 {
        switch self {
        case .exists: ICStatus.alreadyExists
        case .diskFull: ICStatus.diskFull
        case .malformed, .outOfOrder, .pastEnd, .badName, .notAllowed: ICStatus.invalidArgument
        default: ICStatus.fail
        }
    }

    public var description: String {
        switch self {
        case .notAllowed(let p): "\(p) is outside the directories files may be copied to"
        case .badName(let n): "bad file or directory name '\(n)'"
        case .exists(let p): "\(p) exists (the host did not ask to overwrite)"
        case .diskFull: "no space left"
        case .ioError(let what, let e): "\(what): \(String(cString: strerror(e)))"
        case .noCopy: "no copy in progress"
        case .outOfOrder(let e, let g): "fragment at \(g), expected \(e)"
        case .pastEnd(let o): "fragment ends at \(o), past the declared size"
        case .incomplete(let w, let d): "COMPLETE after \(w) of \(d) bytes"
        case .malformed(let why): why
        }
    }
}

/// Guest end (framework 3.0, service 1.1, as Linux's daemon). One copy at a time; a new START,
/// CANCEL, a failure, two minutes without a fragment or the channel closing removes the
/// temporary file. Files are created with the mode the host tagged, else 0644, owned by the agent.
/// File I/O runs on a thread of its own, never with the bus locked (the file system may sit on one
/// of the agent's own synthetic disks, whose writes need the bus).
public final class FCopyService: ICGuestService, @unchecked Sendable {
    public let serviceType = ICMessageType.fileCopy
    public let frameworkVersions = [ICVersion(3, 0)]
    public let serviceVersions = [ICVersion(1, 1)]
    /// Directories (absolute) files may be written under.
    public let allowed: [String]
    public static let temporaryPrefix = ".viridian-fcopy-"
    public static let idleTimeoutNs: UInt64 = 120_000_000_000
    let now: () -> UInt64
    let logger: Logger
    private let work: OffBusWork

    private struct Transfer {
        var directory: Int32
        var temporary: String
        var name: String
        var path: String
        var fd: Int32
        var declared: UInt64
        var written: UInt64
        var mode: mode_t
        var overwrite: Bool
    }
    /// The copy in progress; touched only on the worker (or inline).
    private var transfer: Transfer?
    /// When the copy in progress last moved (nil: none); `tick` reads it on the bus thread.
    private let idleSince = Mutex<UInt64?>(nil)

    /// `withBus` runs a closure with the bus locked (to answer); `background` false handles
    /// requests inline (in-memory tests).
    public init(allowed: [String], now: @escaping () -> UInt64, logger: Logger,
                withBus: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void = { $0() }, background: Bool = true) {
        self.allowed = allowed.map { $0.count > 1 && $0.hasSuffix("/") ? String($0.dropLast()) : $0 }.filter { $0.hasPrefix("/") }
        self.now = now
        self.logger = logger
        work = OffBusWork(name: "viridian-fcopy", background: background, withBus: withBus)
        for root in self.allowed { Self.sweep(root) }
    }

    // Queued jobs hold the service, so none is left by now: clean up here, on this thread.
    deinit { abort("the service stopped") }

    public var inProgress: Bool { idleSince.withLock { $0 } != nil }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        work.answer(&packet, transactionID: transactionID, client: client) { [self] request in process(Array(request[ICHeader.size...])) }
    }

    /// One request; the status for the host.
    private func process(_ body: [UInt8]) -> UInt32 {
        guard body.count >= 4 else { return refuse(.malformed("message of \(body.count) bytes")) }
        do throws(FCopyRefusal) {
            switch FCopyOperation(rawValue: body.le(UInt32.self, at: 0)) {
            case .start:
                abort("a new copy started")
                let start: FCopyStart
                do { start = try FCopyStart(decoding: body) } catch { throw .malformed("\(error)") }
                try begin(start)
            case .write:
                let fragment: FCopyFragment
                do { fragment = try FCopyFragment(decoding: body) } catch { throw .malformed("\(error)") }
                try write(fragment, body)
            case .complete:
                try complete()
            case .cancel:
                if transfer != nil { logger.notice("fcopy: the host cancelled the copy") }
                abort(nil)
            case nil:
                throw .malformed("unknown operation \(body.le(UInt32.self, at: 0))")
            }
            return ICStatus.ok
        } catch {
            return refuse(error)
        }
    }

    public func tick(now: UInt64) {
        guard let since = idleSince.withLock({ $0 }), now > since, now - since > Self.idleTimeoutNs else { return }
        work.async { [self] in
            // Still idle when the job runs (a fragment may have come in between).
            guard let still = idleSince.withLock({ $0 }), now > still, now - still > Self.idleTimeoutNs else { return }
            abort("no fragment for \(Self.idleTimeoutNs / 1_000_000_000) s")
        }
    }

    /// Drops a copy in progress and waits for it (call without the bus locked).
    public func channelClosed() { work.sync { [self] in abort("the host closed the channel") } }

    private func refuse(_ why: FCopyRefusal) -> UInt32 {
        logger.warning("fcopy: refused: \(why)")
        if why != .noCopy { abort(nil) }
        return why.status
    }

    // MARK: Steps

    private func begin(_ start: FCopyStart) throws(FCopyRefusal) {
        let name = start.fileName
        guard Self.isPlainName(name) else { throw .badName(name) }
        let directory = try openDirectory(start.pathName, create: start.flags.contains(.createPath))
        var closeDirectory = true
        defer { if closeDirectory { close(directory) } }
        var st = stat()
        let target = Self.join(start.pathName, name)
        if fstatat(directory, name, &st, AT_SYMLINK_NOFOLLOW) == 0 {
            guard start.flags.contains(.overwrite) else { throw .exists(target) }
            guard st.st_mode & S_IFMT == S_IFREG else { throw .badName("\(target) is not a regular file") }
        } else if errno != ENOENT {
            throw .ioError(target, errno)
        }
        let temporary = Self.temporaryPrefix + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let fd = viridian_openat(directory, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw errno == ENOSPC || errno == EDQUOT ? .diskFull : .ioError("create in \(start.pathName)", errno) }
        closeDirectory = false
        transfer = Transfer(directory: directory, temporary: temporary, name: name, path: target, fd: fd, declared: start.fileSize,
                            written: 0, mode: mode_t(start.mode.map { $0 & 0o777 } ?? 0o644), overwrite: start.flags.contains(.overwrite))
        idleSince.withLock { $0 = now() }
        logger.notice("fcopy: receiving \(target) (\(start.fileSize) bytes)")
    }

    private func write(_ fragment: FCopyFragment, _ body: [UInt8]) throws(FCopyRefusal) {
        guard var t = transfer else { throw .noCopy }
        guard fragment.offset == t.written else { throw .outOfOrder(expected: t.written, got: fragment.offset) }
        let (end, overflow) = fragment.offset.addingReportingOverflow(UInt64(fragment.size))
        guard !overflow, end <= t.declared else { throw .pastEnd(end) }
        var done = 0
        while done < fragment.size {
            let n = body.withUnsafeBytes { raw in
                pwrite(t.fd, raw.baseAddress! + FCopyLayout.writeData + done, fragment.size - done, off_t(fragment.offset) + off_t(done))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw n < 0 && (errno == ENOSPC || errno == EDQUOT) ? .diskFull : .ioError("write \(t.path)", n < 0 ? errno : EIO) }
            done += n
        }
        t.written = end
        transfer = t
        idleSince.withLock { $0 = now() }
    }

    private func complete() throws(FCopyRefusal) {
        guard let t = transfer else { throw .noCopy }
        guard t.written == t.declared else { throw .incomplete(written: t.written, declared: t.declared) }
        guard fchmod(t.fd, t.mode) == 0, fsync(t.fd) == 0 else { throw errno == ENOSPC ? .diskFull : .ioError("flush \(t.path)", errno) }
        let moved = t.overwrite ? renameat(t.directory, t.temporary, t.directory, t.name) : viridian_rename_noreplace(t.directory, t.temporary, t.directory, t.name)
        guard moved == 0 else { throw errno == EEXIST ? .exists(t.path) : .ioError("rename to \(t.path)", errno) }
        fsync(t.directory)
        close(t.fd)
        close(t.directory)
        transfer = nil
        idleSince.withLock { $0 = nil }
        logger.notice("fcopy: \(t.path) written (\(t.declared) bytes, mode \(String(t.mode, radix: 8)))")
    }

    /// Drops the copy in progress and its temporary file.
    private func abort(_ why: String?) {
        guard let t = transfer else { return }
        transfer = nil
        idleSince.withLock { $0 = nil }
        if let why { logger.warning("fcopy: \(t.path) abandoned: \(why)") }
        close(t.fd)
        unlinkat(t.directory, t.temporary, 0)
        close(t.directory)
    }

    // MARK: Paths

    /// A single path component a file may have.
    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && name.utf8.count <= 255 && !name.hasPrefix(temporaryPrefix)
    }

    static func join(_ directory: String, _ name: String) -> String { directory.hasSuffix("/") ? directory + name : directory + "/" + name }

    /// Opens `path` under an allowed directory one component at a time, never following a
    /// symlink below the allowed directory; missing components are made (0755) when `create`.
    func openDirectory(_ path: String, create: Bool) throws(FCopyRefusal) -> Int32 {
        guard path.hasPrefix("/") else { throw .notAllowed(path) }
        let parts = path.split(separator: "/").map(String.init)
        guard !parts.contains(where: { $0 == "." || $0 == ".." }) else { throw .badName(path) }
        guard let root = allowed.first(where: { r in
            let rootParts = r.split(separator: "/").map(String.init)
            return parts.count >= rootParts.count && Array(parts[0..<rootParts.count]) == rootParts
        }) else { throw .notAllowed(path) }
        let depth = root.split(separator: "/").count
        var fd = viridian_open(root, O_RDONLY | O_DIRECTORY, 0)
        guard fd >= 0 else { throw .ioError(root, errno) }
        for part in parts[depth...] {
            guard part.utf8.count <= 255 else { close(fd); throw .badName(part) }
            var next = viridian_openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0)
            if next < 0 && errno == ENOENT && create {
                if mkdirat(fd, part, 0o755) != 0 && errno != EEXIST {
                    let e = errno
                    close(fd)
                    throw e == ENOSPC ? .diskFull : .ioError("mkdir \(part)", e)
                }
                next = viridian_openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0)
            }
            let e = errno
            close(fd)
            guard next >= 0 else {
                throw e == ELOOP || e == ENOTDIR ? .notAllowed("\(path) (a symlink or a file on the way)") : .ioError(path, e)
            }
            fd = next
        }
        return fd
    }

    /// Removes temporary files a killed agent left at the top of an allowed directory.
    static func sweep(_ root: String) {
        guard let dir = opendir(root) else { return }
        defer { closedir(dir) }
        let fd = dirfd(dir)
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(temporaryPrefix) { unlinkat(fd, name, 0) }
        }
    }
}
