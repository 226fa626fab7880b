// One control-socket connection: the request line in, progress lines and the JSON reply out.

import Foundation
import Glibc

/// Reading and answering a control connection, the same in the host process and in a worker
/// (a supervisor hands the connection's descriptor to the worker of the partition it names).
enum ControlConnection {
    /// Reads the request line (at most 8 KiB, 2 s). nil: malformed or the requester gave up.
    static func readRequest(_ client: Int32) -> ControlRequest? {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 8192)
        var length = 0
        while length < buffer.count, !buffer[0..<length].contains(UInt8(ascii: "\n")) {
            let n = buffer.withUnsafeMutableBytes { read(client, $0.baseAddress! + length, $0.count - length) }
            if n <= 0 { break }
            length += n
        }
        let line = String(decoding: buffer[0..<length], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return line == "status" ? ControlRequest(op: "status") : (try? JSONDecoder().decode(ControlRequest.self, from: Data(line.utf8)))
    }

    /// Writes a progress line unless the requester closed its end (or sent more than its one line).
    static func emitter(_ client: Int32) -> (Data) -> Bool {
        { data in
            var p = pollfd(fd: client, events: Int16(POLLIN) | 0x2000 /* POLLRDHUP */, revents: 0)
            if poll(&p, 1, 0) > 0 { return false }
            return writeAll(client, data)
        }
    }

    /// The reply document, pretty-printed as `viridian-host` always answers.
    static func encode<T: Encodable>(_ value: T) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    /// Answers with `reply` and closes the connection.
    static func finish(_ client: Int32, _ reply: Data) {
        writeAll(client, reply)
        close(client)
    }

    @discardableResult
    static func writeAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let w = Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { return false }
                sent += w
            }
            return true
        }
    }
}
