// --trace: every channel message and every ring packet header as one JSON object per line.

import Foundation
import Glibc
import PartitionLink
import VMBusChannel
import VMBusRing
import VMBusWire

/// Writes trace records as JSON lines. Shared by all partition threads (serialized by a lock).
/// Record format (stable; see README "Trace format"):
/// - `{"ts":ns,"kind":"message","partition":NAME,"dir":"g2h"|"h2g","type":NAME,"type_id":N,"size":N,"hex":HEX,"fields":{…}}`
/// - `{"ts":ns,"kind":"packet","partition":NAME,"dir":"g2h"|"h2g","relid":N,"type":NAME,"type_id":N,"offset8":N,"len8":N,"flags":N,"tid":N,"payload_len":N,"head":HEX}`
public final class TraceWriter: @unchecked Sendable {
    private let lock = Lock()
    private let handle: FileHandle
    public private(set) var records: UInt64 = 0
    /// Why tracing stopped (a write failed: a full disk, say); nil while it runs. The host goes on.
    public private(set) var failure: String?

    public init(path: String) throws {
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw ConfigurationError.invalid("cannot create trace file \(path)")
            }
        }
        guard let h = FileHandle(forWritingAtPath: path) else { throw ConfigurationError.invalid("cannot open trace file \(path)") }
        try? h.truncate(atOffset: 0)   // (not for a pipe or a device)
        handle = h
    }

    /// Writes to a trace file opened by another process (a partition worker's, opened by its
    /// supervisor with O_APPEND, so the workers' lines do not overwrite each other).
    public init(adopting fd: Int32) {
        handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
    }

    deinit { try? handle.close() }

    func emit(_ fields: [(String, JSONValue)]) {
        var line = "{"
        for (i, (key, value)) in fields.enumerated() {
            if i > 0 { line += "," }
            line += "\"\(key)\":\(value.text)"
        }
        line += "}\n"
        lock.withLock {
            guard failure == nil else { return }
            do {
                try handle.write(contentsOf: Data(line.utf8))
                records += 1
            } catch {
                // The guest's traffic must not stop for the trace (ENOSPC, EIO): say so once, stop tracing.
                failure = "\(error)"
                let note = Array("viridian-host: --trace stopped after \(records) records: \(error)\n".utf8)
                _ = note.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            }
        }
    }

    /// A channel message in either direction.
    public func message(partition: String, guestToHost: Bool, bytes: [UInt8]) {
        var fields: [(String, JSONValue)] = [
            ("ts", .int(Int(now()))), ("kind", .string("message")), ("partition", .string(partition)),
            ("dir", .string(guestToHost ? "g2h" : "h2g")),
        ]
        let typeID = bytes.count >= 4 ? bytes.le(UInt32.self, at: 0) : 0
        fields.append(("type", .string(ChannelMessageType(rawValue: typeID).map { "\($0)" } ?? "unknown")))
        fields.append(("type_id", .int(Int(typeID))))
        fields.append(("size", .int(bytes.count)))
        fields.append(("hex", .string(hex(bytes[...]))))
        if let decoded = try? ChannelMessage(decoding: bytes) {
            fields.append(("fields", .object(Self.fields(of: decoded))))
        } else {
            fields.append(("fields", .object([("error", .string("malformed"))])))
        }
        emit(fields)
    }

    /// Flattens a decoded message's stored properties.
    static func fields(of message: ChannelMessage) -> [(String, JSONValue)] {
        guard let body = Mirror(reflecting: message).children.first?.value else { return [] }
        return Mirror(reflecting: body).children.compactMap { child in
            guard let label = child.label else { return nil }
            return (label, JSONValue.describe(child.value))
        }
    }

    func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}

/// Adapts the trace to a channel endpoint's packet observer.
final class PacketTrace: PacketObserver {
    let writer: TraceWriter
    let partition: String

    init(writer: TraceWriter, partition: String) {
        self.writer = writer
        self.partition = partition
    }

    func observe(relid: UInt32, outgoing: Bool, packet: IncomingPacket) {
        let d = packet.descriptor
        var head = [UInt8](repeating: 0, count: min(64, packet.payloadLength))
        _ = head.withUnsafeMutableBytes { packet.copyPayload(into: $0) }
        writer.emit([
            ("ts", .int(Int(writer.now()))), ("kind", .string("packet")), ("partition", .string(partition)),
            ("dir", .string(outgoing ? "h2g" : "g2h")), ("relid", .int(Int(relid))),
            ("type", .string(d.packetType.map { "\($0)" } ?? "unknown")), ("type_id", .int(Int(d.type))),
            ("offset8", .int(Int(d.offset8))), ("len8", .int(Int(d.len8))), ("flags", .int(Int(d.flags))),
            ("tid", .uint(d.transactionID)), ("payload_len", .int(packet.payloadLength)), ("head", .string(hex(head[...]))),
        ])
    }
}

/// The few JSON shapes a trace line needs.
enum JSONValue {
    case int(Int)
    case uint(UInt64)
    case string(String)
    case bool(Bool)
    case object([(String, JSONValue)])
    case array([JSONValue])

    var text: String {
        switch self {
        case .int(let v): String(v)
        case .uint(let v): String(v)
        case .bool(let v): v ? "true" : "false"
        case .string(let s): "\"" + Self.escape(s) + "\""
        case .object(let fields): "{" + fields.map { "\"\($0.0)\":\($0.1.text)" }.joined(separator: ",") + "}"
        case .array(let items): "[" + items.map(\.text).joined(separator: ",") + "]"
        }
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Numbers stay numbers, GUIDs and versions become their text, byte arrays hex.
    static func describe(_ value: Any) -> JSONValue {
        switch value {
        case let v as UInt8: return .int(Int(v))
        case let v as UInt16: return .int(Int(v))
        case let v as UInt32: return .int(Int(v))
        case let v as Int32: return .int(Int(v))
        case let v as UInt64: return .uint(v)
        case let v as Int: return .int(v)
        case let v as Bool: return .bool(v)
        case let v as GUID: return .string(v.description)
        case let v as VMBusVersion: return .string(v.description)
        case let v as [UInt8]: return .string(hex(v[...]))
        case let v as [UInt64]: return .array(v.map { .uint($0) })
        case let v as OfferChannel.Flags: return .int(Int(v.rawValue))
        case let opt as any OptionalProtocol: return opt.unwrapped.map(describe) ?? .string("")
        default: return .string(String(describing: value))
        }
    }
}

protocol OptionalProtocol {
    var unwrapped: Any? { get }
}

extension Optional: OptionalProtocol {
    var unwrapped: Any? { self.map { $0 as Any } }
}

func hex(_ bytes: ArraySlice<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}
