// swift-tools-version: 6.1
// Viridian: Hyper-V style enlightened I/O for Linux guests, host and guest in one package.
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Viridian",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "viridian-host", targets: ["viridian-host"]),
        .executable(name: "viridian-bench", targets: ["viridian-bench"]),
        .executable(name: "viridian-agent", targets: ["viridian-agent"]),
        .library(name: "VMBusWire", targets: ["VMBusWire"]),
        .library(name: "VMBusRing", targets: ["VMBusRing"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        .target(name: "CSystem", path: "Sources/CSystem"),
        // The partition worker's start and confinement (clone3, capabilities, seccomp): host only.
        .target(name: "CSandbox", path: "Sources/CSandbox", linkerSettings: [.linkedLibrary("seccomp")]),
        .target(name: "VMBusWire", swiftSettings: strict),
        .target(name: "TOMLSafety", swiftSettings: strict),
        .target(
            name: "VMBusRing",
            dependencies: ["VMBusWire", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strict),
        .target(name: "VMBusChannel", dependencies: ["VMBusWire", "VMBusRing"], swiftSettings: strict),
        .target(
            name: "GuestMemory",
            dependencies: ["CSystem", "VMBusWire"],
            swiftSettings: strict),
        .target(
            name: "Hypervisor",
            dependencies: [
                "VMBusWire", "VMBusRing", "VMBusChannel", "GuestMemory",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "VMBusClient",
            dependencies: [
                "VMBusWire", "VMBusRing", "VMBusChannel", "GuestMemory",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "EchoDevice",
            dependencies: ["VMBusWire", "VMBusRing", "VMBusChannel", "Hypervisor", "VMBusClient"],
            path: "Sources/Devices/Echo",
            swiftSettings: strict),
        .target(
            name: "IntegrationServices",
            dependencies: [
                "CSystem", "VMBusWire", "VMBusRing", "VMBusChannel", "Hypervisor", "VMBusClient",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Devices/IC",
            swiftSettings: strict),
        .target(
            name: "SyntheticStorage",
            dependencies: [
                "CSystem", "VMBusWire", "VMBusRing", "VMBusChannel", "Hypervisor", "VMBusClient", "GuestMemory",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Devices/Storage",
            swiftSettings: strict),
        .target(
            name: "SyntheticNetwork",
            dependencies: [
                "CSystem", "VMBusWire", "VMBusRing", "VMBusChannel", "Hypervisor", "VMBusClient", "GuestMemory",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Devices/Network",
            swiftSettings: strict),
        .target(
            name: "EmulatedDevices",
            dependencies: [
                "CSystem", "VMBusWire", "GuestMemory", "SyntheticStorage", "SyntheticNetwork",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Devices/Emulated",
            swiftSettings: strict),
        .target(
            name: "NBD",
            dependencies: ["VMBusWire", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "Loopback",
            dependencies: ["VMBusWire", "GuestMemory", "Hypervisor", "VMBusClient", "EchoDevice"],
            swiftSettings: strict),
        .target(
            name: "PartitionLink",
            dependencies: [
                "CSystem", "VMBusWire", "GuestMemory", "VMBusClient", "Hypervisor", .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "QEMUCarrier",
            dependencies: [
                "CSystem", "VMBusWire", "GuestMemory", "Hypervisor", "PartitionLink", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .systemLibrary(name: "CUdev", path: "Sources/CUdev", pkgConfig: "libudev", providers: [.apt(["libudev-dev"])]),
        .target(
            name: "KernelGlueLink",
            dependencies: [
                "CSystem", "CUdev", "VMBusWire", "GuestMemory", "VMBusClient", "PartitionLink",
                .product(name: "Atomics", package: "swift-atomics"), .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "HostRuntime",
            dependencies: [
                "CSystem", "CSandbox", "VMBusWire", "VMBusRing", "VMBusChannel", "GuestMemory", "Hypervisor", "PartitionLink", "QEMUCarrier", "EchoDevice",
                "IntegrationServices", "SyntheticStorage", "SyntheticNetwork", "EmulatedDevices",
                "TOMLSafety", .product(name: "Logging", package: "swift-log"), .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: strict),
        .target(
            name: "AgentRuntime",
            dependencies: [
                "CSystem", "VMBusWire", "VMBusRing", "GuestMemory", "VMBusClient", "PartitionLink", "KernelGlueLink", "EchoDevice",
                "IntegrationServices", "SyntheticStorage", "SyntheticNetwork", "EmulatedDevices", "NBD", "Hypervisor", "HostRuntime",
                "TOMLSafety", .product(name: "Logging", package: "swift-log"), .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            swiftSettings: strict),
        .target(
            name: "ViridianBench",
            dependencies: ["VMBusWire", "VMBusRing", "CSystem", "PartitionLink", .product(name: "Atomics", package: "swift-atomics")],
            swiftSettings: strict),
        .executableTarget(
            name: "viridian-agent",
            dependencies: [
                "AgentRuntime", "HostRuntime", "PartitionLink", "KernelGlueLink", "VMBusWire", "IntegrationServices", "NBD",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "viridian-host",
            dependencies: [
                "Loopback", "VMBusWire", "HostRuntime", "IntegrationServices",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // libFuzzer targets for every decoder that takes bytes from the other side (scripts/fuzz.sh
        // builds them with -sanitize=fuzzer -DFUZZING); the plain build replays saved inputs.
        .executableTarget(
            name: "viridian-fuzz",
            dependencies: [
                "CSystem", "VMBusWire", "VMBusRing", "VMBusChannel", "GuestMemory", "Hypervisor", "VMBusClient",
                "IntegrationServices", "SyntheticStorage", "SyntheticNetwork", "EmulatedDevices", "NBD", "PartitionLink", "HostRuntime",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "viridian-bench",
            dependencies: [
                "ViridianBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "ProcessTests",
            dependencies: [
                "PartitionLink", "HostRuntime", "AgentRuntime", "VMBusWire", "VMBusClient", "GuestMemory", "CSystem", "NBD",
                .product(name: "Atomics", package: "swift-atomics"), .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "IntegrationServicesTests",
            dependencies: [
                "IntegrationServices", "Loopback", "Hypervisor", "VMBusClient", "GuestMemory", "VMBusWire",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "StorageTests",
            dependencies: [
                "SyntheticStorage", "Loopback", "Hypervisor", "VMBusClient", "VMBusRing", "GuestMemory", "VMBusWire",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "NetworkTests",
            dependencies: [
                "SyntheticNetwork", "Loopback", "Hypervisor", "VMBusClient", "VMBusRing", "GuestMemory", "VMBusWire",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "EmulatedTests",
            dependencies: ["EmulatedDevices", "GuestMemory", "SyntheticNetwork", "SyntheticStorage", "VMBusWire"],
            swiftSettings: strict),
        .testTarget(name: "VMBusWireTests", dependencies: ["VMBusWire"], swiftSettings: strict),
        .testTarget(name: "VMBusRingTests", dependencies: ["VMBusRing", "VMBusWire"], swiftSettings: strict),
        .testTarget(
            name: "HypervisorTests",
            dependencies: ["Hypervisor", "GuestMemory", "VMBusWire", "VMBusClient"],
            swiftSettings: strict),
        .testTarget(
            name: "ControlPlaneTests",
            dependencies: [
                "Loopback", "Hypervisor", "VMBusClient", "VMBusChannel", "EchoDevice", "GuestMemory", "VMBusWire",
                "VMBusRing", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
