// Control requests for the guest services added with backup and file copy: `backup`, `copy-file`,
// and KVP's `set-ip` / `get-ip`.

import CSystem
import Foundation
import Glibc
import IntegrationServices
import PartitionLink
import SyntheticNetwork
import Synchronization
import VMBusWire

extension PartitionService {
    /// `backup freeze|thaw|check` through the guest's VSS service.
    func backup(action: String) -> ControlReply {
        guard let provider = vss else { return .failure("partition \(configuration.name) has no backup (VSS) service") }
        let operation: VSSOperation
        switch action {
        case "freeze": operation = .freeze
        case "thaw": operation = .thaw
        case "check": operation = .hotBackup
        default: return .failure("unknown backup action '\(action)' (freeze, thaw, check)")
        }
        let answer: VSSAnswer?? = waitForReply(timeoutMs: Int(VSSProvider.freezeTimeoutNs / 1_000_000) + 5000) { reply in
            guard provider.isConnected else { return reply(nil) }
            provider.send(operation) { reply($0) }
        }
        guard let answered = answer, let a = answered else {
            return .failure("the guest of \(configuration.name) did not answer (is an agent running with the vss service?)")
        }
        guard a.status == ICStatus.ok else {
            return ControlReply(ok: false, error: "the guest could not \(action) (\(hex(a.status)); its log says why)", guestStatus: hex(a.status))
        }
        return ControlReply(ok: true, guestStatus: hex(a.status), flags: hex(a.flags))
    }

    /// `copy-file`: streams the host file `path` to `destination` in the guest, writing progress
    /// lines through `emit`; a requester that goes away cancels the copy (the guest drops it).
    /// Copies the source file open on `fd` (opened by the control front, which may be a
    /// supervisor: a confined worker opens no files) into the guest.
    func copyFile(_ request: ControlRequest, source fd: Int32, emit: (Data) -> Bool) -> ControlReply {
        guard let provider = fcopy else { return .failure("partition \(configuration.name) has no guest file copy (fcopy) service") }
        guard let source = request.path, let destination = request.destination, destination.hasPrefix("/") else {
            return .failure("copy-file needs a source file and an absolute guest path")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return .failure("\(source) is not a regular file") }
        let size = UInt64(st.st_size)
        var flags: FCopyFlags = []
        if request.overwrite == true { flags.insert(.overwrite) }
        if request.createPath == true { flags.insert(.createPath) }
        let state = CopyState()
        guard let done = try? EventFD() else { return .failure("out of file descriptors") }
        let started: Void? = perform {
            guard provider.isConnected else {
                state.finish(.noAnswer)
                done.ring()
                return
            }
            provider.copy(fd: fd, size: size, destination: destination, flags: flags, mode: UInt32(st.st_mode & 0o777),
                          progress: { state.sent.store($0, ordering: .relaxed) },
                          cancelled: { state.cancelled.load(ordering: .relaxed) },
                          completion: { result in
                              state.finish(result)
                              done.ring()
                          })
        }
        guard started != nil else { return .failure(notAnswering) }
        var lastSent: UInt64 = 0, lastMove = Date()
        // Sorted keys: the line starts with {"progress": as the reader expects.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        while !done.poll(timeoutMs: 100) {
            let sent = state.sent.load(ordering: .relaxed)
            if sent != lastSent { (lastSent, lastMove) = (sent, Date()) }
            let line = (try? encoder.encode(ControlProgress(progress: sent, total: size))) ?? Data()
            if !state.cancelled.load(ordering: .relaxed) && !emit(line + Data("\n".utf8)) {
                logger.notice("\(configuration.name): copy-file to \(destination): the requester went away; cancelling")
                state.cancelled.store(true, ordering: .relaxed)
            }
            // The provider answers every step within its request timeout; this is the backstop.
            if Date().timeIntervalSince(lastMove) > 120 { return .failure("the copy to \(destination) stalled") }
        }
        switch state.result {
        case .copied(let n)?: return ControlReply(ok: true, bytes: n)
        case .refused(let step, let status)?:
            let why = switch status {
            case ICStatus.alreadyExists: "\(destination) exists in the guest (use --overwrite)"
            case ICStatus.diskFull: "the guest's file system is full"
            case ICStatus.invalidArgument: "the guest refused \(destination) (outside its allowed directories, or a bad name)"
            default: "the guest failed at \(step)"
            }
            return ControlReply(ok: false, error: "\(why) (\(hex(status)))", guestStatus: hex(status))
        case .cancelled?: return .failure("cancelled")
        case .readFailed(let e)?: return .failure("reading \(source): \(String(cString: strerror(e)))")
        case .badRequest(let why)?: return .failure(why)
        case .noAnswer?, nil: return .failure("the guest of \(configuration.name) did not answer (is an agent running with the fcopy service?)")
        }
    }

    /// `kvp set-ip` / `kvp get-ip` for the adapter `request.nic` names (MAC, index or host TAP name).
    func kvpIP(_ request: ControlRequest) -> ControlReply {
        guard let provider = kvp else { return .failure("partition \(configuration.name) has no KVP service") }
        let wanted = request.nic ?? ""
        guard let index = nicIndex(wanted) ?? nics.firstIndex(where: { MACAddress.format($0.mac).lowercased() == wanted.lowercased() }) else {
            return .failure("partition \(configuration.name) has no NIC '\(wanted)' (give its MAC, index or host TAP name)")
        }
        let nic = nics[index]
        let mac = MACAddress.format(nic.mac).uppercased()
        let name = configuration.name
        if request.action == "get-ip" {
            let outcome: Result<KVPIPInfo, KVPEnumerationError>?? = waitForReply(timeoutMs: 35_000) { reply in
                guard provider.isConnected else { return reply(nil) }
                do throws(UTF16FieldError) { try provider.getIP(adapterID: mac) { reply($0) } } catch { reply(.failure(.malformed)) }
            }
            switch outcome {
            case .success(let info)??:
                return ControlReply(ok: true, ip: ControlIPInfo(dhcp: info.dhcp, addresses: info.addresses, subnets: info.subnets,
                                                                gateways: info.gateways, dns: info.dns))
            case .failure(.status(let status))??:
                return ControlReply(ok: false, error: "the guest could not report \(mac) (\(hex(status)))", guestStatus: hex(status))
            case .failure(.malformed)??: return .failure("the guest's answer was malformed")
            default: return .failure("the guest of \(name) did not answer (is an agent running with the KVP service?)")
            }
        }
        guard let ip = request.ip else { return .failure("kvp set-ip needs addresses (or --dhcp)") }
        // SET_IP_INFO names the adapter by its VMBus instance id, as Hyper-V does.
        let info = KVPIPInfo(adapterID: "{\(nic.instanceID)}", family: ip.addresses.contains { $0.contains(":") } ? (ip.addresses.contains { !$0.contains(":") } ? 3 : 2) : 1,
                             dhcp: ip.dhcp, addresses: ip.addresses, subnets: ip.subnets, gateways: ip.gateways, dns: ip.dns)
        let outcome: Result<UInt32?, UTF16FieldError>? = waitForReply(timeoutMs: 95_000) { reply in
            guard provider.isConnected else { return reply(.success(nil)) }
            do throws(UTF16FieldError) { try provider.setIP(info) { reply(.success($0)) } } catch { reply(.failure(error)) }
        }
        switch outcome {
        case .failure(let error)?: return .failure("\(error)")
        case .success(let status?)?:
            if status == ICStatus.ok { return ControlReply(ok: true, guestStatus: hex(status)) }
            let why = status == ICStatus.invalidArgument ? "the guest refused the configuration (it says why in its log)"
                : status == ICStatus.guidNotFound ? "the guest has no adapter \(mac)" : "the guest could not apply it"
            return ControlReply(ok: false, error: "\(why) (\(hex(status)))", guestStatus: hex(status))
        default: return .failure("the guest of \(name) did not answer (is an agent running with the KVP service?)")
        }
    }
}

/// What the control thread and the partition thread share during one copy.
final class CopyState: @unchecked Sendable {
    let sent = Atomic<UInt64>(0)
    let cancelled = Atomic<Bool>(false)
    private let box = Mutex<FCopyResult?>(nil)
    func finish(_ r: FCopyResult) { box.withLock { $0 = r } }
    var result: FCopyResult? { box.withLock { $0 } }
}
