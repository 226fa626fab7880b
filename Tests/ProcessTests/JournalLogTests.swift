// Under systemd, the binaries' log lines carry their syslog priority for the journal.

import Foundation
import Testing

@Suite("Logging to the journal")
struct JournalLogTests {
    @Test("With stderr the stream JOURNAL_STREAM names, each log line starts with its priority; elsewhere lines are swift-log's")
    func priorities() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("viridian-journal-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let agent = productsDirectory.appendingPathComponent("viridian-agent").path
        // The agent waits for a host that is not there: a notice per attempt, until timeout stops it.
        // (`; true`: sh() sends the last command's stderr to its output.)
        _ = FileManager.default.createFile(atPath: "\(dir)/agent.toml", contents: Data())
        let attempt = "\(agent) run --reconnect --link unix:\(dir)/absent.sock --config \(dir)/agent.toml"
        let (_, _) = try sh("""
            exec 2>\(dir)/journal; JOURNAL_STREAM=$(stat -c '%d:%i' \(dir)/journal) timeout -s INT 2 \(attempt); true
            """, seconds: 30)
        let journal = try String(contentsOfFile: "\(dir)/journal", encoding: .utf8)
        let lines = journal.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { $0.hasPrefix("<") && $0.dropFirst(2).hasPrefix(">") }, "\(journal)")
        #expect(lines.contains { $0.hasPrefix("<5>viridian.agent: ") && $0.contains("retrying") }, "a notice is priority 5: \(journal)")
        // Another stream than JOURNAL_STREAM's (stderr redirected elsewhere): no priorities.
        let (_, _) = try sh("""
            exec 2>\(dir)/plain; JOURNAL_STREAM=1:1 timeout -s INT 2 \(attempt); true
            """, seconds: 30)
        let plain = try String(contentsOfFile: "\(dir)/plain", encoding: .utf8)
        #expect(plain.contains("notice viridian.agent:") && !plain.contains("<5>"), "\(plain)")
    }
}
