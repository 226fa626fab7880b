// Targets "link-frame", "link-socket" and "glue-header": PartitionLink's frames as bytes and as
// SOCK_SEQPACKET messages with descriptors attached, and the KernelGlue shared header's fields.

import CSystem
import Glibc
import PartitionLink
import VMBusWire

let linkFrameTarget = FuzzTarget(
    name: "link-frame",
    summary: "LinkFrame(decoding:) for every frame type; what decodes re-encodes to the same frame"
) { data in
    LinkFuzz.frame([UInt8](data))
}

let linkSocketTarget = FuzzTarget(
    name: "link-socket",
    summary: "LinkSocket.receive of one SOCK_SEQPACKET message (the input) with 0-3 descriptors attached"
) { data in
    LinkFuzz.socket([UInt8](data))
}

let glueHeaderTarget = FuzzTarget(
    name: "glue-header",
    summary: "GlueSharedHeader field reads (magic, versions, states, name, signal slots) over a region the other side wrote"
) { data in
    LinkFuzz.glue([UInt8](data))
}

/// A connected SOCK_SEQPACKET pair made once: the harness writes one end, a LinkSocket reads the other.
final class FuzzSocketPair: @unchecked Sendable {
    let writer: Int32
    let reader: LinkSocket

    init() {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0 else {
            fatalError("viridian-fuzz: socketpair failed (errno \(errno))")
        }
        writer = fds[0]
        reader = LinkSocket(adopting: fds[1])
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fds[1], SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }
}

enum LinkFuzz {
    static let pair = FuzzSocketPair()
    static let glueRegion = FuzzPages(bytes: 4096)

    static func frame(_ bytes: [UInt8]) {
        frameBytes(bytes)
        // The same body behind a valid header of each type, so every body decoder is reached.
        guard let first = bytes.first else { return }
        let body = Array(bytes.dropFirst())
        var framed = [UInt8](repeating: 0, count: LinkFrame.headerSize)
        framed.putLE(LinkFrame.magic, at: 0)
        framed.putLE(LinkFrame.version, at: 4)
        framed.putLE(UInt16(first % 9), at: 6)
        framed.putLE(UInt32(body.count), at: 8)
        frameBytes(framed + body)
    }

    static func frameBytes(_ bytes: [UInt8]) {
        let decoded: LinkFrame
        do { decoded = try LinkFrame(decoding: bytes) } catch {
            fuzzConsume("\(error)")
            return
        }
        let again = decoded.encode()
        fuzzCheck(again.count <= LinkFrame.maximumSize, "a frame encoded to \(again.count) bytes")
        switch decoded {
        case .refuse(let code, let reason):
            // The reason is text (repaired, cut at 1024 bytes): the code survives.
            if case .refuse(let c, _)? = try? LinkFrame(decoding: again) {
                fuzzCheck(c == code, "refusal code does not survive")
            } else {
                fuzzCheck(false, "a refusal does not survive encode and decode")
            }
            fuzzConsume(reason)
        case .welcome(let w):
            fuzzCheck(w.descriptorCount == 2 + 3 * Int(w.vpCount), "descriptor count")
            fuzzCheck((try? LinkFrame(decoding: again)) == decoded, "welcome does not survive encode and decode")
        default:
            fuzzCheck((try? LinkFrame(decoding: again)) == decoded, "\(decoded) does not survive encode and decode")
        }
    }

    static func socket(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        // Descriptors the peer attaches: copies of its own socket (the receiver closes what it gets).
        var fds: [Int32] = []
        for _ in 0..<Int(first % 4) {
            let fd = dup(pair.writer)
            if fd >= 0 { fds.append(fd) }
        }
        let message = Array(bytes.dropFirst().prefix(65536))
        let sent = message.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in viridian_send_with_fds_nowait(pair.writer, b.baseAddress, b.count, f.baseAddress, Int32(f.count)) }
        }
        for fd in fds where fd >= 0 { close(fd) }
        guard sent >= 0 else { return }
        do {
            let (frame, received) = try pair.reader.receive()
            fuzzCheck(received.count <= 64, "\(received.count) descriptors received")
            for fd in received { close(fd) }
            fuzzCheck((try? LinkFrame(decoding: message)) == frame, "the socket and the byte decoder disagree")
        } catch {
            fuzzConsume("\(error)")
        }
    }

    static func glue(_ bytes: [UInt8]) {
        let size = min(GlueSharedHeader.size, glueRegion.count)
        glueRegion.zero()
        let n = min(bytes.count, size)
        if n > 0 { bytes.withUnsafeBytes { glueRegion.base.copyMemory(from: $0.baseAddress!, byteCount: n) } }
        let header = GlueSharedHeader(glueRegion.base)
        fuzzConsume(header.magic ^ header.memoryBytes ^ header.partitionID)
        fuzzConsume(UInt64(header.abiVersion) ^ UInt64(header.vpCount) ^ UInt64(header.hostPeer) ^ UInt64(header.vectors))
        fuzzConsume(UInt64(header.hostState) ^ UInt64(header.guestState) ^ UInt64(header.guestGeneration))
        fuzzConsume(UInt64(header.hostJoined) ^ UInt64(header.hostReleased))
        let name = header.name
        fuzzCheck(name.utf8.count <= 31 * 3, "a name of \(name.utf8.count) bytes from a 31-byte field")
        for slot in -1...(GlueSharedHeader.signalSlots) { fuzzConsume(UInt64(header.signalSlot(slot))) }
        // The guest's claims used as the host uses them: vectors for the VP count it wrote.
        let vps = Int(header.vpCount % 64)
        fuzzCheck(GlueSharedHeader.Vector.signalSlots(vps: vps) >= 0, "negative signal slot count")
        fuzzConsume(UInt64(GlueSharedHeader.Vector.signal(slot: 0, vps: vps) + GlueSharedHeader.Vector.completion(vp: 0, vps: vps)))
        // And written back, as the host does when it joins.
        header.name = name
        if name.utf8.count <= 31 { fuzzCheck(header.name == name, "the name does not survive") }
        header.setSignalSlot(Int(header.vectors % 64), header.hostPeer)
    }
}
