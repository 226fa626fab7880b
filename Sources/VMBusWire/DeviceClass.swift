// The device class GUIDs a VMBus offer carries in if_type, with the names Hyper-V tools show.

/// A VMBus device class: the interface type GUID in an offer and its human name.
public struct DeviceClass: Hashable, Sendable {
    public let guid: GUID
    /// The name lsvmbus and Hyper-V Manager show for it.
    public let name: String

    public init(guid: GUID, name: String) {
        self.guid = guid
        self.name = name
    }

    public static let network = DeviceClass(guid: GUID(constant: "f8615163-df3e-46c5-913f-f2d2f965ed0e"), name: "Synthetic network adapter")
    public static let ide = DeviceClass(guid: GUID(constant: "32412632-86cb-44a2-9b5c-50d1417354f5"), name: "Synthetic IDE Controller")
    public static let scsi = DeviceClass(guid: GUID(constant: "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"), name: "Synthetic SCSI Controller")
    public static let fibreChannel = DeviceClass(guid: GUID(constant: "2f9bcc4a-0069-4af3-b76b-6fd0be528cda"), name: "Synthetic fiber channel adapter")
    public static let networkDirect = DeviceClass(guid: GUID(constant: "8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501"), name: "Network Direct")
    public static let pcie = DeviceClass(guid: GUID(constant: "44c4f61d-4444-4400-9d52-802e27ede19f"), name: "PCI Express pass-through")
    public static let video = DeviceClass(guid: GUID(constant: "da0a7802-e377-4aac-8e77-0558eb1073f8"), name: "Synthetic framebuffer adapter")
    public static let keyboard = DeviceClass(guid: GUID(constant: "f912ad6d-2b17-48ea-bd65-f927a61c7684"), name: "Synthetic keyboard")
    public static let mouse = DeviceClass(guid: GUID(constant: "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a"), name: "Synthetic mouse")
    public static let kvp = DeviceClass(guid: GUID(constant: "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6"), name: "Data Exchange")
    public static let timeSync = DeviceClass(guid: GUID(constant: "9527e630-d0ae-497b-adce-e80ab0175caf"), name: "Time Synchronization")
    public static let heartbeat = DeviceClass(guid: GUID(constant: "57164f39-9115-4e78-ab55-382f3bd5422d"), name: "Heartbeat")
    public static let shutdown = DeviceClass(guid: GUID(constant: "0e0b6031-5213-4934-818b-38d90ced39db"), name: "Operating system shutdown")
    public static let fileCopy = DeviceClass(guid: GUID(constant: "34d14be3-dee4-41c8-9ae7-6b174977c192"), name: "Guest services")
    public static let vss = DeviceClass(guid: GUID(constant: "35fa2e29-ea23-4236-96ae-3a6ebacba440"), name: "VSS (Backup/Restore)")
    public static let dynamicMemory = DeviceClass(guid: GUID(constant: "525074dc-8985-46e2-8057-a307dc18a502"), name: "Dynamic Memory")
    public static let avma1 = DeviceClass(guid: GUID(constant: "f8e65716-3cb3-4a06-9a60-1889c5cccab5"), name: "Automatic Virtual Machine Activation")
    public static let avma2 = DeviceClass(guid: GUID(constant: "3375baf4-9e15-4b30-b765-67acb10d607b"), name: "Automatic Virtual Machine Activation (2)")
    public static let remoteDesktop = DeviceClass(guid: GUID(constant: "276aacf4-ac15-426c-98dd-7521ad3f01fe"), name: "Remote Desktop Virtualization")
    public static let initialMachineConfiguration = DeviceClass(guid: GUID(constant: "c376c1c3-d276-48d2-90a9-c04748072c60"), name: "Initial Machine Configuration")
    /// Viridian's own test device: every packet sent to it comes back as a completion.
    public static let viridianEcho = DeviceClass(guid: GUID(constant: "5649524d-4543-484f-8000-766972696469"), name: "Viridian Echo")

    /// Every class this project knows, in the order of the Linux header.
    public static let known: [DeviceClass] = [
        .network, .ide, .scsi, .fibreChannel, .networkDirect, .pcie, .video, .keyboard, .mouse, .kvp,
        .timeSync, .heartbeat, .shutdown, .fileCopy, .vss, .dynamicMemory, .avma1, .avma2, .remoteDesktop,
        .initialMachineConfiguration, .viridianEcho,
    ]

    /// The class with this GUID, or an "Unknown" class that still carries it.
    public static func named(_ guid: GUID) -> DeviceClass {
        known.first { $0.guid == guid } ?? DeviceClass(guid: guid, name: "Unknown")
    }
}
