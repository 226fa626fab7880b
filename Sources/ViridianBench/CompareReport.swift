// viridian-bench compare: the report — every run, per workload and path the median and spread, and the ratios.

import Foundation
import Glibc

/// One workload on one path over all its runs: medians and spread (failed runs left out).
public struct CompareSummary: Codable, Sendable {
    public var workload: String
    public var section: CompareSection
    public var path: ComparePath
    public var runs: Int
    public var failedRuns: Int
    /// The headline metric in the workload's unit.
    public var median: Double?
    public var min: Double?
    public var max: Double?
    /// Medians over the runs of each run's p50 and p99.
    public var latencyP50Us: Double?
    public var latencyP99Us: Double?
    /// Medians over the runs; nil on the direct path (no viridian-host).
    public var cpuMicrosecondsPerIO: Double?
    public var trapsPerIO: Double?
    public var interruptsPerIO: Double?

    init(workload: CompareWorkload, path: ComparePath, runs all: [CompareRun]) {
        self.workload = workload.id
        section = workload.section
        self.path = path
        let mine = all.filter { $0.workload == workload.id && $0.path == path }
        let good = mine.filter { $0.value != nil }
        runs = good.count
        failedRuns = mine.count - good.count
        let values = good.compactMap(\.value)
        median = ViridianBench.median(values)
        min = values.min()
        max = values.max()
        latencyP50Us = ViridianBench.median(good.compactMap(\.latencyP50Us))
        latencyP99Us = ViridianBench.median(good.compactMap(\.latencyP99Us))
        cpuMicrosecondsPerIO = ViridianBench.median(good.compactMap(\.cpuMicrosecondsPerIO))
        trapsPerIO = ViridianBench.median(good.compactMap(\.trapsPerIO))
        interruptsPerIO = ViridianBench.median(good.compactMap(\.interruptsPerIO))
    }
}

/// One workload: how the paths compare, from the medians.
public struct CompareRatio: Codable, Sendable {
    public var workload: String
    /// False for latencies, where a ratio below 1 means the first path is faster.
    public var higherIsBetter: Bool
    public var enlightenedOverEmulatedDMA: Double?
    public var enlightenedOverEmulatedPIO: Double?
    public var emulatedDMAOverEmulatedPIO: Double?
    public var enlightenedOverDirect: Double?
    /// Traps per I/O of the emulated DMA path for every one of the enlightened path, and of PIO for every one of DMA.
    public var emulatedDMAOverEnlightenedTrapsPerIO: Double?
    public var emulatedPIOOverEmulatedDMATrapsPerIO: Double?
    /// How many times better one path does than another, whichever way the metric points.
    public var enlightenedAdvantageOverDMA: Double?
    public var enlightenedAdvantageOverPIO: Double?
    public var dmaAdvantageOverPIO: Double?

    init(workload: CompareWorkload, summaries: [CompareSummary]) {
        func summary(_ path: ComparePath) -> CompareSummary? {
            summaries.first { $0.workload == workload.id && $0.path == path }
        }
        func quotient(_ a: Double?, _ b: Double?) -> Double? {
            guard let a, let b, b > 0 else { return nil }
            return a / b
        }
        func advantage(_ a: Double?, over b: Double?) -> Double? { workload.higherIsBetter ? quotient(a, b) : quotient(b, a) }
        self.workload = workload.id
        higherIsBetter = workload.higherIsBetter
        let enlightened = summary(.enlightened)?.median, dma = summary(.emulatedDMA)?.median, pio = summary(.emulatedPIO)?.median
        enlightenedOverEmulatedDMA = quotient(enlightened, dma)
        enlightenedOverEmulatedPIO = quotient(enlightened, pio)
        emulatedDMAOverEmulatedPIO = quotient(dma, pio)
        enlightenedOverDirect = quotient(enlightened, summary(.direct)?.median)
        emulatedDMAOverEnlightenedTrapsPerIO = quotient(summary(.emulatedDMA)?.trapsPerIO, summary(.enlightened)?.trapsPerIO)
        emulatedPIOOverEmulatedDMATrapsPerIO = quotient(summary(.emulatedPIO)?.trapsPerIO, summary(.emulatedDMA)?.trapsPerIO)
        enlightenedAdvantageOverDMA = advantage(enlightened, over: dma)
        enlightenedAdvantageOverPIO = advantage(enlightened, over: pio)
        dmaAdvantageOverPIO = advantage(dma, over: pio)
    }
}

/// Everything `viridian-bench compare` measured: settings, machine, every run, the summary and the ratios.
public struct CompareReport: Codable, Sendable {
    /// ISO 8601, when the report was made.
    public var date: String
    public var kernel: String
    public var cpus: Int
    public var settings: CompareSettings
    /// How to read the numbers (what an I/O is, what a trap is, what the baselines are).
    public var notes: [String]
    public var workloads: [CompareWorkload]
    public var runs: [CompareRun]
    public var summary: [CompareSummary]
    public var ratios: [CompareRatio]

    /// Summarises `runs`.
    public init(settings: CompareSettings, runs: [CompareRun]) {
        date = ISO8601DateFormatter().string(from: Date())
        var name = utsname()
        uname(&name)
        kernel = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        cpus = ProcessInfo.processInfo.activeProcessorCount
        self.settings = settings
        workloads = CompareWorkload.all.filter { settings.sections.contains($0.section) }
        self.runs = runs
        let summary = workloads.flatMap { w in ComparePath.allCases.map { CompareSummary(workload: w, path: $0, runs: runs) } }
        self.summary = summary
        ratios = workloads.map { CompareRatio(workload: $0, summaries: summary) }
        notes = Self.notes
    }

    static let notes = [
        "I/O for the per-I/O columns: storage = one fio I/O (1 MiB or 4 KiB); TCP = 1448 payload bytes received "
            + "(one 1500-byte frame's worth: bytes / 1448); ping = one echo round trip.",
        "Traps = the partition's hypercalls + doorbell signals (HvSignalEvent exits) + port I/O exits over the run, "
            + "from viridian-host status --json. IRQs = SynIC interrupts of all VPs + rising edges of the emulated devices' IRQ lines.",
        "CPU = viridian-host's user + system time over the run (/proc/PID/stat, counted in clock ticks of "
            + "1/\(Int(ProcessCPU.ticksPerSecond)) s, so a run that cost less shows 0); the agent's is in the raw runs.",
        "Direct: storage = fio (io_uring) on the image file through the page cache, the caching the host uses; "
            + "network = a veth pair between the host and guest namespaces.",
        "Emulated = the guest agent with --no-enlightenments, every register access one trap. emulated-dma = what a Hyper-V "
            + "generation 1 VM emulates: the PIIX4 IDE (00:07.1) with bus-master DMA as ata_piix drives it, and the DEC 21140A "
            + "(00:0a.0) with descriptor rings as tulip drives it. emulated-pio = ATA PIO on an ISA channel and the NE2000. "
            + "Both NICs: MTU 1500, no offloads.",
        "fio runs are time-based but wait for the requests in flight at the end, so slow emulated runs last longer than --seconds.",
    ]

    /// The workload of a summary or ratio.
    func workload(_ id: String) -> CompareWorkload? { workloads.first { $0.id == id } }

    /// The summary of a workload on a path.
    func summary(_ workload: String, _ path: ComparePath) -> CompareSummary? {
        summary.first { $0.workload == workload && $0.path == path }
    }

    /// The runs that failed.
    public var failures: [CompareRun] { runs.filter { $0.error != nil } }

    /// Pretty-printed JSON with sorted keys.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}
