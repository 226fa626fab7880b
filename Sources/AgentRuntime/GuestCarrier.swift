// Picks the agent's carrier from its `link` setting: PartitionLink socket or KernelGlue device.

import KernelGlueLink
import Logging
import PartitionLink

/// How the agent reaches its partition.
public enum GuestCarrier {
    /// Joins through `link`: `unix:PATH` (PartitionLink), `kernelglue` (the first KernelGlue
    /// device, found with libudev) or a device path such as /dev/viridian-glue0.
    public static func join(_ link: String, poolMiB: Int, logger: Logger) throws -> any GuestPlatform {
        if link.hasPrefix("unix:") { return try GuestLink.attach(to: link) }
        if link == "kernelglue" { return try GlueLink.attach(node: nil, poolBytes: poolMiB << 20, logger: logger) }
        if link.hasPrefix("/") { return try GlueLink.attach(node: link, poolBytes: poolMiB << 20, logger: logger) }
        throw AgentError.configuration("link must be unix:PATH, kernelglue or a /dev/viridian-glue* path, not '\(link)'")
    }
}
