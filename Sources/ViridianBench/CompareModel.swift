// viridian-bench compare: what is compared (sections, paths, workloads) and how a run is set up.

/// A part of the comparison: storage (fio) or network (iperf3 and ping).
public enum CompareSection: String, Codable, Sendable, CaseIterable {
    case storage, network
}

/// How the I/O gets to the device: with no VMM in between (direct), through VMBus (enlightened),
/// or through trapped register accesses to the legacy devices a generation 1 VM has — the PIIX4
/// IDE with bus-master DMA and the DEC 21140 with descriptor rings (emulated-dma) — or to the
/// oldest kind, ATA PIO on an ISA channel and the NE2000 (emulated-pio).
public enum ComparePath: String, Codable, Sendable, CaseIterable {
    case direct, enlightened
    case emulatedDMA = "emulated-dma"
    case emulatedPIO = "emulated-pio"

    /// Either emulated path (the agent runs with --no-enlightenments).
    public var isEmulated: Bool { self == .emulatedDMA || self == .emulatedPIO }
}

/// The unit of a workload's headline metric; values are kept in these base units.
public enum CompareUnit: String, Codable, Sendable {
    case bytesPerSecond = "B/s"
    case operationsPerSecond = "IOPS"
    case bitsPerSecond = "bit/s"
    case microseconds = "µs"
}

/// One workload: what runs, which number judges it and what one I/O is for the per-I/O columns.
public struct CompareWorkload: Codable, Sendable, Equatable {
    /// Short name, e.g. "seq-read".
    public var id: String
    public var section: CompareSection
    /// For tables and the chart, e.g. "seq read 1 MiB QD8".
    public var title: String
    /// The headline metric, e.g. "throughput".
    public var metric: String
    public var unit: CompareUnit
    /// False for latencies.
    public var higherIsBetter: Bool
    /// What CPU time and traps are divided by.
    public var ioDefinition: String

    /// Payload bytes counted as one network I/O: one 1500-byte frame's worth of TCP payload.
    public static let networkIOBytes = 1448.0

    /// fio sequential read, 1 MiB blocks, queue depth 8.
    public static let seqRead = CompareWorkload(
        id: "seq-read", section: .storage, title: "seq read 1 MiB QD8", metric: "throughput", unit: .bytesPerSecond,
        higherIsBetter: true, ioDefinition: "one fio I/O (1 MiB)")
    /// fio sequential write, 1 MiB blocks, queue depth 8.
    public static let seqWrite = CompareWorkload(
        id: "seq-write", section: .storage, title: "seq write 1 MiB QD8", metric: "throughput", unit: .bytesPerSecond,
        higherIsBetter: true, ioDefinition: "one fio I/O (1 MiB)")
    /// fio random read, 4 KiB blocks, queue depth 32.
    public static let randRead = CompareWorkload(
        id: "rand-read-4k", section: .storage, title: "rand read 4 KiB QD32", metric: "IOPS", unit: .operationsPerSecond,
        higherIsBetter: true, ioDefinition: "one fio I/O (4 KiB)")
    /// iperf3 TCP, the client in the guest namespace sending.
    public static let tcpGuestToHost = CompareWorkload(
        id: "tcp-guest-to-host", section: .network, title: "TCP guest→host", metric: "throughput", unit: .bitsPerSecond,
        higherIsBetter: true, ioDefinition: "1448 payload bytes (bytes received / 1448: one 1500-byte frame's worth)")
    /// iperf3 TCP with -R: the host namespace sending.
    public static let tcpHostToGuest = CompareWorkload(
        id: "tcp-host-to-guest", section: .network, title: "TCP host→guest", metric: "throughput", unit: .bitsPerSecond,
        higherIsBetter: true, ioDefinition: "1448 payload bytes (bytes received / 1448: one 1500-byte frame's worth)")
    /// ping -i 0.05 from the guest namespace to the host end.
    public static let ping = CompareWorkload(
        id: "ping", section: .network, title: "ping RTT", metric: "RTT p50", unit: .microseconds,
        higherIsBetter: false, ioDefinition: "one echo round trip (request and reply)")

    /// Every workload, storage first.
    public static let all = [seqRead, seqWrite, randRead, tcpGuestToHost, tcpHostToGuest, ping]

    /// The workloads of one section.
    public static func of(_ section: CompareSection) -> [CompareWorkload] { all.filter { $0.section == section } }
}

/// How long, how often and what to run.
public struct CompareSettings: Codable, Sendable {
    /// Seconds per run (fio --runtime, iperf3 -t, ping count × 0.05 s).
    public var seconds: Int
    /// Runs per workload and path; the median is reported.
    public var repetitions: Int
    /// Size of the disk image.
    public var imageMiB: Int
    public var sections: [CompareSection]

    /// The defaults are those of `viridian-bench compare`.
    public init(seconds: Int = 5, repetitions: Int = 3, imageMiB: Int = 256, sections: [CompareSection] = CompareSection.allCases) {
        self.seconds = seconds
        self.repetitions = repetitions
        self.imageMiB = imageMiB
        self.sections = sections
    }

    /// Runs in all: workloads × paths × repetitions.
    var totalRuns: Int {
        sections.reduce(0) { $0 + CompareWorkload.of($1).count } * ComparePath.allCases.count * repetitions
    }
}
