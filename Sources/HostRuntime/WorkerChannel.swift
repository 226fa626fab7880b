// The supervisor ↔ worker channel: JSON messages with descriptors over a SOCK_SEQPACKET pair.

import CSystem
import Foundation
import Glibc

/// One end of the channel between `viridian-host run` and a partition worker. A message is one
/// JSON document (at most `maximumMessage` bytes) with up to 16 descriptors: the worker's start
/// settings, its report, the control connections handed to it, and reopened TAPs (one way), and
/// the worker's requests for them (the other).
final class WorkerChannel: @unchecked Sendable {
    let fd: Int32
    static let maximumMessage = 64 * 1024
    /// Descriptors one message carries at most (a TAP's queues: up to 64 would exceed it; 16 do not).
    static let maximumDescriptors = 16

    init(adopting fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// A connected pair: (this process's end, the descriptor for the worker).
    static func pair() throws -> (WorkerChannel, Int32) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw WorkerError.system("socketpair", errno)
        }
        return (WorkerChannel(adopting: fds[0]), fds[1])
    }

    /// Sends `value` with `fds` (still owned by the caller). False when the peer is gone.
    func send<T: Encodable>(_ value: T, fds: [Int32] = []) -> Bool {
        guard let data = try? JSONEncoder().encode(value), data.count <= Self.maximumMessage else { return false }
        let n = data.withUnsafeBytes { raw in fds.withUnsafeBufferPointer { viridian_send_with_fds(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count)) } }
        return n == data.count
    }

    /// Receives one message; nil at EOF, on error or for a document that is not a `T` (its
    /// descriptors are closed then).
    func receive<T: Decodable>(_ type: T.Type) -> (T, [Int32])? {
        var buffer = [UInt8](repeating: 0, count: Self.maximumMessage)
        var fds = [Int32](repeating: -1, count: Self.maximumDescriptors)
        var count: Int32 = 0
        let n = viridian_recv_with_fds(fd, &buffer, buffer.count, &fds, Int32(Self.maximumDescriptors), &count)
        let received = Array(fds.prefix(Int(max(count, 0))))
        guard n > 0, let value = try? JSONDecoder().decode(T.self, from: Data(buffer[0..<n])) else {
            received.forEach { close($0) }
            return nil
        }
        return (value, received)
    }

    /// Waits up to `timeoutMs` for a message to arrive; false on timeout.
    func wait(timeoutMs: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            let r = poll(&p, 1, timeoutMs)
            if r < 0 && errno == EINTR { continue }
            return r > 0
        }
    }
}

/// What a worker is told when it starts: its partition and where its resources are.
struct WorkerStart: Codable, Sendable {
    var partition: PartitionConfiguration
    var id: UInt32
    var imageDirectory: String
    var socketPath: String
    var ramFile: String
    /// A trace file descriptor follows the listening socket (descriptor 5).
    var trace: Bool
}

/// What a worker says once it is set up: ready, or why it cannot serve.
struct WorkerReport: Codable, Sendable {
    var ready: Bool
    var error: String?
    /// Whether the seccomp filter and capability drop are in force.
    var confined: Bool
}

/// Why a worker could not be started or reached.
enum WorkerError: Error, CustomStringConvertible {
    case system(String, Int32)
    case failed(String)
    var description: String {
        switch self {
        case .system(let call, let e): "\(call): \(String(cString: strerror(e)))"
        case .failed(let why): why
        }
    }
}
