// viridian-bench compare: the progress display on standard error.

import Foundation
import Glibc

/// "[k/N] storage seq-read emulated run 2/3 … 212 KB/s", one line per run. On a terminal the line
/// of the run in progress shows its elapsed seconds until the result replaces them.
final class CompareProgress: @unchecked Sendable {
    private let total: Int
    private let live = isatty(STDERR_FILENO) != 0
    private let lock = NSLock()
    private var done = 0
    private var current: (label: String, started: Date)?
    private var ticker: (any DispatchSourceTimer)?

    init(total: Int) { self.total = total }

    /// A line about setup or teardown.
    func note(_ message: String) {
        lock.withLock {
            clearLine()
            write("… \(message)\n")
            redraw()
        }
    }

    /// A run starts.
    func begin(_ label: String) {
        lock.withLock {
            current = ("[\(done + 1)/\(total)] \(label)", Date())
            redraw()
        }
        guard live, ticker == nil else { return }
        let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        timer.schedule(deadline: .now() + 1, repeating: 1)
        timer.setEventHandler { [weak self] in self?.tick() }
        timer.resume()
        ticker = timer
    }

    /// The run ends with `result` (a number, or why it failed).
    func end(_ result: String) {
        lock.withLock {
            guard let current else { return }
            clearLine()
            write("\(current.label) … \(result)\n")
            self.current = nil
            done += 1
        }
    }

    /// Stops the ticker and leaves the cursor on a fresh line.
    func finish() {
        ticker?.cancel()
        ticker = nil
        lock.withLock {
            if current != nil {
                clearLine()
                current = nil
            }
        }
    }

    private func tick() {
        lock.withLock { redraw() }
    }

    /// The line of the run in progress, without a newline (terminals only). Called with the lock held.
    private func redraw() {
        guard live, let current else { return }
        clearLine()
        write("\(current.label) … \(Int(Date().timeIntervalSince(current.started))) s")
    }

    private func clearLine() {
        if live { write("\r\u{1B}[K") }
    }

    private func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}
