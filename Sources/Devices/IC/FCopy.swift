// Guest file copy (FCOPY), host end: START_FILE_COPY, WRITE_TO_FILE fragments and COMPLETE_FCOPY,
// one transaction at a time, as Hyper-V's Copy-VMFile sends them.

import Glibc
import Logging
import VMBusWire

/// How a copy ended.
public enum FCopyResult: Equatable, Sendable {
    case copied(UInt64)
    /// The guest answered `status` to the named step.
    case refused(step: String, status: UInt32)
    case noAnswer
    case cancelled
    case readFailed(Int32)
    case badRequest(String)
}

/// Host end (framework 3.0, service 1.1).
public final class FCopyProvider: ICProvider {
    public init(instanceID: GUID, logger: Logger, now: @escaping () -> UInt64) {
        super.init(deviceClass: .fileCopy, instanceID: instanceID, serviceType: .fileCopy, serviceVersions: [ICVersion(1, 1)], logger: logger, now: now)
    }

    /// Copies `size` bytes of the open file `fd` to `destination` (absolute) in the guest.
    /// `progress` gets the bytes the guest has acknowledged; `cancelled` is asked before every
    /// fragment (true: CANCEL_FCOPY goes out and the guest removes what it wrote). Runs on the
    /// partition thread; `fd` must stay open until `completion`.
    public func copy(fd: Int32, size: UInt64, destination: String, flags: FCopyFlags, mode: UInt32?,
                     progress: @escaping (UInt64) -> Void, cancelled: @escaping () -> Bool,
                     completion: @escaping (FCopyResult) -> Void) {
        let slash = destination.lastIndex(of: "/")
        guard destination.hasPrefix("/"), let slash, destination.index(after: slash) < destination.endIndex else {
            return completion(.badRequest("the destination must be an absolute path to a file"))
        }
        let directory = slash == destination.startIndex ? "/" : String(destination[..<slash])
        let start = FCopyStart(fileName: String(destination[destination.index(after: slash)...]), pathName: directory,
                               flags: flags, fileSize: size, mode: mode)
        let body: [UInt8]
        do { body = try start.encoded() } catch { return completion(.badRequest("\(error)")) }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: FCopyLayout.fragment, alignment: 8)
        func finish(_ result: FCopyResult) {
            chunk.deallocate()
            completion(result)
        }
        func ask(_ step: String, _ body: [UInt8], then: @escaping () -> Void) {
            request(.fileCopy, body: body) { outcome in
                guard case .answered(let header, _) = outcome else { return finish(.noAnswer) }
                guard header.status == ICStatus.ok else { return finish(.refused(step: step, status: header.status)) }
                then()
            }
        }
        func send(from offset: UInt64) {
            if cancelled() {
                request(.fileCopy, body: FCopyFragment.bare(.cancel)) { _ in finish(.cancelled) }
                return
            }
            guard offset < size else {
                return ask("COMPLETE_FCOPY", FCopyFragment.bare(.complete)) { finish(.copied(size)) }
            }
            let want = Int(min(UInt64(FCopyLayout.fragment), size - offset))
            let n = pread(fd, chunk.baseAddress, want, off_t(offset))
            guard n == want else {
                let e = n < 0 ? errno : EIO
                request(.fileCopy, body: FCopyFragment.bare(.cancel)) { _ in finish(.readFailed(e)) }
                return
            }
            let fragment = FCopyFragment.body(offset: offset, data: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
            ask("WRITE_TO_FILE at \(offset)", fragment) {
                progress(offset + UInt64(n))
                send(from: offset + UInt64(n))
            }
        }
        ask("START_FILE_COPY", body) { send(from: 0) }
    }
}
