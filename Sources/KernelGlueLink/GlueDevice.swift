// The KernelGlue character device: open, the ioctls of its uapi header, and its two kinds of mapping.

import CSystem
import Glibc
import PartitionLink

/// One open /dev/viridian-glueN. It owns the descriptor and every mapping made through it; when it
/// goes (all mappings unmapped, the descriptor closed) the module tells the host the agent left
/// and frees the pages once the host has released them.
public final class GlueDevice: @unchecked Sendable {
    public let fd: Int32
    private var mappings: [(UnsafeMutableRawPointer, Int)] = []
    /// Upper bound on one pool (the module caps it too).
    static let maximumPoolPages = 65536

    public init(node: String) throws(GlueError) {
        let fd = viridian_open(node, O_RDWR, 0)
        guard fd >= 0 else {
            switch errno {
            case EBUSY: throw .busy(node)
            case ENOENT, ENXIO, ENODEV: throw GlueDiscovery.moduleLoaded ? .noDevice : .moduleNotLoaded
            default: throw .system(call: "open(\(node))", errno: errno)
            }
        }
        self.fd = fd
    }

    deinit {
        for (p, n) in mappings { munmap(p, n) }
        close(fd)
    }

    public func info() throws(GlueError) -> vglue_info {
        var info = vglue_info()
        guard viridian_glue_ioctl(fd, viridian_glue_ioc_info(), &info) == 0 else { throw .system(call: "VGLUE_IOC_INFO", errno: errno) }
        return info
    }

    /// Maps the shared region (offset 0).
    public func mapShared(bytes: Int) throws(GlueError) -> UnsafeMutableRawPointer {
        guard let p = viridian_mmap_shared(bytes, fd, 0) else { throw .system(call: "mmap(shared region)", errno: errno) }
        mappings.append((p, bytes))
        return p
    }

    /// Allocates `pages` pinned pages, maps them and reads back their guest page numbers.
    func allocate(pages: Int) throws(GlueError) -> (UnsafeMutableRawPointer, [UInt64]) {
        guard pages > 0, pages <= Self.maximumPoolPages else { throw .malformed("a pool of \(pages) pages") }
        var request = vglue_alloc(size: UInt64(pages) * 4096, offset: 0)
        guard viridian_glue_ioctl(fd, viridian_glue_ioc_alloc(), &request) == 0 else {
            throw .system(call: "VGLUE_IOC_ALLOC(\(pages) pages)", errno: errno)
        }
        guard let p = viridian_mmap_shared(pages * 4096, fd, Int64(bitPattern: request.offset)) else {
            throw .system(call: "mmap(pool)", errno: errno)
        }
        mappings.append((p, pages * 4096))
        var pfns = [UInt64](repeating: 0, count: pages)
        let ok = pfns.withUnsafeMutableBufferPointer { buffer in
            var query = vglue_pfns(offset: request.offset, first: 0, count: UInt64(pages),
                                   pfns: UInt64(UInt(bitPattern: buffer.baseAddress)))
            return viridian_glue_ioctl(fd, viridian_glue_ioc_pfns(), &query) == 0
        }
        guard ok else { throw .system(call: "VGLUE_IOC_PFNS", errno: errno) }
        return (p, pfns)
    }

    /// Forwards MSI-X `vector` to `eventfd`.
    func register(_ eventfd: EventFD, vector: Int) throws(GlueError) {
        var request = vglue_eventfd(vector: UInt32(vector), fd: eventfd.fd)
        guard viridian_glue_ioctl(fd, viridian_glue_ioc_set_eventfd(), &request) == 0 else {
            throw .system(call: "VGLUE_IOC_SET_EVENTFD(\(vector))", errno: errno)
        }
    }

    /// Rings `vector` of ivshmem peer `peer`.
    @inline(__always)
    public func ring(peer: UInt32, vector: Int) {
        var request = vglue_ring(peer: peer, vector: UInt32(vector))
        _ = viridian_glue_ioctl(fd, viridian_glue_ioc_ring(), &request)
    }

    func join() throws(GlueError) {
        guard viridian_glue_ioctl(fd, viridian_glue_ioc_join(), nil) == 0 else { throw .system(call: "VGLUE_IOC_JOIN", errno: errno) }
    }
}
