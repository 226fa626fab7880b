// Log lines for systemd's journal: the syslog priority in front, so `journalctl -p warning` works.

import Glibc
import Logging

/// Logs to standard error. When standard error is the journal (systemd sets JOURNAL_STREAM to its
/// device and inode), each line starts with its syslog priority ("<4>" for a warning) and carries
/// no timestamp, which the journal adds; elsewhere it is swift-log's StreamLogHandler.
public struct SystemdLogHandler: LogHandler {
    /// The handler for `label`: journal lines under systemd, StreamLogHandler's otherwise.
    public static func standardError(label: String) -> any LogHandler {
        stderrIsJournal ? SystemdLogHandler(label: label) : StreamLogHandler.standardError(label: label)
    }

    /// Whether file descriptor 2 is the stream JOURNAL_STREAM names ("DEVICE:INODE", decimal).
    public static var stderrIsJournal: Bool {
        guard let raw = getenv("JOURNAL_STREAM") else { return false }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }

    /// The syslog priority journald reads from a line's "<N>" prefix.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    private let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let (level, message) = (event.level, event.message)
        let suffix = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        // One write per record; every line of a multi-line message keeps the priority.
        let prefix = "<\(Self.priority(level))>"
        var text = ""
        for part in "\(label): \(message)\(event.error.map { " (\($0))" } ?? "")\(suffix)".split(separator: "\n", omittingEmptySubsequences: false) {
            text += prefix + part + "\n"
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }
}
