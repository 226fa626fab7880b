// viridian-bench compare: the enlightened-vs-emulated comparison, start to end.

import Foundation
import Glibc

/// Runs every workload on every path (direct, enlightened, emulated) --repeat times and returns the
/// report. Needs root for the network section (namespaces, TAPs, veth). Processes, namespaces and
/// temporary files are removed at the end, on errors and on SIGINT, SIGTERM or SIGHUP.
public enum CompareBenchmark {
    /// Measures everything `settings` asks for with viridian-host and viridian-agent from `binDirectory`;
    /// progress goes to standard error. Failed runs are in the report, not thrown; an interruption is thrown.
    public static func run(_ settings: CompareSettings, binDirectory: String) throws -> CompareReport {
        let storage = settings.sections.contains(.storage), network = settings.sections.contains(.network)
        if network && getuid() != 0 {
            throw BenchError.setup("viridian-bench compare needs root for its network part (namespaces, TAP devices, a veth pair); "
                                   + "run it with sudo, or use --only storage")
        }
        for name in ["viridian-host", "viridian-agent"] where !FileManager.default.isExecutableFile(atPath: "\(binDirectory)/\(name)") {
            throw BenchError.setup("\(binDirectory)/\(name) is missing (swift build -c release)")
        }
        let tools = try NetworkTools(needed: network ? ["ip", "ss", "ping", "iperf3"] : [])
        let fio = storage ? try NetworkTools.find("fio", package: "fio") : "fio"
        let progress = CompareProgress(total: settings.totalRuns)
        let rig = try NetworkBenchRig(tools: tools, interruptions: NetworkBenchmark.interruptions, label: "compare")
        let session = CompareSession(settings: settings, rig: rig, progress: progress, binDirectory: binDirectory, fioPath: fio)
        defer {
            progress.finish()
            progress.note("cleaning up \(rig.directory)" + (network ? " and namespaces \(rig.hostNS), \(rig.guestNS)" : ""))
            rig.tearDown()
        }
        progress.note("\(settings.totalRuns) runs of \(settings.seconds) s; scratch directory \(rig.directory)")
        if storage {
            do { try session.runStorage() } catch { try session.fail(.storage, error) }
        }
        if network {
            do { try session.runNetwork() } catch { try session.fail(.network, error) }
        }
        return CompareReport(settings: settings, runs: session.runs)
    }
}
