// The KernelGlue shared region's header (ivshmem BAR2 offset 0), read and written across the host/guest boundary.

import Atomics
import CSystem

/// A view of `struct vglue_shared_header` (KernelGlue's uapi header is the layout's one source).
/// The host and the guest both write it while the other runs, so every field is accessed
/// atomically; every value read is the other side's claim and is checked before use.
public struct GlueSharedHeader: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public static let size = MemoryLayout<vglue_shared_header>.size
    public static let magic: UInt64 = VGLUE_SHM_MAGIC
    public static let abiVersion = UInt32(VGLUE_ABI_VERSION)
    public static let vpBlocksOffset = Int(VGLUE_VP_BLOCKS)
    public static let signalSlots = Int(VGLUE_SIGNAL_SLOTS)
    public static let maximumVectors = Int(VGLUE_MAX_VECTORS)

    public init(_ base: UnsafeMutableRawPointer) { self.base = base }

    @inline(__always)
    private func u32(_ offset: Int) -> UnsafeAtomic<UInt32> {
        // Every offset below comes from MemoryLayout of the C struct, 4-byte aligned within the region.
        UnsafeAtomic<UInt32>(at: (base + offset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }
    @inline(__always)
    private func u64(_ offset: Int) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic<UInt64>(at: (base + offset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
    private static func offset(_ key: PartialKeyPath<vglue_shared_header>) -> Int { MemoryLayout<vglue_shared_header>.offset(of: key)! }

    public var magic: UInt64 {
        get { u64(Self.offset(\.magic)).load(ordering: .acquiring) }
        nonmutating set { u64(Self.offset(\.magic)).store(newValue, ordering: .releasing) }
    }
    public var abiVersion: UInt32 { get { load(\.abi_version) } nonmutating set { store(\.abi_version, newValue) } }
    public var vpCount: UInt32 { get { load(\.vp_count) } nonmutating set { store(\.vp_count, newValue) } }
    public var hostPeer: UInt32 { get { load(\.host_peer) } nonmutating set { store(\.host_peer, newValue) } }
    public var vectors: UInt32 { get { load(\.vectors) } nonmutating set { store(\.vectors, newValue) } }
    public var hostState: UInt32 { get { load(\.host_state) } nonmutating set { store(\.host_state, newValue) } }
    public var guestState: UInt32 { get { load(\.guest_state) } nonmutating set { store(\.guest_state, newValue) } }
    public var guestGeneration: UInt32 { get { load(\.guest_generation) } nonmutating set { store(\.guest_generation, newValue) } }
    public var hostJoined: UInt32 { get { load(\.host_joined) } nonmutating set { store(\.host_joined, newValue) } }
    public var hostReleased: UInt32 { get { load(\.host_released) } nonmutating set { store(\.host_released, newValue) } }
    public var memoryBytes: UInt64 {
        get { u64(Self.offset(\.memory_bytes)).load(ordering: .acquiring) }
        nonmutating set { u64(Self.offset(\.memory_bytes)).store(newValue, ordering: .releasing) }
    }
    public var partitionID: UInt64 {
        get { u64(Self.offset(\.partition_id)).load(ordering: .acquiring) }
        nonmutating set { u64(Self.offset(\.partition_id)).store(newValue, ordering: .releasing) }
    }

    /// The partition name (NUL-padded, at most 31 bytes kept).
    public var name: String {
        get {
            let p = (base + Self.offset(\.name)).assumingMemoryBound(to: UInt8.self)
            let bytes = (0..<31).map { p[$0] }.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
        nonmutating set {
            let p = (base + Self.offset(\.name)).assumingMemoryBound(to: UInt8.self)
            let bytes = Array(newValue.utf8.prefix(31))
            for i in 0..<32 { p[i] = i < bytes.count ? bytes[i] : 0 }
        }
    }

    /// The connection id behind host signal slot `slot` (0 = unused).
    public func signalSlot(_ slot: Int) -> UInt32 {
        guard slot >= 0, slot < Self.signalSlots else { return 0 }
        return u32(Self.offset(\.signal_slots) + 4 * slot).load(ordering: .acquiring)
    }

    public func setSignalSlot(_ slot: Int, _ connection: UInt32) {
        guard slot >= 0, slot < Self.signalSlots else { return }
        u32(Self.offset(\.signal_slots) + 4 * slot).store(connection, ordering: .releasing)
    }

    private func load(_ key: KeyPath<vglue_shared_header, UInt32>) -> UInt32 { u32(Self.offset(key)).load(ordering: .acquiring) }
    private func store(_ key: KeyPath<vglue_shared_header, UInt32>, _ value: UInt32) { u32(Self.offset(key)).store(value, ordering: .releasing) }

    /// Vector numbers, the same on both ends: guest → host (doorbells the host reads) and host →
    /// guest (MSI-X vectors the guest's eventfds are registered on).
    public enum Vector {
        public static let control = Int(VGLUE_VECTOR_CONTROL)
        /// Guest → host: VP `vp` trapped (its register block holds the exit).
        public static func exit(vp: Int) -> Int { 1 + vp }
        /// How many signal slots a partition of `vps` VPs has: the header's table, as far as the
        /// vectors left after control and the exits reach.
        public static func signalSlots(vps: Int) -> Int { max(0, min(GlueSharedHeader.signalSlots, GlueSharedHeader.maximumVectors - 1 - vps)) }
        /// Guest → host: a fast HvSignalEvent on the connection in signal slot `slot`.
        public static func signal(slot: Int, vps: Int) -> Int { 1 + vps + slot }
        /// Host → guest: VP `vp`'s SINT interrupt.
        public static func interrupt(vp: Int) -> Int { 1 + vp }
        /// Host → guest: VP `vp`'s exit is complete.
        public static func completion(vp: Int, vps: Int) -> Int { 1 + vps + vp }
    }
}
