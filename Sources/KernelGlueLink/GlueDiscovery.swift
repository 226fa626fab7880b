// Finding KernelGlue devices with libudev: enumerate them, and watch for them to appear and go.

import CUdev
import Glibc

/// A KernelGlue character device as udev reports it.
public struct GlueDeviceInfo: Sendable, Equatable {
    /// The device node, /dev/viridian-glueN.
    public var node: String
    /// The kernel's name, viridian-glueN.
    public var name: String
    /// The PCI function it drives (sysfs name, e.g. 0000:00:04.0), when udev knows it.
    public var pciSlot: String?
}

/// libudev enumeration and monitoring of the `misc` devices KernelGlue creates.
public enum GlueDiscovery {
    static let subsystem = "misc"
    static let prefix = "viridian-glue"

    /// Every KernelGlue device present now, by name.
    public static func devices() -> [GlueDeviceInfo] {
        guard let udev = udev_new() else { return [] }
        defer { udev_unref(udev) }
        guard let e = udev_enumerate_new(udev) else { return [] }
        defer { udev_enumerate_unref(e) }
        udev_enumerate_add_match_subsystem(e, subsystem)
        udev_enumerate_add_match_sysname(e, prefix + "*")
        udev_enumerate_scan_devices(e)
        var found: [GlueDeviceInfo] = []
        var entry = udev_enumerate_get_list_entry(e)
        while let current = entry {
            if let path = udev_list_entry_get_name(current), let device = udev_device_new_from_syspath(udev, path) {
                if let info = describe(device) { found.append(info) }
                udev_device_unref(device)
            }
            entry = udev_list_entry_get_next(current)
        }
        return found.sorted { $0.name < $1.name }
    }

    /// Whether the module is loaded at all (so an error can say which step is missing).
    public static var moduleLoaded: Bool { access("/sys/module/viridian_glue", F_OK) == 0 }

    /// Waits up to `timeoutMs` for a KernelGlue device to be present (udev "add" events), and returns it.
    public static func waitForDevice(timeoutMs: Int) -> GlueDeviceInfo? {
        if let first = devices().first { return first }
        guard let udev = udev_new() else { return nil }
        defer { udev_unref(udev) }
        guard let monitor = udev_monitor_new_from_netlink(udev, "udev") else { return nil }
        defer { udev_monitor_unref(monitor) }
        udev_monitor_filter_add_match_subsystem_devtype(monitor, subsystem, nil)
        udev_monitor_enable_receiving(monitor)
        // The device may have appeared between the enumeration and the monitor starting.
        if let first = devices().first { return first }
        var fd = pollfd(fd: udev_monitor_get_fd(monitor), events: Int16(POLLIN), revents: 0)
        var remaining = timeoutMs
        while remaining > 0 {
            let step = min(remaining, 500)
            if poll(&fd, 1, Int32(step)) > 0, let device = udev_monitor_receive_device(monitor) {
                let info = describe(device)
                let action = udev_device_get_action(device).map { String(cString: $0) }
                udev_device_unref(device)
                if action == "add", let info { return info }
            }
            remaining -= step
            if let first = devices().first { return first }
        }
        return nil
    }

    private static func describe(_ device: OpaquePointer) -> GlueDeviceInfo? {
        guard let sysname = udev_device_get_sysname(device).map({ String(cString: $0) }), sysname.hasPrefix(prefix) else { return nil }
        let node = udev_device_get_devnode(device).map { String(cString: $0) } ?? "/dev/\(sysname)"
        let pci = udev_device_get_parent_with_subsystem_devtype(device, "pci", nil)
            .flatMap { udev_device_get_sysname($0) }.map { String(cString: $0) }
        return GlueDeviceInfo(node: node, name: sysname, pciSlot: pci)
    }
}
