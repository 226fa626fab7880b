// A 93C46 serial EEPROM (64 × 16 bits, microwire) behind the 21140's CSR9, and the SROM contents a
// Tulip board carries (the DEC SROM format with the station address at byte 20).

/// The microwire read protocol, bit-banged through CSR9: with chip select high, each rising clock
/// edge shifts in one DI bit. Zeros before the start bit are ignored; then come the two opcode
/// bits and six address bits. After the last address bit the part drives a dummy 0 on DO, then
/// the 16 data bits MSB first on the following rising edges, carrying on into the next word while
/// the clock runs (sequential read). When the part is not driving, DO reads 1 (the pull-up): that
/// is how a driver tells a 6-bit part from an 8-bit one. Dropping chip select ends the access.
/// Write and erase opcodes are accepted and ignored (the ROM is read-only here).
public struct SerialROM93C46 {
    public static let words = 64
    public private(set) var contents: [UInt16]
    private enum Phase { case idle, command, output, ignore }
    private var phase = Phase.idle
    /// The opcode and address bits shifted in so far (8 in all: 2 + 6).
    private var shift: UInt32 = 0
    private var bits = 0
    private var address = 0
    private var outputBit = 0
    private var clock = false
    /// What DO reads now.
    public private(set) var dataOut = true

    public init(contents: [UInt16]) {
        precondition(contents.count == Self.words, "a 93C46 holds 64 words")
        self.contents = contents
    }

    /// A CSR9 write: chip select, clock and data in as the guest set them.
    public mutating func write(chipSelect: Bool, clock newClock: Bool, dataIn: Bool) {
        defer { clock = newClock }
        guard chipSelect else {
            phase = .idle
            dataOut = true
            return
        }
        guard newClock && !clock else { return }  // act on rising edges only
        switch phase {
        case .idle:
            if dataIn {
                phase = .command
                shift = 0
                bits = 0
            }
        case .command:
            shift = shift << 1 | (dataIn ? 1 : 0)
            bits += 1
            if bits == 8 {
                address = Int(shift & 0x3F)
                if shift >> 6 == 0b10 {
                    phase = .output
                    outputBit = 16
                    dataOut = false  // the dummy zero
                } else {
                    phase = .ignore
                }
            }
        case .output:
            outputBit -= 1
            dataOut = contents[address] >> UInt16(outputBit) & 1 != 0
            if outputBit == 0 {
                address = (address + 1) % Self.words
                outputBit = 16
            }
        case .ignore:
            break
        }
    }

    /// The SROM of a single-port 21140 board (the DEC format, version 4): subsystem IDs,
    /// format version at byte 18, one controller (byte 19), the station address at bytes 20–25,
    /// controller 0's info leaf at byte 30 (connection type autosense, the general-purpose port
    /// direction, one compact media block: 100BASE-TX full duplex), and the CRC-16 of bytes 0–125 in
    /// word 63 computed as DEC's SROM specification does (the low 16 bits of the Ethernet CRC-32).
    public static func tulipSROM(mac: [UInt8]) -> [UInt16] {
        precondition(mac.count == 6, "a MAC is 6 bytes")
        var b = [UInt8](repeating: 0, count: 128)
        b[0] = 0x14; b[1] = 0x14  // subsystem vendor 0x1414 (Microsoft)
        b[2] = 0x00; b[3] = 0x00
        b[18] = 4      // SROM format version
        b[19] = 1      // controllers on the board
        for i in 0..<6 { b[20 + i] = mac[i] }
        b[26] = 0      // controller 0: device number
        b[27] = 30; b[28] = 0  // its info leaf offset
        // Info leaf (21140): connection type, GP port direction, media block count, blocks.
        b[30] = 0x00; b[31] = 0x08  // 0x0800: autosense
        b[32] = 0x1F   // GP control
        b[33] = 1      // one media block
        b[34] = 0x05   // compact block: 100BASE-TX full duplex
        b[35] = 0x00   // GP data
        b[36] = 0x6D; b[37] = 0x00  // command: port select, PCS, SCR, active high sense
        let sum = UInt16(truncatingIfNeeded: ~b[0..<126].withUnsafeBytes { DEC21140.crcLE($0) })
        b[126] = UInt8(truncatingIfNeeded: sum)
        b[127] = UInt8(truncatingIfNeeded: sum >> 8)
        return (0..<64).map { UInt16(b[2 * $0]) | UInt16(b[2 * $0 + 1]) << 8 }
    }
}
