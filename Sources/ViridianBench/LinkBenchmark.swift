// The process boundary measured: hypercall round trips through viridian-host, and a ring shared
// between two processes, each beside a baseline from the same run.

import CSystem
import Foundation
import Glibc
import PartitionLink
import VMBusRing
import VMBusWire

/// Latency figures of one measurement, in nanoseconds.
public struct LatencyResult: Codable, Sendable {
    public var rounds: Int
    public var medianNs: Double
    public var p99Ns: Double
    public var meanNs: Double

    init(samples: [UInt64]) {
        let sorted = samples.sorted()
        rounds = sorted.count
        medianNs = Double(sorted[sorted.count / 2])
        p99Ns = Double(sorted[min(sorted.count - 1, sorted.count * 99 / 100)])
        meanNs = Double(sorted.reduce(0, +)) / Double(sorted.count)
    }
}

/// Benchmarks across processes. The peer side is this same executable started as
/// `viridian-bench peer --socket PATH`; it receives its descriptors over the socket.
public enum LinkBenchmark {
    enum Mode: UInt32 {
        case pingPong = 1
        case ringConsumer = 2
    }

    /// Peer entry point: connect, take one job, run it, exit.
    public static func peer(socketPath: String) throws {
        let socket = try LinkSocket.connect(to: socketPath)
        var job = [UInt8](repeating: 0, count: 64)
        var fds = [Int32](repeating: -1, count: 8)
        var count: Int32 = 0
        let n = job.withUnsafeMutableBytes { b in fds.withUnsafeMutableBufferPointer { f in
            viridian_recv_with_fds(socket.fd, b.baseAddress, b.count, f.baseAddress, 8, &count)
        } }
        guard n == 48, let mode = Mode(rawValue: job.le(at: 0)) else { throw LinkError.malformed("bench job") }
        let workload = RingWorkload(payloadBytes: Int(job.le(UInt32.self, at: 4)), packets: Int(job.le(UInt64.self, at: 8)),
                                    ringBytes: Int(job.le(UInt64.self, at: 16)), pollNanoseconds: job.le(at: 24))
        let rounds = Int(job.le(UInt64.self, at: 32))
        switch mode {
        case .pingPong:
            guard count == 2 else { throw LinkError.malformed("ping-pong needs 2 descriptors") }
            let ping = EventFD(adopting: fds[0]), pong = EventFD(adopting: fds[1])
            for _ in 0..<rounds {
                ping.wait()
                pong.ring()
            }
        case .ringConsumer:
            guard count == 4 else { throw LinkError.malformed("ring consumer needs 4 descriptors") }
            let size = 4096 + 4096 + workload.ringBytes
            guard let base = viridian_mmap_shared(size, fds[0], 0) else { throw LinkError.system(call: "mmap", errno: errno) }
            close(fds[0])
            defer { munmap(base, size) }
            let dataArrived = EventFD(adopting: fds[1]), roomFreed = EventFD(adopting: fds[2]), done = EventFD(adopting: fds[3])
            let ring = try RingBuffer(control: base + 4096, data: base + 8192, dataSize: workload.ringBytes)
            let signals = try workload.consume(ring: ring, dataArrived: dataArrived, roomFreed: roomFreed)
            base.storeBytes(of: UInt64(signals), as: UInt64.self)
            done.ring()
        }
    }

    /// Starts the peer and hands it a job with descriptors.
    static func startPeer(mode: Mode, workload: RingWorkload, rounds: Int, fds: [Int32]) throws -> Process {
        let path = "\(NSTemporaryDirectory())/viridian-bench-\(getpid()).sock"
        let listener = try LinkListener(path: path)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try selfExecutable())
        process.arguments = ["peer", "--socket", "unix:" + path]
        try process.run()
        let socket = try listener.accept()
        var job = [UInt8](repeating: 0, count: 48)
        job.putLE(mode.rawValue, at: 0)
        job.putLE(UInt32(workload.payloadBytes), at: 4)
        job.putLE(UInt64(workload.packets), at: 8)
        job.putLE(UInt64(workload.ringBytes), at: 16)
        job.putLE(workload.pollNanoseconds, at: 24)
        job.putLE(UInt64(rounds), at: 32)
        let sent = job.withUnsafeBytes { b in fds.withUnsafeBufferPointer { f in
            viridian_send_with_fds(socket.fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
        } }
        guard sent == job.count else { throw LinkError.system(call: "sendmsg", errno: errno) }
        return process
    }

    static func selfExecutable() throws -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw LinkError.system(call: "readlink(/proc/self/exe)", errno: errno) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Baseline: an eventfd ping-pong with another process (one write + one wakeup each way).
    public static func eventfdPingPong(rounds: Int) throws -> LatencyResult {
        let ping = try EventFD(), pong = try EventFD()
        let peer = try startPeer(mode: .pingPong, workload: RingWorkload(payloadBytes: 0, packets: 0), rounds: rounds,
                                 fds: [ping.fd, pong.fd])
        var samples = [UInt64](repeating: 0, count: rounds)
        for i in 0..<rounds {
            let t0 = viridian_now_ns()
            ping.ring()
            pong.wait()
            samples[i] = viridian_now_ns() - t0
        }
        peer.waitUntilExit()
        return LatencyResult(samples: Array(samples[min(1000, rounds / 10)...]))
    }

    /// A synchronous hypercall guest → viridian-host → guest: HvSignalEvent in its memory form,
    /// which always traps, through a real `viridian-host run` started for the measurement.
    public static func hypercallRoundTrip(rounds: Int, hostExecutable: String, isolation: String = "process") throws -> LatencyResult {
        let dir = "\(NSTemporaryDirectory())/viridian-bench-host-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let host = Process()
        host.executableURL = URL(fileURLWithPath: hostExecutable)
        host.arguments = ["run", "--runtime-dir", dir, "--image-dir", dir, "--isolation", isolation, "--log-level", "error"]
        try host.run()
        defer {
            host.terminate()
            host.waitUntilExit()
        }
        let socket = "\(dir)/guest1.sock"
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: socket) { usleep(10_000) }
        let link = try GuestLink.attach(to: "unix:" + socket)
        defer { link.detach() }
        link.startMonitor { _ in }
        // The input block: HvSignalEvent on connection 2 at GPA 0x1000.
        try link.memory.buffer(gpa: 0x1000, count: 8).storeBytes(of: SignalEventInput(connectionID: 2).fastInput, as: UInt64.self)
        let control = HypercallControl(.signalEvent).rawValue
        var samples = [UInt64](repeating: 0, count: rounds)
        for i in 0..<rounds {
            let t0 = viridian_now_ns()
            let result = HypercallResult(rawValue: link.hypercall(vp: 0, control: control, input: 0x1000, output: 0))
            samples[i] = viridian_now_ns() - t0
            guard result.status == .success else { throw LinkError.malformed("hypercall returned \(result.status)") }
        }
        return LatencyResult(samples: Array(samples[min(1000, rounds / 10)...]))
    }

    /// The ring workload with the consumer in another process (ring in a shared memfd).
    public static func crossProcessRing(_ workload: RingWorkload) throws -> RingBenchmarkResult {
        let size = 4096 + 4096 + workload.ringBytes
        let fd = viridian_memfd_create("viridian-bench-ring")
        guard fd >= 0, ftruncate(fd, off_t(size)) == 0, let base = viridian_mmap_shared(size, fd, 0) else {
            throw LinkError.system(call: "ring memfd", errno: errno)
        }
        defer {
            munmap(base, size)
            close(fd)
        }
        let ring = try RingBuffer(control: base + 4096, data: base + 8192, dataSize: workload.ringBytes)
        ring.initializeControlPage()
        let dataArrived = try EventFD(), roomFreed = try EventFD(), done = try EventFD()
        let peer = try startPeer(mode: .ringConsumer, workload: workload, rounds: 0,
                                 fds: [fd, dataArrived.fd, roomFreed.fd, done.fd])
        let start = viridian_now_ns()
        let producerSignals = try workload.produce(ring: ring, dataArrived: dataArrived, roomFreed: roomFreed)
        done.wait()
        let seconds = Double(viridian_now_ns() - start) / 1e9
        peer.waitUntilExit()
        let consumerSignals = Int(base.load(as: UInt64.self))
        return workload.result(seconds: seconds, producerSignals: producerSignals, consumerSignals: consumerSignals)
    }
}
