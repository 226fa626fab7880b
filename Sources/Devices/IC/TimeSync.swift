// Time synchronization, both ends: host time in 100 ns units since 1601 with the partition reference time.

import Foundation
import Logging
import VMBusWire

/// Time conversions of the TimeSync protocol.
public enum HyperVTime {
    /// 100 ns ticks from 1601-01-01 to 1970-01-01.
    public static let unixEpochTicks: UInt64 = 116_444_736_000_000_000
    public static func ticks(unixNanoseconds ns: Int64) -> UInt64 { UInt64(Int64(unixEpochTicks) + ns / 100) }
    public static func unixNanoseconds(ticks: UInt64) -> Int64 { (Int64(bitPattern: ticks) - Int64(unixEpochTicks)) * 100 }
    /// Host times a guest accepts: 1970 up to about 2116 (half of Int64's nanoseconds, so the
    /// offsets computed from a sample cannot overflow). Anything else is refused with FAIL.
    public static let acceptedTicks = unixEpochTicks...(unixEpochTicks + UInt64(Int64.max / 200))
    /// `flags`: 1 SYNC (step now), 2 SAMPLE (a measurement), 0 PROBE.
    public static let flagSync: UInt8 = 1
    public static let flagSample: UInt8 = 2
}

/// Where the host reads time: UTC and the partition reference counter, both in ns.
public protocol HostTimeSource: AnyObject {
    /// UTC now, ns since 1970 (a test or config may offset it).
    func utcNanoseconds() -> Int64
    /// The partition's reference counter, ns (monotonic, shared with the guest).
    func referenceNanoseconds() -> UInt64
}

/// Host end: SYNC once after negotiation, then a SAMPLE every `interval`.
public final class TimeSyncProvider: ICProvider {
    public let intervalNs: UInt64
    let source: any HostTimeSource
    private var nextSample: UInt64?
    public private(set) var samplesSent: UInt64 = 0

    public init(instanceID: GUID, intervalNs: UInt64, source: any HostTimeSource, logger: Logger, now: @escaping () -> UInt64) {
        self.intervalNs = intervalNs
        self.source = source
        super.init(deviceClass: .timeSync, instanceID: instanceID, serviceType: .timeSync,
                   serviceVersions: [ICVersion(1, 0), ICVersion(3, 0), ICVersion(4, 0)], logger: logger, now: now)
        requestTimeoutNs = max(intervalNs, 1_000_000_000)
    }

    public override func connected() {
        send(flags: HyperVTime.flagSync)
        nextSample = now() + intervalNs
    }

    public override func disconnected() { nextSample = nil }

    public override func tick(now: UInt64) {
        super.tick(now: now)
        if let due = nextSample, now >= due {
            nextSample = now + intervalNs
            if !isBusy { send(flags: HyperVTime.flagSample) }
        }
    }

    public override var nextDeadline: UInt64? { [super.nextDeadline, nextSample].compactMap { $0 }.min() }

    /// Sends a message now (SYNC: the guest steps).
    public func send(flags: UInt8) {
        guard let version = negotiated?.service else { return }
        let reference = source.referenceNanoseconds()
        let parent = HyperVTime.ticks(unixNanoseconds: source.utcNanoseconds())
        var body: [UInt8]
        if version.major >= 4 {
            body = [UInt8](repeating: 0, count: 24)
            body.putLE(parent, at: 0)
            body.putLE(reference / 100, at: 8)
            body[16] = flags
        } else {
            body = [UInt8](repeating: 0, count: 28)
            body.putLE(parent, at: 0)
            body[24] = flags
        }
        samplesSent &+= 1
        request(.timeSync, body: body) { _ in }
    }
}

/// One time measurement as the guest understood it.
public struct TimeSample: Sendable, Equatable {
    /// Host UTC (ns since 1970) at guest reference time `reference`.
    public var hostNanoseconds: Int64
    /// Guest reference counter (ns) the sample refers to.
    public var reference: UInt64
    public var isSync: Bool
}

/// What the guest does with samples (chrony feed or clock discipline).
public protocol TimeSampleSink: AnyObject {
    func apply(_ sample: TimeSample)
}

/// Guest end: latency-compensates each message with the reference counter and hands it on.
public final class TimeSyncService: ICGuestService {
    public let serviceType = ICMessageType.timeSync
    public let frameworkVersions = [ICVersion(3, 0), ICVersion(1, 0)]
    public let serviceVersions = [ICVersion(4, 0), ICVersion(3, 0), ICVersion(1, 0)]
    let referenceNow: () -> UInt64
    let sink: any TimeSampleSink
    public private(set) var lastSample: TimeSample?

    public init(referenceNow: @escaping () -> UInt64, sink: any TimeSampleSink) {
        self.referenceNow = referenceNow
        self.sink = sink
    }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        let body = ICHeader.size
        let v4 = version.major >= 4
        guard packet.count >= body + (v4 ? 22 : 25) else { return ICStatus.fail }
        let parent = packet.le(UInt64.self, at: body)
        // A host time before 1970 or centuries ahead used to overflow the conversion.
        guard HyperVTime.acceptedTicks.contains(parent) else { return ICStatus.fail }
        let now = referenceNow()
        var host = HyperVTime.unixNanoseconds(ticks: parent)
        let flags = packet[body + (v4 ? 16 : 24)]
        if v4 {
            // Compensate for the time between the host's sampling and now.
            let sampledAt = packet.le(UInt64.self, at: body + 8) &* 100
            if now >= sampledAt, now - sampledAt < 600_000_000_000 { host += Int64(now - sampledAt) }
        }
        if flags & (HyperVTime.flagSync | HyperVTime.flagSample) != 0 {
            let sample = TimeSample(hostNanoseconds: host, reference: now, isSync: flags & HyperVTime.flagSync != 0)
            lastSample = sample
            sink.apply(sample)
        }
        return ICStatus.ok
    }
}

/// A clock the agent may steer: the system clock on a real guest, an object in tests.
public protocol DisciplinableClock: AnyObject {
    /// The clock's reading, ns since 1970.
    func now() -> Int64
    /// Jumps by `ns`.
    func step(by ns: Int64)
    /// Adjusts gradually by `ns` (adjtime semantics: 500 ppm).
    func slew(by ns: Int64)
}

/// Mode (b): step on SYNC or when off by more than `stepThreshold`, slew otherwise.
public final class ClockDiscipline: TimeSampleSink {
    let clock: any DisciplinableClock
    let referenceNow: () -> UInt64
    public let stepThresholdNs: Int64
    public private(set) var steps = 0
    public private(set) var slews = 0
    public private(set) var lastOffsetNs: Int64 = 0

    public init(clock: any DisciplinableClock, referenceNow: @escaping () -> UInt64, stepThresholdNs: Int64 = 1_000_000_000) {
        self.clock = clock
        self.referenceNow = referenceNow
        self.stepThresholdNs = stepThresholdNs
    }

    public func apply(_ sample: TimeSample) {
        let elapsed = Int64(referenceNow() &- sample.reference)
        let offset = sample.hostNanoseconds + elapsed - clock.now()
        lastOffsetNs = offset
        if sample.isSync || abs(offset) > stepThresholdNs {
            clock.step(by: offset)
            steps += 1
        } else {
            clock.slew(by: offset)
            slews += 1
        }
    }
}

/// Mode (a): each sample goes to chronyd's SOCK refclock as `struct sock_sample`.
public final class ChronySockSink: TimeSampleSink {
    public let path: String
    let referenceNow: () -> UInt64
    let realtimeNow: () -> Int64
    public private(set) var sent = 0
    public private(set) var failures = 0
    /// chrony's SOCK magic, "SOCK".
    public static let magic: Int32 = 0x534F_434B

    public init(path: String, referenceNow: @escaping () -> UInt64, realtimeNow: @escaping () -> Int64) {
        self.path = path
        self.referenceNow = referenceNow
        self.realtimeNow = realtimeNow
    }

    /// The 40-byte sample: timeval (16), offset seconds (8), pulse, leap, pad, magic (4 each).
    public static func encode(realtimeNanoseconds local: Int64, offsetSeconds: Double) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 40)
        b.putLE(Int64(local / 1_000_000_000), at: 0)
        b.putLE(Int64((local % 1_000_000_000) / 1000), at: 8)
        b.putLE(offsetSeconds.bitPattern, at: 16)
        b.putLE(magic, at: 36)
        return b
    }

    public func apply(_ sample: TimeSample) {
        let local = realtimeNow()
        let host = sample.hostNanoseconds + Int64(referenceNow() &- sample.reference)
        let datagram = Self.encode(realtimeNanoseconds: local, offsetSeconds: Double(host - local) / 1e9)
        if sendDatagram(datagram, to: path) { sent += 1 } else { failures += 1 }
    }
}
