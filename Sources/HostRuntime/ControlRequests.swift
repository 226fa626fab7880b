// Requests `viridian-host` answers on its control socket: status, shutdown, KVP — and their replies.

import CSystem
import Foundation
import Glibc
import IntegrationServices
import PartitionLink
import SyntheticStorage

/// One control request (a JSON object on one line; a bare "status" line is accepted too).
public struct ControlRequest: Codable, Sendable {
    /// "status", "shutdown" or "kvp".
    public var op: String
    public var partition: String?
    /// shutdown: "poweroff", "reboot" or "hibernate".
    public var kind: String?
    public var force: Bool?
    public var reason: String?
    /// kvp: "get", "set", "delete" or "list".
    public var action: String?
    public var key: String?
    public var value: String?
    /// disk add: image path, access and size of a created image; disk remove: the LUN.
    public var path: String?
    public var readOnly: Bool?
    public var sizeMiB: Int?
    public var lun: Int?
    /// nic link: the adapter (index or TAP name) and the state wanted; kvp set-ip/get-ip: the adapter (MAC, index or TAP name).
    public var nic: String?
    public var up: Bool?
    /// copy-file: the guest path (`path` is the host's source file) and how to place it.
    public var destination: String?
    public var overwrite: Bool?
    public var createPath: Bool?
    /// kvp set-ip: what the adapter gets.
    public var ip: ControlIPInfo?

    public init(op: String, partition: String? = nil, kind: String? = nil, force: Bool? = nil, reason: String? = nil,
                action: String? = nil, key: String? = nil, value: String? = nil, path: String? = nil, readOnly: Bool? = nil,
                sizeMiB: Int? = nil, lun: Int? = nil, nic: String? = nil, up: Bool? = nil, destination: String? = nil,
                overwrite: Bool? = nil, createPath: Bool? = nil, ip: ControlIPInfo? = nil) {
        self.destination = destination
        self.overwrite = overwrite
        self.createPath = createPath
        self.ip = ip
        self.nic = nic
        self.up = up
        self.path = path
        self.readOnly = readOnly
        self.sizeMiB = sizeMiB
        self.lun = lun
        self.op = op
        self.partition = partition
        self.kind = kind
        self.force = force
        self.reason = reason
        self.action = action
        self.key = key
        self.value = value
    }
}

/// The answer to a shutdown or KVP request.
public struct ControlReply: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    /// The guest's IC status, in hex.
    public var guestStatus: String?
    /// KVP items as [key, value] pairs.
    public var items: [[String]]?
    /// disk add: the LUN given to the new disk.
    public var lun: Int?
    /// copy-file: bytes copied.
    public var bytes: UInt64?
    /// backup check: the flags the guest answered, in hex.
    public var flags: String?
    /// kvp get-ip: the adapter's configuration.
    public var ip: ControlIPInfo?

    public static func failure(_ why: String) -> ControlReply { ControlReply(ok: false, error: why) }
}

/// An adapter's IP configuration on the control socket (KVP set-ip and get-ip).
public struct ControlIPInfo: Codable, Sendable, Equatable {
    public var dhcp: Bool
    public var addresses: [String]
    public var subnets: [String]
    public var gateways: [String]
    public var dns: [String]

    public init(dhcp: Bool = false, addresses: [String] = [], subnets: [String] = [], gateways: [String] = [], dns: [String] = []) {
        self.dhcp = dhcp
        self.addresses = addresses
        self.subnets = subnets
        self.gateways = gateways
        self.dns = dns
    }
}

/// A progress line a long request (copy-file) writes before its reply.
public struct ControlProgress: Codable, Sendable {
    public var progress: UInt64
    public var total: UInt64
}

/// A guest status (or flags) as replies show it: 0x80004005.
func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }

extension PartitionService {
    /// The reply when the partition thread did not take a request in time.
    var notAnswering: String { "partition \(configuration.name) did not answer within \(Self.performTimeoutMs) ms (its thread is busy or stuck)" }

    /// Starts `start` on the service thread and waits up to `timeoutMs` for it to call back.
    func waitForReply<T: Sendable>(timeoutMs: Int, _ start: @escaping (@escaping @Sendable (T) -> Void) -> Void) -> T? {
        guard let done = try? EventFD() else { return nil }
        let result = PerformResult<T>()
        _ = perform {
            start { value in
                result.set(value)
                done.ring()
            }
        }
        _ = done.poll(timeoutMs: timeoutMs)
        return result.get()
    }

    /// Asks the guest to shut down, reboot or hibernate; waits for its answer.
    func shutdown(kind: ShutdownKind, force: Bool, reason: String) -> ControlReply {
        guard let provider = shutdownService else { return .failure("partition \(configuration.name) has no shutdown service") }
        let status: UInt32?? = waitForReply(timeoutMs: 35_000) { reply in
            guard provider.isConnected else { return reply(nil) }
            provider.shutdown(kind: kind, force: force, reason: reason) { reply($0) }
        }
        guard let answered = status, let code = answered else {
            return .failure("the guest of \(configuration.name) did not answer (is an agent running with the shutdown service?)")
        }
        let text = hex(code)
        return code == ICStatus.ok ? ControlReply(ok: true, guestStatus: text)
            : ControlReply(ok: false, error: "the guest reported failure (\(text))", guestStatus: text)
    }

    /// KVP get/set/delete/list through the guest.
    func kvp(action: String, key: String?, value: String?) -> ControlReply {
        guard let provider = kvp else { return .failure("partition \(configuration.name) has no KVP service") }
        let name = configuration.name
        switch action {
        case "set", "delete":
            guard let key, !key.isEmpty else { return .failure("kvp \(action) needs a key") }
            if action == "set" && value == nil { return .failure("kvp set needs a value") }
            let outcome: Result<UInt32?, KVPError>? = waitForReply(timeoutMs: 35_000) { reply in
                guard provider.isConnected else { return reply(.success(nil)) }
                do throws(KVPError) {
                    if action == "set" {
                        try provider.set(key, value ?? "") { reply(.success($0)) }
                    } else {
                        try provider.delete(key) { reply(.success($0)) }
                    }
                } catch { reply(.failure(error)) }
            }
            switch outcome {
            case .failure(let error)?: return .failure("\(error)")
            case .success(let status?)?:
                return status == ICStatus.ok ? ControlReply(ok: true, guestStatus: "0x0")
                    : ControlReply(ok: false, error: action == "delete" ? "no such key in the guest's external pool" : "the guest refused (\(hex(status)))",
                                   guestStatus: hex(status))
            default: return .failure("the guest of \(name) did not answer (is an agent running with the KVP service?)")
            }
        case "get", "list":
            let pool: KVPPool = action == "get" ? .auto : .external
            let outcome: Result<[KVPRecord], KVPEnumerationError>? = waitForReply(timeoutMs: 60_000) { reply in
                guard provider.isConnected else { return reply(.failure(.noAnswer)) }
                provider.enumerate(pool: pool) { reply($0) }
            }
            let items: [KVPRecord]
            switch outcome {
            case .success(let all)?: items = key.map { k in all.filter { $0.key == k } } ?? all
            case .failure(.status(let status))?: return .failure("the guest refused the enumeration (\(hex(status)))")
            case .failure(.malformed)?: return .failure("the guest's answer was malformed")
            default: return .failure("the guest of \(name) did not answer (is an agent running with the KVP service?)")
            }
            if let key, items.isEmpty { return .failure("the guest has no item '\(key)'") }
            return ControlReply(ok: true, items: items.map { [$0.key, $0.value] })
        default:
            return .failure("unknown kvp action '\(action)' (get, set, delete, list)")
        }
    }
}

/// The file a request needs opened before the partition serves it (a confined worker opens none).
public enum ControlResource {
    /// Opens what `request` names: the image of `disk add`, the source of `copy-file`; nil when
    /// it needs nothing. The error is the reply to give instead.
    public static func open(for request: ControlRequest) -> Result<Int32?, ControlFailure> {
        switch (request.op, request.action) {
        case ("disk", "add"):
            guard let path = request.path, !path.isEmpty else { return .failure(ControlFailure("disk add needs a path")) }
            let readOnly = request.readOnly ?? false
            do { return .success(try FileBackend.open(path: path, readOnly: readOnly, create: !readOnly)) } catch {
                return .failure(ControlFailure("\(error)"))
            }
        case ("copy-file", _):
            guard let source = request.path, !source.isEmpty else { return .failure(ControlFailure("copy-file needs a source file")) }
            let fd = viridian_open(source, O_RDONLY, 0)
            guard fd >= 0 else { return .failure(ControlFailure("cannot open \(source): \(String(cString: strerror(errno)))")) }
            return .success(fd)
        default:
            return .success(nil)
        }
    }
}

/// A request refused before it reached its partition.
public struct ControlFailure: Error {
    public let why: String
    public init(_ why: String) { self.why = why }
}

extension PartitionService {
    /// Answers one control request for this partition; `resource` is what `ControlResource`
    /// opened for it (taken over: closed here). `emit` writes a progress line to the requester
    /// (false: it is gone).
    public func answer(_ request: ControlRequest, resource: Int32?, emit: (Data) -> Bool = { _ in true }) -> ControlReply {
        var resource = resource
        defer { if let fd = resource { close(fd) } }
        switch request.op {
        case "shutdown":
            guard let kind = ShutdownKind(rawValue: request.kind ?? "poweroff") else {
                return .failure("unknown shutdown kind '\(request.kind ?? "")'")
            }
            return shutdown(kind: kind, force: request.force ?? false, reason: request.reason ?? "")
        case "kvp" where request.action == "set-ip" || request.action == "get-ip":
            return kvpIP(request)
        case "kvp":
            return kvp(action: request.action ?? "", key: request.key, value: request.value)
        case "disk":
            defer { resource = nil }
            return disk(request, image: resource)
        case "nic":
            return nic(request)
        case "backup":
            return backup(action: request.action ?? "")
        case "copy-file":
            guard let fd = resource else { return .failure("copy-file needs a source file") }
            return copyFile(request, source: fd, emit: emit)
        case "test-stall" where ProcessInfo.processInfo.environment["VIRIDIAN_TEST_FAULTS"] == "1":
            // A test-only fault (the host must be started with VIRIDIAN_TEST_FAULTS=1): occupies the
            // partition thread for `value` milliseconds, as a partition stuck on its guest would.
            stallForTest(milliseconds: min(max(Int(request.value ?? "") ?? 0, 0), 60_000))
            return ControlReply(ok: true)
        case "test-crash" where ProcessInfo.processInfo.environment["VIRIDIAN_TEST_FAULTS"] == "1":
            return crashForTest(how: request.kind ?? "abort")
        default:
            return .failure("unknown request '\(request.op)'")
        }
    }
}

extension ViridianHostService {
    /// Sends a request to a running host and returns its raw reply; progress lines before it go to `progress`.
    public static func send(_ request: ControlRequest, controlPath: String, progress: ((ControlProgress) -> Void)? = nil) throws -> Data {
        let fd: Int32
        do { fd = try UnixSocket.connect(path: controlPath, type: Int32(SOCK_STREAM.rawValue)) } catch {
            throw ConfigurationError.invalid("cannot reach viridian-host at \(controlPath) (is it running?): \(error)")
        }
        defer { close(fd) }
        // A partition's worker that is stuck (or stopped) must not hang the command: at most this
        // long without a byte (copy-file sends progress ten times a second; a freeze may take
        // Linux's 15 minutes).
        let silenceSeconds = request.op == "backup" ? 16 * 60 : 120
        var timeout = timeval(tv_sec: silenceSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line = try JSONEncoder().encode(request)
        line.append(UInt8(ascii: "\n"))
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        let marker = Data("{\"progress\":".utf8)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw ConfigurationError.invalid("viridian-host did not answer '\(request.op)' within \(silenceSeconds) s (is the partition's worker stuck? see viridian-host status)")
            }
            if n <= 0 { break }
            data.append(contentsOf: chunk[0..<n])
            // Progress lines come first, one JSON object a line; the reply follows them.
            while data.starts(with: marker), let end = data.firstIndex(of: UInt8(ascii: "\n")) {
                if let p = try? JSONDecoder().decode(ControlProgress.self, from: data[data.startIndex..<end]) { progress?(p) }
                data = Data(data[(end + 1)...])
            }
        }
        return data
    }
}

extension PartitionService {
    /// Hot add or remove of a LUN on the partition's SCSI controller; the guest is told to rescan.
    /// `image`: the image `ControlResource` opened for `disk add` (taken over).
    func disk(_ request: ControlRequest, image: Int32?) -> ControlReply {
        var image = image
        defer { if let fd = image { close(fd) } }
        guard let storage else { return .failure("partition \(configuration.name) has no SCSI controller (configure a disk)") }
        switch request.action {
        case "add":
            guard let path = request.path, !path.isEmpty, let fd = image else { return .failure("disk add needs a path") }
            let readOnly = request.readOnly ?? false
            let sizeMiB = request.sizeMiB ?? 64
            guard DiskConfiguration.sizeRange.contains(sizeMiB) else {
                return .failure("size_mib must be \(DiskConfiguration.sizeRange.lowerBound)…\(DiskConfiguration.sizeRange.upperBound), not \(sizeMiB)")
            }
            let backend: FileBackend
            image = nil
            do {
                backend = try FileBackend(adopting: fd, path: path, readOnly: readOnly, createSize: readOnly ? nil : UInt64(sizeMiB) << 20)
            } catch { return .failure("\(error)") }
            let name = configuration.name
            guard let added = perform({ storage.add(SCSIDisk(backend: backend, serial: "\(name.prefix(12))-\(UInt32.random(in: 0...0xFFFF))")) }) else {
                return .failure(notAnswering)
            }
            guard let lun = added else { return .failure("no free LUN") }
            return ControlReply(ok: true, lun: Int(lun))
        case "remove":
            guard let lun = request.lun, (0...254).contains(lun) else { return .failure("disk remove needs a LUN (0-254)") }
            guard let removed = perform({ storage.remove(lun: UInt8(lun)) != nil }) else { return .failure(notAnswering) }
            return removed ? ControlReply(ok: true, lun: lun) : .failure("no LUN \(lun) on \(configuration.name)")
        default:
            return .failure("unknown disk action '\(request.action ?? "")' (add, remove)")
        }
    }
}

extension PartitionService {
    /// `nic link`: sets an adapter's link state; the guest sees MEDIA_CONNECT or MEDIA_DISCONNECT.
    func nic(_ request: ControlRequest) -> ControlReply {
        guard request.action == "link" else { return .failure("unknown nic action '\(request.action ?? "")' (link)") }
        guard let up = request.up else { return .failure("nic link needs up or down") }
        let name = request.nic ?? ""
        guard let index = nicIndex(name) else {
            return .failure("partition \(configuration.name) has no NIC '\(name)' (\(nics.count) configured; give an index or a TAP name)")
        }
        guard perform({ self.nics[index].setLink(up: up) }) != nil else { return .failure(notAnswering) }
        return ControlReply(ok: true)
    }

    /// The adapter a request names by its index (0, 1, …) or its host TAP, if there is one.
    func nicIndex(_ name: String) -> Int? {
        guard let index = Int(name) ?? configuration.nic.firstIndex(where: { $0.tap == name }), nics.indices.contains(index) else { return nil }
        return index
    }
}

extension PartitionService {
    /// Test-only faults (honoured with VIRIDIAN_TEST_FAULTS=1): "abort" ends the process as a
    /// trap would; "exec" makes a system call the worker's filter kills for (SIGSYS); "probe"
    /// reports what confinement refuses (opening a file, the capabilities held).
    func crashForTest(how: String) -> ControlReply {
        switch how {
        case "exec":
            let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
            execv("/bin/true", argv)
            return .failure("execv returned: \(String(cString: strerror(errno)))")
        case "probe":
            let fd = viridian_open("/etc/hostname", O_RDONLY, 0)
            let openResult = fd >= 0 ? "opened" : String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            return ControlReply(ok: true, error: nil, items: [["open", openResult], ["capabilities", String(WorkerSandbox.effectiveCapabilities, radix: 16)],
                                                              ["pid", String(getpid())]])
        default:
            abort()
        }
    }
}
