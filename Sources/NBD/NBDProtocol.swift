// The NBD wire protocol (fixed newstyle): magics, options, replies, commands, errors.

/// Constants of the NBD protocol as the upstream specification defines them.
public enum NBD {
    public static let initMagic: UInt64 = 0x4E42_444D_4147_4943  // "NBDMAGIC"
    public static let optionMagic: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    public static let replyMagic: UInt64 = 0x0003_E889_0455_65A9
    public static let requestMagic: UInt32 = 0x2560_9513
    public static let simpleReplyMagic: UInt32 = 0x6744_6698

    public static let flagFixedNewstyle: UInt16 = 1
    public static let flagNoZeroes: UInt16 = 2

    /// Options of the handshake phase (NBD_OPT_*).
    public enum Option: UInt32 {
        case exportName = 1, abort = 2, list = 3, startTLS = 5, info = 6, go = 7, structuredReply = 8
    }

    /// Option reply types (NBD_REP_*), errors with bit 31 set.
    public enum Reply {
        public static let ack: UInt32 = 1
        public static let server: UInt32 = 2
        public static let info: UInt32 = 3
        public static let errUnsupported: UInt32 = 0x8000_0001
        public static let errPolicy: UInt32 = 0x8000_0002
        public static let errInvalid: UInt32 = 0x8000_0003
        public static let errUnknown: UInt32 = 0x8000_0006
        public static let errTooBig: UInt32 = 0x8000_0009
    }

    /// Information types of NBD_REP_INFO.
    public enum Info {
        public static let export: UInt16 = 0
        public static let blockSize: UInt16 = 3
    }

    /// Transmission flags.
    public enum Flags {
        public static let hasFlags: UInt16 = 1
        public static let readOnly: UInt16 = 2
        public static let sendFlush: UInt16 = 4
        public static let sendFUA: UInt16 = 8
        public static let sendTrim: UInt16 = 0x20
        public static let sendWriteZeroes: UInt16 = 0x40
    }

    /// Request types of the transmission phase (NBD_CMD_*).
    public enum Command: UInt16 {
        case read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, cache = 5, writeZeroes = 6, blockStatus = 7
    }

    /// Request flags (NBD_CMD_FLAG_*).
    public enum CommandFlags {
        public static let fua: UInt16 = 1
        public static let noHole: UInt16 = 2
    }

    /// Error numbers in simple replies (Linux errno values).
    public enum Error {
        public static let ok: UInt32 = 0
        public static let perm: UInt32 = 1
        public static let io: UInt32 = 5
        public static let nomem: UInt32 = 12
        public static let inval: UInt32 = 22
        public static let nospc: UInt32 = 28
        public static let overflow: UInt32 = 75
        public static let notsup: UInt32 = 95
    }

    /// Largest request payload accepted.
    public static let maximumRequest = 32 << 20
}

/// A disk as the NBD server sees it. Errors are NBD error numbers (0 = success).
public protocol NBDBlockDevice: AnyObject {
    var size: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Smallest and preferred I/O sizes (advertised with NBD_INFO_BLOCK_SIZE).
    var blockSize: Int { get }
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> UInt32
    func write(offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) -> UInt32
    func flush() -> UInt32
    func trim(offset: UInt64, length: UInt64) -> UInt32
    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool) -> UInt32
}

extension NBDBlockDevice {
    /// WRITE_ZEROES for a disk without a zeroing command: zeros written in chunks of up to 1 MiB.
    public func writeZeroesByWriting(offset: UInt64, length: UInt64, fua: Bool) -> UInt32 {
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(length, 1 << 20)), alignment: 512)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at: UInt64 = 0
        while at < length {
            let n = Int(min(length - at, UInt64(zeros.count)))
            let e = write(offset: offset + at, from: UnsafeRawBufferPointer(rebasing: zeros[0..<n]), fua: fua)
            guard e == 0 else { return e }
            at += UInt64(n)
        }
        return 0
    }
}

/// A disk that can keep many requests in flight. The connection hands requests over as they
/// arrive and answers each when its `done` runs, in completion order.
public protocol NBDPipelinedDevice: NBDBlockDevice {
    /// Starts a read. Returns false to have the connection use the synchronous path instead.
    /// `done` runs once, on any thread, with the error and the data in segments valid until
    /// `release` is called. A device whose completions run inside `NBDReplyGrouping.together`
    /// lets the completing thread send the replies of a group itself, in one write.
    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool
    /// Starts a write; `data` is copied before this returns. False: use the synchronous path.
    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool
    /// A batch through which one connection starts its requests (see `NBDRequestBatch`).
    func makeBatch() -> any NBDRequestBatch
}

extension NBDPipelinedDevice {
    /// Without batching support: every request starts at once.
    public func makeBatch() -> any NBDRequestBatch { ImmediateRequestBatch(device: self) }
}

/// The requests one connection starts back to back. A device may hold requests started through
/// the batch until `submit()` and hand them over together (one lock, one doorbell). The connection
/// calls `submit()` before it blocks on its socket, before any synchronous request and when it
/// ends, so a held request never waits for the client. Used by one thread at a time.
public protocol NBDRequestBatch: AnyObject {
    /// As `NBDPipelinedDevice.startRead`, except that the request may be held until `submit()`.
    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool
    /// As `NBDPipelinedDevice.startWrite` (`data` is copied before this returns), except that the
    /// request may be held until `submit()`.
    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool
    /// Hands every held request to the device.
    func submit()
}

/// A batch that holds nothing: each request goes to the device as it starts.
final class ImmediateRequestBatch: NBDRequestBatch {
    let device: any NBDPipelinedDevice

    init(device: any NBDPipelinedDevice) { self.device = device }

    func startRead(offset: UInt64, length: Int,
                   done: @escaping @Sendable (UInt32, [UnsafeRawBufferPointer], @escaping @Sendable () -> Void) -> Void) -> Bool {
        device.startRead(offset: offset, length: length, done: done)
    }

    func startWrite(offset: UInt64, data: UnsafeRawBufferPointer, fua: Bool, done: @escaping @Sendable (UInt32) -> Void) -> Bool {
        device.startWrite(offset: offset, data: data, fua: fua, done: done)
    }

    func submit() {}
}
