// Key-value exchange, both ends: host GET/SET/DELETE/ENUMERATE over the pools; the guest's store and intrinsic data.

import Foundation
import Logging
import VMBusWire

/// Host end.
public final class KVPProvider: ICProvider {
    public init(instanceID: GUID, logger: Logger, now: @escaping () -> UInt64) {
        super.init(deviceClass: .kvp, instanceID: instanceID, serviceType: .kvpExchange,
                   serviceVersions: [ICVersion(3, 0), ICVersion(4, 0)], logger: logger, now: now)
    }

    static func message(_ op: KVPOperation, _ pool: KVPPool, size: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size)
        b[0] = op.rawValue
        b[1] = pool.rawValue
        return b
    }

    /// Sets `key` in `pool` (normally `.external`). Completion: the guest's status, nil if no answer.
    public func set(_ key: String, _ value: String, pool: KVPPool = .external, completion: @escaping (UInt32?) -> Void) throws(KVPError) {
        var b = Self.message(.set, pool, size: KVPLayout.getSetSize)
        try KVPRecord(key: key, value: value).write(into: &b, at: 4)
        request(.kvpExchange, body: b) { completion(Self.status($0)) }
    }

    /// Deletes `key` from `pool`.
    public func delete(_ key: String, pool: KVPPool = .external, completion: @escaping (UInt32?) -> Void) throws(KVPError) {
        var b = Self.message(.delete, pool, size: KVPLayout.deleteSize)
        let k = try KVPRecord.utf16(key, limit: KVPLayout.maximumKeyBytes, tooLong: KVPError.keyTooLong)
        b.putLE(UInt32(k.count), at: 4)
        b.replaceSubrange(8..<(8 + k.count), with: k)
        request(.kvpExchange, body: b) { completion(Self.status($0)) }
    }

    /// Every item of `pool`, by ENUMERATE with index 0, 1, … until the guest says no more.
    public func enumerate(pool: KVPPool, completion: @escaping (Result<[KVPRecord], KVPEnumerationError>) -> Void) {
        var items: [KVPRecord] = []
        func next(_ index: UInt32) {
            var b = Self.message(.enumerate, pool, size: KVPLayout.enumerateSize)
            b.putLE(index, at: 4)
            request(.kvpExchange, body: b) { outcome in
                guard case .answered(let header, let packet) = outcome else { return completion(.failure(.noAnswer)) }
                guard header.status == ICStatus.ok else {
                    return completion(header.status == ICStatus.noMoreItems || index > 0 ? .success(items) : .failure(.status(header.status)))
                }
                guard let record = try? KVPRecord(reading: Array(packet[ICHeader.size...]), at: 8) else {
                    return completion(.failure(.malformed))
                }
                items.append(record)
                guard items.count < 4096 else { return completion(.success(items)) }
                next(index + 1)
            }
        }
        next(0)
    }

    /// SET_IP_INFO: asks the guest to configure the adapter `info.adapterID` names.
    public func setIP(_ info: KVPIPInfo, completion: @escaping (UInt32?) -> Void) throws(UTF16FieldError) {
        var b = Self.message(.setIPInfo, .external, size: KVPIPInfo.size)
        try info.write(into: &b)
        request(.kvpExchange, body: b) { completion(Self.status($0)) }
    }

    /// GET_IP_INFO: the configuration of the adapter with MAC `adapterID`.
    public func getIP(adapterID: String, completion: @escaping (Result<KVPIPInfo, KVPEnumerationError>) -> Void) throws(UTF16FieldError) {
        var b = Self.message(.getIPInfo, .external, size: KVPIPInfo.size)
        try KVPIPInfo(adapterID: adapterID, family: 0).write(into: &b)
        request(.kvpExchange, body: b) { outcome in
            guard case .answered(let header, let packet) = outcome else { return completion(.failure(.noAnswer)) }
            guard header.status == ICStatus.ok else { return completion(.failure(.status(header.status))) }
            guard let info = try? KVPIPInfo(decoding: Array(packet[ICHeader.size...])) else { return completion(.failure(.malformed)) }
            completion(.success(info))
        }
    }

    static func status(_ outcome: ICOutcome) -> UInt32? {
        if case .answered(let header, _) = outcome { return header.status }
        return nil
    }
}

/// Why an enumeration ended badly.
public enum KVPEnumerationError: Error, Equatable, Sendable {
    case noAnswer
    case malformed
    case status(UInt32)
}

/// The guest's pools, one file per pool under a state directory, replaced atomically (write,
/// fsync, rename) so readers never see half a file and a crash never loses the old one.
public final class KVPStore: @unchecked Sendable {
    public let directory: String
    private var pools: [KVPPool: [KVPRecord]] = [:]

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for pool in [KVPPool.external, .guest] { pools[pool] = (try? Self.read(directory: directory, pool: pool)) ?? [] }
    }

    public static func path(directory: String, pool: KVPPool) -> String { "\(directory)/pool_\(pool.rawValue).json" }

    /// Reads a pool file (what `viridian-agent kvp list` shows).
    public static func read(directory: String, pool: KVPPool) throws -> [KVPRecord] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path(directory: directory, pool: pool)))
        let pairs = try JSONDecoder().decode([[String]].self, from: data)
        return pairs.compactMap { $0.count == 2 ? KVPRecord(key: $0[0], value: $0[1]) : nil }
    }

    public func items(_ pool: KVPPool) -> [KVPRecord] { pools[pool] ?? [] }

    public func value(_ key: String, pool: KVPPool) -> String? { pools[pool]?.first { $0.key == key }?.value }

    public func set(_ record: KVPRecord, pool: KVPPool) throws {
        var items = pools[pool] ?? []
        if let i = items.firstIndex(where: { $0.key == record.key }) { items[i] = record } else { items.append(record) }
        try persist(items, pool: pool)
    }

    @discardableResult
    public func delete(_ key: String, pool: KVPPool) throws -> Bool {
        var items = pools[pool] ?? []
        guard let i = items.firstIndex(where: { $0.key == key }) else { return false }
        items.remove(at: i)
        try persist(items, pool: pool)
        return true
    }

    private func persist(_ items: [KVPRecord], pool: KVPPool) throws {
        let data = try JSONEncoder().encode(items.map { [$0.key, $0.value] })
        let final = Self.path(directory: directory, pool: pool)
        let temporary = final + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: temporary])
        }
        let fd = open(temporary, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(temporary, final) == 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: final]) }
        pools[pool] = items
    }
}

/// Guest end: answers from the store and the intrinsic data; refuses malformed requests. IP
/// requests run the network manager's tools, which take seconds: they run on a worker thread of
/// their own and are answered from there, so the bus is not held meanwhile.
public final class KVPService: ICGuestService, @unchecked Sendable {
    public let serviceType = ICMessageType.kvpExchange
    public let frameworkVersions = [ICVersion(3, 0), ICVersion(1, 0)]
    public let serviceVersions = [ICVersion(4, 0), ICVersion(3, 0), ICVersion(1, 0)]
    let store: KVPStore
    /// The AUTO pool, read fresh for each enumeration from index 0.
    let intrinsic: () -> [KVPRecord]
    private var autoSnapshot: [KVPRecord] = []
    /// Applies and reads adapter addresses (SET_IP_INFO, GET_IP_INFO); nil answers NOT_SUPPORTED.
    let ip: (any IPConfigurator)?
    let logger: Logger
    private let work: OffBusWork
    public private(set) var refused: UInt64 = 0

    /// `withBus` runs a closure with the bus locked (to answer); `background` false handles IP
    /// requests inline (in-memory tests).
    public init(store: KVPStore, intrinsic: @escaping () -> [KVPRecord], ip: (any IPConfigurator)? = nil, logger: Logger,
                withBus: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void = { $0() }, background: Bool = true) {
        self.store = store
        self.intrinsic = intrinsic
        self.ip = ip
        self.logger = logger
        work = OffBusWork(name: "viridian-kvp-ip", background: background && ip != nil, withBus: withBus)
    }

    public func handle(_ header: ICHeader, packet: inout [UInt8], version: ICVersion, transactionID: UInt64, client: ICClient) -> UInt32? {
        let base = ICHeader.size
        guard packet.count >= base + 4, let op = KVPOperation(rawValue: packet[base]), let pool = KVPPool(rawValue: packet[base + 1]) else {
            return refuse("unknown operation or pool")
        }
        var body = Array(packet[base...])
        let status: UInt32
        do {
            switch op {
            case .set:
                guard body.count >= KVPLayout.getSetSize else { return refuse("short SET") }
                let record = try KVPRecord(reading: body, at: 4)
                guard !record.key.isEmpty else { return refuse("empty key") }
                try store.set(record, pool: pool)
                status = ICStatus.ok
            case .delete:
                guard body.count >= KVPLayout.deleteSize else { return refuse("short DELETE") }
                status = try store.delete(try KVPRecord.key(body, sizeAt: 4, keyAt: 8), pool: pool) ? ICStatus.ok : ICStatus.fail
            case .get:
                guard body.count >= KVPLayout.getSetSize else { return refuse("short GET") }
                let key = try KVPRecord.key(body, sizeAt: 8, keyAt: 16)
                let items = pool == .auto ? intrinsic() : store.items(pool)
                guard let found = items.first(where: { $0.key == key }) else { return ICStatus.fail }
                try found.write(into: &body, at: 4)
                status = ICStatus.ok
            case .enumerate:
                guard body.count >= KVPLayout.enumerateSize else { return refuse("short ENUMERATE") }
                let index = Int(body.le(UInt32.self, at: 4))
                if pool == .auto && index == 0 { autoSnapshot = intrinsic() }
                let items = pool == .auto ? autoSnapshot : store.items(pool)
                guard index < items.count else { return ICStatus.noMoreItems }
                try items[index].write(into: &body, at: 8)
                status = ICStatus.ok
            case .getIPInfo, .setIPInfo:
                guard let ip else { return ICStatus.notSupported }
                guard body.count >= KVPIPInfo.size else { return refuse("short IP-info message") }
                let info: KVPIPInfo
                do { info = try KVPIPInfo(decoding: body) } catch { return refuse("\(error)") }
                nonisolated(unsafe) let configurator = ip
                return work.answer(&packet, transactionID: transactionID, client: client) { [self] request in
                    var b = Array(request[base...])
                    let status = ipRequest(op, info, configurator, &b)
                    request.replaceSubrange(base..<request.count, with: b)
                    return status
                }
            }
        } catch let error as KVPError {
            return refuse("\(error)")
        } catch {
            logger.error("kvp: cannot store: \(error)")
            return ICStatus.fail
        }
        packet.replaceSubrange(base..<packet.count, with: body)
        return status
    }

    private func refuse(_ why: String) -> UInt32 {
        refused &+= 1
        logger.warning("kvp: refused request: \(why)")
        return ICStatus.invalidArgument
    }

    /// SET_IP_INFO or GET_IP_INFO (whose answer goes into `body`); the status for the host.
    private func ipRequest(_ op: KVPOperation, _ info: KVPIPInfo, _ ip: any IPConfigurator, _ body: inout [UInt8]) -> UInt32 {
        do throws(IPConfigError) {
            if op == .setIPInfo {
                try ip.apply(info)
                logger.notice("kvp: applied the host's IP configuration to \(info.adapterID): \(info.dhcp ? "DHCP" : info.addresses.joined(separator: ", "))")
            } else {
                var found = try ip.read(adapterID: info.adapterID)
                found.adapterID = info.adapterID
                do { try found.write(into: &body) } catch {
                    logger.warning("kvp: the configuration of \(info.adapterID) does not fit GET_IP_INFO: \(error)")
                    return ICStatus.invalidArgument
                }
            }
            return ICStatus.ok
        } catch {
            logger.warning("kvp: \(op == .setIPInfo ? "SET" : "GET")_IP_INFO for \(info.adapterID): \(error)")
            return error.status
        }
    }
}
