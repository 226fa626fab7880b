// viridian-bench compare: one comparison in progress — the rig, the runs so far, and how a run is
// measured (counters around it, progress, failures recorded rather than fatal).

import Foundation

/// The state of one `viridian-bench compare`: settings, rig, progress and the runs recorded so far.
final class CompareSession {
    let settings: CompareSettings
    let rig: NetworkBenchRig
    let progress: CompareProgress
    let binDirectory: String
    /// fio's path (storage section only).
    let fioPath: String
    private(set) var runs: [CompareRun] = []

    init(settings: CompareSettings, rig: NetworkBenchRig, progress: CompareProgress, binDirectory: String, fioPath: String) {
        self.settings = settings
        self.rig = rig
        self.progress = progress
        self.binDirectory = binDirectory
        self.fioPath = fioPath
    }

    /// Throws if SIGINT, SIGTERM or SIGHUP arrived; otherwise returns at once.
    func checkInterrupted() throws {
        try rig.pause(milliseconds: 0)
    }

    /// Runs `body` once as run `run` of `workload` on `path`, with `stack`'s counters read around it.
    /// A failure is recorded and shown, not thrown, unless the bench was interrupted.
    func measure(_ workload: CompareWorkload, _ path: ComparePath, run: Int, stack: CompareStack?,
                 _ body: () throws -> CompareMeasurement) throws {
        progress.begin("\(workload.section.rawValue) \(workload.id) \(path.rawValue) run \(run)/\(settings.repetitions)")
        var record = CompareRun(workload: workload, path: path, run: run)
        do {
            let before = try stack?.snapshot(before: true)
            let started = Date()
            let measurement = try body()
            let elapsed = Date().timeIntervalSince(started)
            let after = try stack?.snapshot(before: false)
            let counters = before.flatMap { b in after.map { CompareCounters(from: b, to: $0) } }
            record.record(measurement, elapsed: elapsed, counters: counters)
            var shown = CompareFormat.value(measurement.value, workload.unit)
            if let traps = record.trapsPerIO { shown += ", \(CompareFormat.digits(traps)) traps/I/O" }
            if let lost = measurement.lost, lost > 0 { shown += ", \(lost) lost" }
            progress.end(shown)
        } catch {
            try checkInterrupted()
            var message = "\(error)"
            if let stack, !stack.isRunning { message += stack.diagnostics }
            record.error = message
            progress.end("failed: \(message.prefix { $0 != "\n" })")
        }
        runs.append(record)
    }

    /// Records every run of `section` (on `path`, or on every path) not yet recorded as failed with `error`.
    func fail(_ section: CompareSection, path: ComparePath? = nil, _ error: any Error) throws {
        try checkInterrupted()
        let message = "\(error)"
        progress.note("\(section.rawValue)\(path.map { " \($0.rawValue)" } ?? ""): \(message)")
        for p in ComparePath.allCases where path == nil || p == path {
            for run in 1...settings.repetitions {
                for workload in CompareWorkload.of(section)
                where !runs.contains(where: { $0.workload == workload.id && $0.path == p && $0.run == run }) {
                    progress.begin("\(section.rawValue) \(workload.id) \(p.rawValue) run \(run)/\(settings.repetitions)")
                    var record = CompareRun(workload: workload, path: p, run: run)
                    record.error = message
                    runs.append(record)
                    progress.end("skipped")
                }
            }
        }
    }
}
