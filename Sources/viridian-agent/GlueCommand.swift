// `viridian-agent glue`: what the KernelGlue device and the host's shared header say, without joining.

import ArgumentParser
import Foundation
import KernelGlueLink
import PartitionLink

struct GlueCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "glue",
        abstract: "Inspect the KernelGlue device of a QEMU guest (diagnostics; does not join).",
        discussion: """
            info: the device, its MSI-X vectors and the host's header (partition, VPs, who is joined). \
            ring VECTOR: rings one of the host's doorbell vectors without joining, to check that the host \
            refuses exits before the ready handshake. Both fail while a running agent holds the device.
            """)

    @Argument(help: "info or ring") var action: String = "info"
    @Argument(help: "The host vector to ring (ring only).") var vector: Int?
    @Option(help: "Device node (default: the first /dev/viridian-glue* udev knows).") var device: String?

    func validate() throws {
        guard action == "info" || action == "ring" else { throw ValidationError("action must be info or ring") }
        if action == "ring" {
            guard let vector, (0..<GlueSharedHeader.maximumVectors).contains(vector) else {
                throw ValidationError("ring needs a VECTOR of 0…\(GlueSharedHeader.maximumVectors - 1)")
            }
        }
    }

    func run() throws {
        guard let node = device ?? GlueDiscovery.devices().first?.node else {
            throw ValidationError(GlueDiscovery.moduleLoaded ? GlueError.noDevice.description : GlueError.moduleNotLoaded.description)
        }
        let glue = try GlueDevice(node: node)
        let info = try glue.info()
        let header = GlueSharedHeader(try glue.mapShared(bytes: Int(info.shared_size)))
        if action == "ring", let vector {
            glue.ring(peer: header.hostPeer, vector: vector)
            print("rang host vector \(vector) on \(node)")
            return
        }
        print("\(node): KernelGlue ABI \(info.abi_version), peer \(info.peer_id), \(info.vectors) MSI-X vectors, \(info.shared_size) bytes shared")
        guard header.magic == GlueSharedHeader.magic else {
            print("no Viridian host header in the shared region")
            return
        }
        print("partition \(header.name) (id \(header.partitionID)): \(header.vpCount) VPs, \(header.memoryBytes >> 20) MiB, host "
              + (header.hostState == 1 ? "serving" : "absent") + ", guest state \(header.guestState), generation \(header.guestGeneration), "
              + "host joined \(header.hostJoined), released \(header.hostReleased)")
    }
}
