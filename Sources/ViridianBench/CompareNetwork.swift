// viridian-bench compare, network: iperf3 TCP both ways and ping from the guest namespace to the host
// namespace over a veth pair (direct), the synthetic NIC (enlightened), the DEC 21140 (emulated-dma)
// and the NE2000 (emulated-pio).

import Foundation

extension CompareSession {
    /// The emulated paths: the card's host TAP and the agent's guest TAP, each on a subnet of its own.
    static let emulatedPIORoute = NetworkBenchmark.Path(name: "emulated-pio", hostDevice: "vh1", guestDevice: "vn0", subnet: "10.81.0")
    static let emulatedDMARoute = NetworkBenchmark.Path(name: "emulated-dma", hostDevice: "vh2", guestDevice: "vd0", subnet: "10.82.0")

    /// Namespaces, the veth pair and iperf3's server first; then per path: its stack, every workload
    /// --repeat times, the stack stopped.
    func runNetwork() throws {
        progress.note("namespaces \(rig.hostNS) (host) and \(rig.guestNS) (guest), veth pair, iperf3 server")
        try rig.createNamespaces()
        try rig.startVeth(NetworkBenchmark.veth, mtu: 1500)
        try rig.startIperfServer()
        for path in ComparePath.allCases {
            var stack: CompareStack?
            let route: NetworkBenchmark.Path
            do {
                switch path {
                case .direct:
                    route = NetworkBenchmark.veth
                case .enlightened, .emulatedDMA, .emulatedPIO:
                    route = path == .emulatedPIO ? Self.emulatedPIORoute : path == .emulatedDMA ? Self.emulatedDMARoute : NetworkBenchmark.viridian
                    progress.note("starting viridian-host and viridian-agent\(path.isEmulated ? " --no-enlightenments" : "") "
                                  + "for the \(path.rawValue) NIC (\(route.hostDevice) ↔ \(route.guestDevice), \(route.subnet).0/24)")
                    stack = try CompareStack.start(rig: rig, binDirectory: binDirectory, path: path, device: .nic(route))
                }
                do { try rig.waitForConnectivity(route) } catch {
                    throw BenchError.setup("\(error)" + (stack?.diagnostics ?? ""))
                }
            } catch {
                stack?.stop()
                try fail(.network, path: path, error)
                continue
            }
            defer { stack?.stop() }
            for run in 1...settings.repetitions {
                for workload in CompareWorkload.of(.network) {
                    try measure(workload, path, run: run, stack: stack) {
                        workload == .ping ? try ping(route) : try tcp(route, workload: workload)
                    }
                }
            }
        }
    }

    /// One iperf3 TCP run (the client in the guest namespace sends, or receives with -R).
    func tcp(_ route: NetworkBenchmark.Path, workload: CompareWorkload) throws -> CompareMeasurement {
        let direction = workload == .tcpHostToGuest ? "host-to-guest" : "guest-to-host"
        let transfer = try rig.iperfTransfer(route, direction: direction, seconds: settings.seconds)
        let bitsPerSecond = transfer.gbps * 1e9
        return CompareMeasurement(value: bitsPerSecond, ios: transfer.bytes / CompareWorkload.networkIOBytes, bytes: transfer.bytes,
                                  bytesPerSecond: bitsPerSecond / 8, bitsPerSecond: bitsPerSecond)
    }

    /// `ping -c N -i 0.05` from the guest namespace to the host end, N = 20 per second of --seconds.
    func ping(_ route: NetworkBenchmark.Path) throws -> CompareMeasurement {
        let count = max(10, settings.seconds * 20)
        let deadline = settings.seconds * 2 + 5
        let (_, output, errors) = try rig.execute(
            "ping", rig.tools.ip,
            ["netns", "exec", rig.guestNS, rig.tools.ping, "-n", "-c", "\(count)", "-i", "0.05", "-w", "\(deadline)", route.hostAddress],
            timeout: Double(deadline) + 10)
        let rtts = PingOutput(output).roundTripsMicroseconds
        guard !rtts.isEmpty else {
            throw BenchError.setup("ping \(route.hostAddress) from \(rig.guestNS): no answer: \(errors.isEmpty ? output.suffix(500) : errors.suffix(500))")
        }
        return CompareMeasurement(value: percentile(rtts, 50) ?? 0, ios: Double(rtts.count), latencyP50Us: percentile(rtts, 50),
                                  latencyP99Us: percentile(rtts, 99), lost: max(0, count - rtts.count))
    }
}
