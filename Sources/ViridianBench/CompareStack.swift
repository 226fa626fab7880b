// viridian-bench compare: one viridian-host serving one partition and the viridian-agent that joins it,
// set up for one device (a disk or a NIC) on one path (enlightened or emulated).

import Foundation

/// A viridian-host with one partition and its viridian-agent, in a directory of their own under the rig's.
/// Started by `start`, ended by `stop()` (or the rig's teardown, whichever comes first).
final class CompareStack {
    /// The device the partition has.
    enum Device {
        /// The image as a SCSI LUN (enlightened) or the IDE master (emulated: behind a PIIX4, or on an
        /// ISA channel), exported over NBD by the agent.
        case disk(image: String)
        /// A synthetic NIC (enlightened), the DEC 21140 (emulated-dma) or the NE2000 (emulated-pio)
        /// between TAPs in the rig's namespaces.
        case nic(NetworkBenchmark.Path)
    }

    let rig: NetworkBenchRig
    let path: ComparePath
    let directory: String
    let hostBinary: String
    let host: BenchChild
    let agent: BenchChild

    private init(rig: NetworkBenchRig, path: ComparePath, directory: String, hostBinary: String, host: BenchChild, agent: BenchChild) {
        self.rig = rig
        self.path = path
        self.directory = directory
        self.hostBinary = hostBinary
        self.host = host
        self.agent = agent
    }

    /// Writes both configurations, starts host and agent and waits until the device is there:
    /// the NBD export for a disk, both TAPs (configured and up) for a NIC.
    static func start(rig: NetworkBenchRig, binDirectory: String, path: ComparePath, device: Device) throws -> CompareStack {
        precondition(path != .direct, "the direct path has no stack")
        let directory = "\(rig.directory)/\(path.rawValue)-\(device.label)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try hostConfiguration(directory: directory, path: path, device: device, rig: rig)
            .write(toFile: "\(directory)/host.toml", atomically: true, encoding: .utf8)
        try agentConfiguration(directory: directory, device: device, rig: rig)
            .write(toFile: "\(directory)/agent.toml", atomically: true, encoding: .utf8)
        let hostBinary = "\(binDirectory)/viridian-host"
        let host = try rig.spawn("viridian-host", hostBinary, ["run", "--config", "\(directory)/host.toml", "--log-level", "warning"])
        var agent: BenchChild?
        do {
            try rig.waitUntil(seconds: 30, host, failure: { "viridian-host did not open \(directory)/bench.sock" }) {
                FileManager.default.fileExists(atPath: "\(directory)/bench.sock")
            }
            let agentArguments = ["run", "--config", "\(directory)/agent.toml"] + (path.isEmulated ? ["--no-enlightenments"] : [])
            let started = try rig.spawn("viridian-agent", "\(binDirectory)/viridian-agent", agentArguments)
            agent = started
            let stack = CompareStack(rig: rig, path: path, directory: directory, hostBinary: hostBinary, host: host, agent: started)
            try stack.waitForDevice(device)
            return stack
        } catch {
            agent?.stop()
            host.stop()
            let message = "\(path.rawValue) \(device.label): \(error)"
            throw BenchError.setup(message + Self.messages(of: [host, agent].compactMap(\.self), besides: message))
        }
    }

    /// Stops the agent, then the host.
    func stop() {
        agent.stop()
        host.stop()
    }

    /// The ends of both processes' standard error, as lines to append to a message.
    var diagnostics: String { Self.messages(of: [host, agent], besides: "") }

    /// "\nLABEL: TAIL" for each child whose standard error has a tail that `message` does not already hold.
    static func messages(of children: [BenchChild], besides message: String) -> String {
        children.map { child in
            let tail = child.errorTail.trimmingCharacters(in: .whitespacesAndNewlines)
            return tail.isEmpty || message.contains(tail) ? "" : "\n\(child.label): \(tail)"
        }.joined()
    }

    /// Whether both processes still run.
    var isRunning: Bool { host.isRunning && agent.isRunning }

    /// The NBD socket the agent exports the disk at: scsi<relid>-lun0.sock (enlightened) or ide0-master.sock (emulated).
    func exportSocket() -> String? {
        let exports = "\(directory)/exports"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: exports)) ?? []
        let name = path.isEmulated
            ? names.first { $0 == "ide0-master.sock" }
            : names.first { $0.hasPrefix("scsi") && $0.hasSuffix("-lun0.sock") }
        return name.map { "\(exports)/\($0)" }
    }

    private func waitForDevice(_ device: Device) throws {
        switch device {
        case .disk:
            try rig.waitUntil(seconds: 60, agent, failure: { "the agent exported no disk in \(directory)/exports within 60 s" }) {
                exportSocket() != nil
            }
        case .nic(let route):
            try rig.waitForDevice(rig.guestNS, route.guestDevice, seconds: 30, agent)
            try rig.waitForDevice(rig.hostNS, route.hostDevice, seconds: 10, host)
            // The guest TAP's MTU is the agent's business (the host's MTU, or the NE2000's 1500).
            try rig.configure(route, mtu: 1500, guestMTU: false)
        }
    }

    /// Counters and CPU times now. Before a run the status goes first and after it last, so that the
    /// status requests themselves stay outside the CPU time measured.
    func snapshot(before: Bool) throws -> CompareSnapshot {
        if before {
            let status = try partitionStatus()
            let (hostCPU, agentCPU) = try cpuSeconds()
            return CompareSnapshot(hostCPUSeconds: hostCPU, agentCPUSeconds: agentCPU, hypercalls: status.hypercalls,
                                   signals: status.signals, portIOExits: status.portIOExits ?? 0, interrupts: status.interrupts)
        }
        let (hostCPU, agentCPU) = try cpuSeconds()
        let status = try partitionStatus()
        return CompareSnapshot(hostCPUSeconds: hostCPU, agentCPUSeconds: agentCPU, hypercalls: status.hypercalls,
                               signals: status.signals, portIOExits: status.portIOExits ?? 0, interrupts: status.interrupts)
    }

    private func cpuSeconds() throws -> (host: Double, agent: Double) {
        guard let hostCPU = ProcessCPU.seconds(host.process.processIdentifier),
            let agentCPU = ProcessCPU.seconds(agent.process.processIdentifier)
        else { throw BenchError.setup("viridian-host or viridian-agent exited" + diagnostics) }
        return (hostCPU, agentCPU)
    }

    private func partitionStatus() throws -> CompareHostStatus.Partition {
        let (status, output, errors) = try rig.execute("status", hostBinary, ["status", "--json", "--runtime-dir", directory], timeout: 10)
        guard status == 0 else { throw BenchError.setup("viridian-host status --json failed (\(status)): \(errors)") }
        guard let partition = try CompareHostStatus.parse(output).partitions.first(where: { $0.name == "bench" }) else {
            throw BenchError.setup("viridian-host status --json lists no partition \"bench\"")
        }
        return partition
    }

    // MARK: Configuration files

    static func hostConfiguration(directory: String, path: ComparePath, device: Device, rig: NetworkBenchRig) -> String {
        var text = NetworkBenchRig.benchHostConfiguration(directory: directory)
        switch (device, path) {
        case (.disk(let image), .emulatedDMA), (.disk(let image), .emulatedPIO):
            text += "disk = []\nide_controller = \"\(path == .emulatedDMA ? "piix4" : "isa")\"\n[[partition.ide]]\npath = \"\(image)\"\n"
        case (.disk(let image), _):
            text += "[[partition.disk]]\npath = \"\(image)\"\n"
        case (.nic(let route), .emulatedDMA), (.nic(let route), .emulatedPIO):
            text += "disk = []\n[partition.\(path == .emulatedDMA ? "dec21140" : "ne2000")]\ntap = \"\(route.hostDevice)\"\nnetns = \"\(rig.hostNS)\"\n"
        case (.nic(let route), _):
            text += "disk = []\n[[partition.nic]]\ntap = \"\(route.hostDevice)\"\nnetns = \"\(rig.hostNS)\"\nmtu = 1500\n"
        }
        return text
    }

    static func agentConfiguration(directory: String, device: Device, rig: NetworkBenchRig) -> String {
        var text = NetworkBenchRig.benchAgentConfiguration(directory: directory)
        switch device {
        case .disk:
            text += "storage = true\nnetwork = false\n"
        case .nic(let route):
            text += "storage = false\nnetwork = true\nnic_tap = \"\(route.guestDevice.dropLast())%d\"\nnic_netns = \"\(rig.guestNS)\"\n"
        }
        return text
    }
}

extension CompareStack.Device {
    /// "disk" or "nic", for directory names and messages.
    var label: String {
        switch self {
        case .disk: "disk"
        case .nic: "nic"
        }
    }
}
