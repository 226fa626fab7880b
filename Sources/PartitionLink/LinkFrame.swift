// PartitionLink's framing on the Unix socket: a 16-byte header and one body per frame (SOCK_SEQPACKET).

import VMBusWire

/// One PartitionLink frame. Descriptors travel beside the bytes (SCM_RIGHTS).
public enum LinkFrame: Equatable, Sendable {
    /// Agent → host: the first frame.
    case hello(Hello)
    /// Host → agent: the partition, with memory, VP-block memory and per-VP eventfds attached.
    case welcome(Welcome)
    /// Host → agent: the attach was refused; the host closes the link.
    case refuse(code: UInt32, reason: String)
    /// Host → agent: signalling eventfd for a connection id (one descriptor attached).
    case eventFD(connectionID: UInt32)
    /// Host → agent: forget the eventfd of a connection id.
    case revokeEventFD(connectionID: UInt32)
    /// Host → agent: the host is shutting down.
    case shutdown(reason: UInt32)
    /// Host → agent: the eventfd of a legacy interrupt line (IRQ number), rung when the line rises.
    case interruptLine(irq: UInt32)

    public static let magic: UInt32 = 0x4B4E_4C56  // "VLNK"
    public static let version: UInt16 = 1
    public static let headerSize = 16
    public static let maximumSize = 4096
    public static let maximumNameLength = 64

    /// Agent greeting.
    public struct Hello: Equatable, Sendable {
        public var pid: UInt32
        public var flags: UInt32
        public init(pid: UInt32, flags: UInt32 = 0) {
            self.pid = pid
            self.flags = flags
        }
    }

    /// What the agent needs to run the partition. Descriptors: memory, VP blocks, then
    /// (doorbell, completion, interrupt) per VP.
    public struct Welcome: Equatable, Sendable {
        public var partitionID: UInt32
        public var vpCount: UInt32
        public var memoryBytes: UInt64
        /// Host CPUs the partition may run on (bit n = CPU n); 0 = any.
        public var cpuMask: UInt64
        public var name: String
        public init(partitionID: UInt32, vpCount: UInt32, memoryBytes: UInt64, cpuMask: UInt64, name: String) {
            self.partitionID = partitionID
            self.vpCount = vpCount
            self.memoryBytes = memoryBytes
            self.cpuMask = cpuMask
            self.name = name
        }
        /// Descriptors that must accompany the frame.
        public var descriptorCount: Int { 2 + 3 * Int(vpCount) }
    }

    var type: UInt16 {
        switch self {
        case .hello: 1
        case .welcome: 2
        case .refuse: 3
        case .eventFD: 4
        case .revokeEventFD: 5
        case .shutdown: 6
        case .interruptLine: 7
        }
    }

    /// Encodes header and body.
    public func encode() -> [UInt8] {
        var body: [UInt8]
        switch self {
        case .hello(let h):
            body = [UInt8](repeating: 0, count: 8)
            body.putLE(h.pid, at: 0)
            body.putLE(h.flags, at: 4)
        case .welcome(let w):
            let name = Array(w.name.utf8.prefix(Self.maximumNameLength))
            body = [UInt8](repeating: 0, count: 26 + name.count)
            body.putLE(w.partitionID, at: 0)
            body.putLE(w.vpCount, at: 4)
            body.putLE(w.memoryBytes, at: 8)
            body.putLE(w.cpuMask, at: 16)
            body.putLE(UInt16(name.count), at: 24)
            body.replaceSubrange(26..<(26 + name.count), with: name)
        case .refuse(let code, let reason):
            let text = Array(reason.utf8.prefix(1024))
            body = [UInt8](repeating: 0, count: 4)
            body.putLE(code, at: 0)
            body += text
        case .eventFD(let id), .revokeEventFD(let id), .shutdown(let id), .interruptLine(let id):
            body = [UInt8](repeating: 0, count: 4)
            body.putLE(id, at: 0)
        }
        var out = [UInt8](repeating: 0, count: Self.headerSize)
        out.putLE(Self.magic, at: 0)
        out.putLE(Self.version, at: 4)
        out.putLE(type, at: 6)
        out.putLE(UInt32(body.count), at: 8)
        return out + body
    }

    /// Decodes one frame, refusing anything malformed.
    public init(decoding b: [UInt8]) throws(LinkError) {
        guard b.count >= Self.headerSize else { throw .malformed("\(b.count)-byte frame") }
        guard b.count <= Self.maximumSize else { throw .malformed("frame of \(b.count) bytes") }
        guard b.le(UInt32.self, at: 0) == Self.magic else { throw .malformed("bad magic") }
        let version = b.le(UInt16.self, at: 4)
        guard version == Self.version else { throw .versionMismatch(version) }
        let type = b.le(UInt16.self, at: 6)
        let length = Int(b.le(UInt32.self, at: 8))
        guard length == b.count - Self.headerSize else { throw .malformed("length \(length) in a \(b.count)-byte frame") }
        let body = Array(b[Self.headerSize...])
        func need(_ n: Int) throws(LinkError) {
            guard body.count >= n else { throw .malformed("type \(type) body of \(body.count) bytes") }
        }
        switch type {
        case 1:
            try need(8)
            self = .hello(Hello(pid: body.le(at: 0), flags: body.le(at: 4)))
        case 2:
            try need(26)
            let nameLength = Int(body.le(UInt16.self, at: 24))
            guard nameLength <= Self.maximumNameLength, body.count == 26 + nameLength else { throw .malformed("name length") }
            guard let name = String(validating: body[26...], as: UTF8.self) else { throw .malformed("name is not UTF-8") }
            let w = Welcome(partitionID: body.le(at: 0), vpCount: body.le(at: 4), memoryBytes: body.le(at: 8),
                            cpuMask: body.le(at: 16), name: name)
            guard (1...16).contains(w.vpCount) else { throw .malformed("\(w.vpCount) VPs") }
            guard w.memoryBytes > 0, w.memoryBytes % 4096 == 0, w.memoryBytes <= 1 << 40 else { throw .malformed("memory size") }
            self = .welcome(w)
        case 3:
            try need(4)
            self = .refuse(code: body.le(at: 0), reason: String(decoding: body[4...], as: UTF8.self))
        case 4:
            try need(4)
            self = .eventFD(connectionID: body.le(at: 0))
        case 5:
            try need(4)
            self = .revokeEventFD(connectionID: body.le(at: 0))
        case 6:
            try need(4)
            self = .shutdown(reason: body.le(at: 0))
        case 7:
            try need(4)
            let irq: UInt32 = body.le(at: 0)
            guard irq < 256 else { throw .malformed("IRQ \(irq)") }
            self = .interruptLine(irq: irq)
        default:
            throw .malformed("unknown type \(type)")
        }
    }
}

/// Refusal codes.
public enum LinkRefusal {
    public static let busy: UInt32 = 1
    public static let badHello: UInt32 = 2
    public static let shuttingDown: UInt32 = 3
    public static let internalError: UInt32 = 4
}
