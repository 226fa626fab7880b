// viridian-bench compare: one run's raw numbers, as measured and as written to the JSON file.

/// What a workload tool reported for one run.
struct CompareMeasurement: Sendable {
    /// The headline metric in the workload's unit.
    var value: Double
    /// I/Os the per-I/O columns divide by (see `CompareWorkload.ioDefinition`).
    var ios: Double
    var bytes: Double?
    var bytesPerSecond: Double?
    var iops: Double?
    var bitsPerSecond: Double?
    var latencyP50Us: Double?
    var latencyP99Us: Double?
    /// Pings without an answer.
    var lost: Int?
}

/// One workload on one path, once: every number measured, or why it failed.
public struct CompareRun: Codable, Sendable {
    public var workload: String
    public var section: CompareSection
    public var path: ComparePath
    /// 1 … repetitions.
    public var run: Int
    /// The headline metric in the workload's unit; nil when the run failed.
    public var value: Double?
    public var error: String?
    /// Wall-clock seconds of the tool (fio waits for requests in flight after --runtime).
    public var elapsedSeconds: Double?
    public var ios: Double?
    public var bytes: Double?
    public var bytesPerSecond: Double?
    public var iops: Double?
    public var bitsPerSecond: Double?
    /// fio completion latency, or ping round-trip time.
    public var latencyP50Us: Double?
    public var latencyP99Us: Double?
    public var lost: Int?
    /// viridian-host's user + system time over the run.
    public var hostCPUSeconds: Double?
    /// viridian-agent's user + system time over the run (the guest side; not in the table).
    public var agentCPUSeconds: Double?
    public var hypercalls: UInt64?
    /// Doorbell signals (HvSignalEvent exits).
    public var signals: UInt64?
    public var portIOExits: UInt64?
    /// hypercalls + signals + portIOExits.
    public var traps: UInt64?
    /// Interrupts the host raised: SynIC interrupts of every VP plus emulated devices' IRQ edges.
    public var interrupts: UInt64?
    public var cpuMicrosecondsPerIO: Double?
    public var trapsPerIO: Double?
    public var interruptsPerIO: Double?

    init(workload: CompareWorkload, path: ComparePath, run: Int) {
        self.workload = workload.id
        section = workload.section
        self.path = path
        self.run = run
    }

    /// Fills in a successful run.
    mutating func record(_ m: CompareMeasurement, elapsed: Double, counters: CompareCounters?) {
        value = m.value
        elapsedSeconds = elapsed
        ios = m.ios
        bytes = m.bytes
        bytesPerSecond = m.bytesPerSecond
        iops = m.iops
        bitsPerSecond = m.bitsPerSecond
        latencyP50Us = m.latencyP50Us
        latencyP99Us = m.latencyP99Us
        lost = m.lost
        guard let counters else { return }
        hostCPUSeconds = counters.hostCPUSeconds
        agentCPUSeconds = counters.agentCPUSeconds
        hypercalls = counters.hypercalls
        signals = counters.signals
        portIOExits = counters.portIOExits
        traps = counters.traps
        interrupts = counters.interrupts
        if m.ios > 0 {
            cpuMicrosecondsPerIO = counters.hostCPUSeconds * 1e6 / m.ios
            trapsPerIO = Double(counters.traps) / m.ios
            interruptsPerIO = Double(counters.interrupts) / m.ios
        }
    }
}
