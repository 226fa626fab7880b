// A deleted host TAP made usable again: the host waits for the interface to return and reopens it.

import CSystem
import Foundation
import Glibc
import SyntheticNetwork

/// Reopens a synthetic NIC's TAP once an interface of its name exists again (an administrator, or
/// whatever made it, recreated it). Run by the supervisor for a confined worker, which may open no
/// device, and by the partition itself with isolation = "none".
enum TapRecovery {
    /// One descriptor per queue of TAP `nic`, brought up with its MTU, or nil while no interface
    /// of that name exists (or it cannot be opened as configured: logged by the caller).
    static func reopen(_ nic: NICConfiguration, queues: Int) -> [Int32]? {
        var mac = [UInt8](repeating: 0, count: 6)
        var mtu: Int32 = 0
        var flags: UInt32 = 0
        guard (try? inNetworkNamespace(nic.netns, { viridian_netif_query(nic.tap, &mac, &mtu, &flags) })) == 0 else { return nil }
        do {
            let taps = try (0..<max(queues, 1)).map { _ in try TapDevice(name: nic.tap, namespace: nic.netns, multiQueue: queues > 1) }
            try taps[0].configure(mtu: nic.mtu, up: true)
            // The devices close theirs when they go: the caller gets copies.
            return taps.map { dup($0.descriptor) }.filter { $0 >= 0 }
        } catch {
            return nil
        }
    }
}
