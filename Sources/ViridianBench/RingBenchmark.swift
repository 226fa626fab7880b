// Two threads move packets through one VMBus ring in shared memory, signalling by Linux's rules.

import Atomics
import CSystem
import Glibc
import VMBusRing
import PartitionLink
import VMBusWire

/// One measured ring run.
public struct RingBenchmarkResult: Sendable, Codable {
    public var payloadBytes: Int
    public var packets: Int
    public var seconds: Double
    public var packetsPerSecond: Double
    public var gigabytesPerSecond: Double
    /// Signals (both directions) per packet moved.
    public var signalsPerPacket: Double
    public var readerSignals: Int
    public var writerSignals: Int
}

/// How the two sides of the ring benchmark behave: payload, batching, polling.
public struct RingWorkload: Sendable {
    public var payloadBytes: Int
    public var packets: Int
    public var ringBytes: Int
    public var batch: Int
    /// How long a side that ran dry keeps polling (interrupts still masked, no space request
    /// published) before it asks for a signal and sleeps, as poll-mode drivers do.
    public var pollNanoseconds: UInt64

    public init(payloadBytes: Int, packets: Int, ringBytes: Int = 1 << 20, batch: Int = 64, pollNanoseconds: UInt64 = 20_000) {
        self.payloadBytes = payloadBytes
        self.packets = packets
        self.ringBytes = ringBytes
        self.batch = batch
        self.pollNanoseconds = pollNanoseconds
    }

    var space: Int { RingWriter.space(extensionSize: 0, payloadSize: payloadBytes) }
    /// Publish at least every sixteenth of the ring so the other side can work in parallel.
    var packetsPerCommit: Int { max(1, min(batch, max(ringBytes / 16, space) / space)) }

    /// The consumer: drains `packets` packets, copying each payload out. Returns signals it sent.
    public func consume(ring: RingBuffer, dataArrived: EventFD, roomFreed: EventFD) throws -> Int {
        let sink = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payloadBytes, 8), alignment: 64)
        defer { sink.deallocate() }
        var reader = try RingReader(ring: ring)
        var received = 0, signals = 0, drained = 0
        while received < packets {
            reader.mask()
            while let packet = try reader.next() {
                _ = packet.copyPayload(into: sink)
                received += 1
                drained += 1
                if drained == packetsPerCommit {
                    drained = 0
                    if reader.commit() {
                        signals += 1
                        roomFreed.ring()
                    }
                }
            }
            if reader.commit() {
                signals += 1
                roomFreed.ring()
            }
            if received >= packets { break }
            let deadline = viridian_now_ns() + pollNanoseconds
            var arrived = false
            while !arrived && viridian_now_ns() < deadline { arrived = reader.hasData() }
            if arrived { continue }
            if !reader.unmask() { dataArrived.wait() }
        }
        return signals
    }

    /// The producer: writes `packets` in-band packets in batches. Returns signals it sent.
    public func produce(ring: RingBuffer, dataArrived: EventFD, roomFreed: EventFD) throws -> Int {
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payloadBytes, 8), alignment: 64)
        defer { source.deallocate() }
        for i in 0..<source.count { source[i] = UInt8(truncatingIfNeeded: i) }
        let payload = UnsafeRawBufferPointer(rebasing: source[0..<payloadBytes])
        var writer = try RingWriter(ring: ring)
        var sent = 0, signals = 0
        while sent < packets {
            var inBatch = 0
            while inBatch < packetsPerCommit && sent < packets {
                guard try writer.tryWrite(type: .dataInBand, transactionID: UInt64(sent), payload: payload) else { break }
                sent += 1
                inBatch += 1
            }
            if writer.commit() {
                signals += 1
                dataArrived.ring()
            }
            if inBatch < packetsPerCommit && sent < packets {
                // Full: poll briefly, then ask for room and sleep unless the reader freed it meanwhile.
                let deadline = viridian_now_ns() + pollNanoseconds
                var room = false
                while !room && viridian_now_ns() < deadline { room = writer.bytesFree() > space }
                if !room {
                    if !writer.requestSpace(space) { roomFreed.wait() }
                    writer.clearSpaceRequest()
                }
            }
        }
        return signals
    }

    func result(seconds: Double, producerSignals: Int, consumerSignals: Int) -> RingBenchmarkResult {
        RingBenchmarkResult(
            payloadBytes: payloadBytes, packets: packets, seconds: seconds, packetsPerSecond: Double(packets) / seconds,
            gigabytesPerSecond: Double(packets * payloadBytes) / seconds / 1e9,
            signalsPerPacket: Double(producerSignals + consumerSignals) / Double(packets),
            readerSignals: producerSignals, writerSignals: consumerSignals)
    }
}

/// The ring benchmark in one process: a producer thread and a consumer thread on one ring,
/// blocking on eventfd doorbells exactly when the ring protocol says a signal is due.
public enum RingBenchmark {
    /// Moves the workload's packets through a ring in this process's memory.
    public static func run(_ workload: RingWorkload) throws -> RingBenchmarkResult {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + workload.ringBytes, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0)
        let ring = try RingBuffer(contiguous: memory)
        ring.initializeControlPage()
        let dataArrived = try EventFD(), roomFreed = try EventFD()
        let consumerSignals = ManagedAtomic<Int>(-1)
        let start = viridian_now_ns()
        let consumer = OSThread {
            let n = (try? workload.consume(ring: ring, dataArrived: dataArrived, roomFreed: roomFreed)) ?? -1
            consumerSignals.store(n, ordering: .releasing)
        }
        let producerSignals = try workload.produce(ring: ring, dataArrived: dataArrived, roomFreed: roomFreed)
        consumer.join()
        let seconds = Double(viridian_now_ns() - start) / 1e9
        let c = consumerSignals.load(ordering: .acquiring)
        if c < 0 { throw RingError.corruptPacket("benchmark reader failed") }
        return workload.result(seconds: seconds, producerSignals: producerSignals, consumerSignals: c)
    }

    /// Convenience form of `run(_:)`.
    public static func run(payloadBytes: Int, packets: Int, ringBytes: Int = 1 << 20, batch: Int = 64,
                           pollNanoseconds: UInt64 = 20_000) throws -> RingBenchmarkResult {
        try run(RingWorkload(payloadBytes: payloadBytes, packets: packets, ringBytes: ringBytes, batch: batch, pollNanoseconds: pollNanoseconds))
    }

    /// memcpy bandwidth for `chunk`-byte copies into a `area`-byte destination, the ring's data pattern.
    public static func memcpyBandwidth(chunk: Int, area: Int = 1 << 20, totalBytes: Int) -> Double {
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: area, alignment: 4096)
        defer { source.deallocate(); destination.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0x5A)
        destination.initializeMemory(as: UInt8.self, repeating: 0)
        let slots = max(area / chunk, 1)
        let copies = max(totalBytes / chunk, 1)
        let start = viridian_now_ns()
        for i in 0..<copies {
            memcpy(destination.baseAddress! + (i % slots) * chunk, source.baseAddress!, chunk)
        }
        let seconds = Double(viridian_now_ns() - start) / 1e9
        // Keep the copies observable.
        precondition(destination[0] == 0x5A)
        return Double(copies * chunk) / seconds / 1e9
    }
}
