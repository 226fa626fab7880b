// Values a hostile host hands the agent that used to trap it.

import AgentRuntime
import Testing
import VMBusWire

@Suite("The agent against a hostile host")
struct AgentHostileHostTests {
    /// A READ CAPACITY (16) answer: last LBA, block length.
    func capacity(lastLBA: UInt64, blockLength: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 32)
        for i in 0..<8 { b[i] = UInt8(truncatingIfNeeded: lastLBA >> (56 - 8 * UInt64(i))) }
        for i in 0..<4 { b[8 + i] = UInt8(truncatingIfNeeded: blockLength >> (24 - 8 * UInt32(i))) }
        return b
    }

    @Test("READ CAPACITY (16): sizes that overflow 64 bits or a zero block length give no export (they used to trap)")
    func readCapacity() {
        #expect(DiskExporter.capacityBytes(readCapacity16: capacity(lastLBA: 2047, blockLength: 512)) == 1 << 20)
        #expect(DiskExporter.capacityBytes(readCapacity16: capacity(lastLBA: UInt64.max, blockLength: 512)) == nil)
        #expect(DiskExporter.capacityBytes(readCapacity16: capacity(lastLBA: 1 << 40, blockLength: 1 << 31)) == nil)
        #expect(DiskExporter.capacityBytes(readCapacity16: capacity(lastLBA: 7, blockLength: 0)) == nil)
        #expect(DiskExporter.capacityBytes(readCapacity16: [1, 2, 3]) == nil)
    }
}
