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

/// The ring benchmark: a producer thread writes in-band packets of a fixed payload size in
/// batches; a consumer thread drains them, copying each payload out. Both block on eventfd
/// doorbells exactly when the ring protocol says a signal is due.
public enum RingBenchmark {
    /// Moves `packets` packets of `payloadBytes` through a ring with `ringBytes` of data area.
    /// `pollNanoseconds`: how long a side that ran dry keeps polling (interrupts still masked, no
    /// space request published) before it asks for a signal and sleeps, as poll-mode drivers do.
    public static func run(payloadBytes: Int, packets: Int, ringBytes: Int = 1 << 20, batch: Int = 64,
                           pollNanoseconds: UInt64 = 20_000) throws -> RingBenchmarkResult {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + ringBytes, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0)
        let ring = try RingBuffer(contiguous: memory)
        ring.initializeControlPage()
        let toReader = try EventFD(), toWriter = try EventFD()
        let readerSignals = ManagedAtomic<Int>(0), writerSignals = ManagedAtomic<Int>(0)
        let failure = ManagedAtomic<Bool>(false)
        let space = RingWriter.space(extensionSize: 0, payloadSize: payloadBytes)
        // Publish at least every sixteenth of the ring so the other side can work in parallel.
        let slice = max(ringBytes / 16, space)
        let writerBatch = max(1, min(batch, slice / space))
        let readerBatch = writerBatch

        let consumer = OSThread {
            let sink = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payloadBytes, 8), alignment: 64)
            defer { sink.deallocate() }
            do {
                var reader = try RingReader(ring: ring)
                var received = 0
                while received < packets {
                    reader.mask()
                    var drained = 0
                    while let packet = try reader.next() {
                        _ = packet.copyPayload(into: sink)
                        received += 1
                        drained += 1
                        if drained == readerBatch {
                            drained = 0
                            if reader.commit() {
                                writerSignals.wrappingIncrement(ordering: .relaxed)
                                toWriter.ring()
                            }
                        }
                    }
                    if reader.commit() {
                        writerSignals.wrappingIncrement(ordering: .relaxed)
                        toWriter.ring()
                    }
                    if received >= packets { break }
                    // Poll a little with interrupts still masked before asking to be woken.
                    let deadline = viridian_now_ns() + pollNanoseconds
                    var arrived = false
                    while !arrived && viridian_now_ns() < deadline { arrived = reader.hasData() }
                    if arrived { continue }
                    if !reader.unmask() { toReader.wait() }
                }
            } catch {
                failure.store(true, ordering: .relaxed)
            }
        }

        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: max(payloadBytes, 8), alignment: 64)
        defer { source.deallocate() }
        for i in 0..<source.count { source[i] = UInt8(truncatingIfNeeded: i) }
        let payload = UnsafeRawBufferPointer(rebasing: source[0..<payloadBytes])
        let start = viridian_now_ns()
        var writer = try RingWriter(ring: ring)
        var sent = 0
        while sent < packets {
            var inBatch = 0
            while inBatch < writerBatch && sent < packets {
                guard try writer.tryWrite(type: .dataInBand, transactionID: UInt64(sent), payload: payload) else { break }
                sent += 1
                inBatch += 1
            }
            if writer.commit() {
                readerSignals.wrappingIncrement(ordering: .relaxed)
                toReader.ring()
            }
            if inBatch < writerBatch && sent < packets {
                // Full: poll briefly, then ask for room and sleep unless the reader freed it meanwhile.
                let deadline = viridian_now_ns() + pollNanoseconds
                var room = false
                while !room && viridian_now_ns() < deadline { room = writer.bytesFree() > space }
                if !room {
                    if !writer.requestSpace(space) { toWriter.wait() }
                    writer.clearSpaceRequest()
                }
            }
        }
        consumer.join()
        let seconds = Double(viridian_now_ns() - start) / 1e9
        if failure.load(ordering: .relaxed) { throw RingError.corruptPacket("benchmark reader failed") }
        let r = readerSignals.load(ordering: .relaxed), w = writerSignals.load(ordering: .relaxed)
        return RingBenchmarkResult(
            payloadBytes: payloadBytes, packets: packets, seconds: seconds, packetsPerSecond: Double(packets) / seconds,
            gigabytesPerSecond: Double(packets * payloadBytes) / seconds / 1e9,
            signalsPerPacket: Double(r + w) / Double(packets), readerSignals: r, writerSignals: w)
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
