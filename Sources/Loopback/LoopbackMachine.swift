// Host and guest in one process: a partition, its VMBus server, and a guest VMBus client wired directly.

import GuestMemory
import Hypervisor
import Logging
import VMBusClient
import VMBusWire

/// Why the loopback stopped making progress.
public enum LoopbackError: Error, Equatable, Sendable {
    /// The condition did not become true before the guest went idle.
    case stalled(String)
}

/// One partition with its host side (SynICs, hypercalls, VMBus server) and its guest side
/// (VMBus client) in one process. Hypercalls run synchronously, as a VM exit would; interrupts
/// are recorded and delivered when `pump` runs the guest's interrupt handler. Deterministic,
/// single-threaded: the reference wiring that PartitionLink splits across processes.
public final class LoopbackMachine: InterruptSink, GuestHypervisor {
    public let memory: GuestPhysicalMemory
    public private(set) var partition: Partition!
    public private(set) var server: VMBusServer!
    public private(set) var client: VMBusClient!
    private var pending: [Bool]
    public private(set) var interruptsDelivered: UInt64 = 0

    public init(memoryBytes: Int = 64 << 20, vpCount: Int = 1,
                serverConfiguration: VMBusServerConfiguration = .init(),
                clientVersions: [VMBusVersion] = VMBusVersion.linuxPreference,
                logger: Logger = Logger(label: "viridian.loopback")) throws {
        memory = try GuestPhysicalMemory(size: memoryBytes, name: "viridian-loopback")
        pending = [Bool](repeating: false, count: vpCount)
        partition = Partition(id: 1, name: "loopback", memory: memory, vpCount: vpCount, interrupts: self)
        server = VMBusServer(partition: partition, configuration: serverConfiguration, logger: logger)
        client = VMBusClient(hypervisor: self, pool: GuestBufferPool(identity: memory), vpCount: vpCount, versions: clientVersions, logger: logger)
    }

    // MARK: InterruptSink (host → guest)

    public func assertInterrupt(vp: UInt32, sint: Int, vector: UInt8) {
        pending[Int(vp)] = true
    }

    // MARK: GuestHypervisor (guest → host)

    public func hypercall(vp: UInt32, control: UInt64, input: UInt64, output: UInt64) -> UInt64 {
        partition.hypercall(vp: vp, control: control, input: input, output: output).rawValue
    }

    public func writeMSR(vp: UInt32, _ msr: UInt32, _ value: UInt64) -> Bool {
        (try? partition.writeMSR(vp: vp, msr, value)) != nil
    }

    public func readMSR(vp: UInt32, _ msr: UInt32) -> UInt64? {
        try? partition.readMSR(vp: vp, msr)
    }

    // MARK: Running

    /// Runs the guest's interrupt handler on every VP with a pending interrupt until none is left.
    /// Returns the number of interrupts handled.
    @discardableResult
    public func pump() -> Int {
        var handled = 0
        while let vp = pending.firstIndex(of: true) {
            pending[vp] = false
            handled += 1
            interruptsDelivered &+= 1
            client.handleInterrupt(vp: UInt32(vp))
        }
        return handled
    }

    /// Pumps until `condition` holds; throws if the machine goes idle first.
    public func run(until condition: () -> Bool, _ what: @autoclosure () -> String = "condition") throws(LoopbackError) {
        while !condition() {
            if pump() == 0 && !condition() { throw .stalled(what()) }
        }
    }

    /// Connects the guest, collects all offers and waits for ALLOFFERS_DELIVERED.
    public func connect() throws {
        try client.connect()
        try run(until: { [client] in client!.allOffersDelivered || client!.state == .failed }, "all offers")
        if client.state == .failed { throw LoopbackError.stalled("no version accepted") }
    }
}
