// The fuzz targets this executable knows: a name, what it drives, and the function that takes one input.

/// One libFuzzer target: `run` takes one input and must return without trapping on any bytes.
struct FuzzTarget: Sendable {
    let name: String
    let summary: String
    let run: @Sendable (UnsafeRawBufferPointer) -> Void
}

/// Every target, in the order `viridian-fuzz list` prints them.
enum FuzzTargets {
    static let all: [FuzzTarget] = [
        // VMBus wire formats and rings.
        channelMessageTarget,
        wireBlocksTarget,
        ringReaderTarget,
        ringWriterTarget,
        gpadlTarget,
        // The hypervisor, the VMBus server and the guest's VMBus client.
        hypercallTarget,
        vmbusServerTarget,
        vmbusClientTarget,
        // Synthetic storage.
        vstorWireTarget,
        scsiDiskTarget,
        storageVSPTarget,
        // Synthetic network.
        nvspRNDISTarget,
        offloadTarget,
        networkVSPTarget,
        // Integration services.
        icWireTarget,
        icHostTarget,
        icGuestTarget,
        // PartitionLink and KernelGlue.
        linkFrameTarget,
        linkSocketTarget,
        glueHeaderTarget,
        // NBD.
        nbdTarget,
        nbdPipelinedTarget,
        // The host's control socket and configuration.
        controlRequestTarget,
        hostConfigurationTarget,
        // Emulated devices and their guest drivers.
        emulatedPortsTarget,
        emulatedDriversTarget,
    ]

    /// The target called `name`, if there is one.
    static func named(_ name: String) -> FuzzTarget? {
        all.first { $0.name == name }
    }

    /// One line per target: name and summary.
    static var listing: String {
        let width = all.map(\.name.count).max() ?? 0
        return all.map { t in t.name + String(repeating: " ", count: width - t.name.count + 2) + t.summary }
            .joined(separator: "\n")
    }
}
