// The DEC 21140A ("Tulip") register and descriptor bits, as the 21140A data sheet and Linux's tulip driver name them.

/// CSR numbers; CSRn sits at I/O offset 8 × n of BAR 0 (128 bytes).
public enum TulipCSR {
    public static let busMode = 0, transmitPoll = 1, receivePoll = 2, receiveList = 3, transmitList = 4
    public static let status = 5, operationMode = 6, interruptEnable = 7, missedFrames = 8, serialROM = 9
    public static let bootROM = 10, timer = 11, generalPort = 12, watchdog = 15
}

/// CSR0 bits.
public enum TulipBusMode {
    public static let softwareReset: UInt32 = 0x0000_0001
    /// Descriptor skip length: longwords between ring descriptors, bits 6–2.
    public static let skipShift: UInt32 = 2, skipMask: UInt32 = 0x1F
    /// The value after reset.
    public static let resetValue: UInt32 = 0xFE00_0000
}

/// CSR5 (status) and CSR7 (interrupt enable) bits.
public enum TulipStatus {
    public static let transmitInterrupt: UInt32 = 0x0000_0001          // TI
    public static let transmitStopped: UInt32 = 0x0000_0002            // TPS
    public static let transmitUnavailable: UInt32 = 0x0000_0004        // TU
    public static let transmitJabber: UInt32 = 0x0000_0008             // TJT
    public static let underflow: UInt32 = 0x0000_0020                  // UNF
    public static let receiveInterrupt: UInt32 = 0x0000_0040           // RI
    public static let receiveUnavailable: UInt32 = 0x0000_0080         // RU
    public static let receiveStopped: UInt32 = 0x0000_0100             // RPS
    public static let receiveWatchdog: UInt32 = 0x0000_0200            // RWT
    public static let earlyTransmit: UInt32 = 0x0000_0400              // ETI
    public static let timerExpired: UInt32 = 0x0000_0800               // GTE
    public static let fatalBusError: UInt32 = 0x0000_2000              // FBE
    public static let earlyReceive: UInt32 = 0x0000_4000               // ERI
    public static let abnormalSummary: UInt32 = 0x0000_8000            // AIS
    public static let normalSummary: UInt32 = 0x0001_0000              // NIS
    /// What NIS summarises, and what AIS does.
    public static let normal: UInt32 = transmitInterrupt | transmitUnavailable | receiveInterrupt | earlyReceive
    public static let abnormal: UInt32 = transmitStopped | transmitJabber | underflow | receiveUnavailable | receiveStopped
        | receiveWatchdog | earlyTransmit | timerExpired | fatalBusError
    /// The write-one-to-clear bits.
    public static let clearable: UInt32 = 0x0001_FFFF
    /// Receive process state (bits 19–17) and transmit process state (bits 22–20).
    public static let receiveStateShift: UInt32 = 17, transmitStateShift: UInt32 = 20
    /// States reported: stopped, running and waiting for a frame (RS 3), suspended (RS 4, TS 6).
    public static let stateStopped: UInt32 = 0, receiveWaiting: UInt32 = 3, receiveSuspended: UInt32 = 4, transmitSuspended: UInt32 = 6
}

/// CSR6 (operation mode) bits.
public enum TulipMode {
    public static let hashPerfect: UInt32 = 0x0000_0001        // HP (reflects the setup frame)
    public static let startReceive: UInt32 = 0x0000_0002       // SR
    public static let hashOnly: UInt32 = 0x0000_0004           // HO (reflects the setup frame)
    public static let passBad: UInt32 = 0x0000_0008            // PB
    public static let inverseFilter: UInt32 = 0x0000_0010      // IF (reflects the setup frame)
    public static let promiscuous: UInt32 = 0x0000_0040        // PR
    public static let passMulticast: UInt32 = 0x0000_0080      // PM
    public static let fullDuplex: UInt32 = 0x0000_0200         // FD
    public static let startTransmit: UInt32 = 0x0000_2000      // ST
    public static let portSelect: UInt32 = 0x0004_0000         // PS (MII/SYM port)
    public static let storeAndForward: UInt32 = 0x0020_0000    // SF
    /// Must be one on the 21140A.
    public static let mustBeOne: UInt32 = 0x0200_0000
    /// The filter-mode bits a setup frame sets.
    public static let filterBits: UInt32 = hashPerfect | hashOnly | inverseFilter
}

/// CSR9 bits for the serial ROM (a 93C46 microwire part).
public enum TulipSerialROM {
    public static let chipSelect: UInt32 = 0x01, clock: UInt32 = 0x02, dataIn: UInt32 = 0x04, dataOut: UInt32 = 0x08
    public static let select: UInt32 = 0x0800, write: UInt32 = 0x2000, read: UInt32 = 0x4000
    /// READ opcode with its start bit (binary 110), as Linux's EE_READ_CMD.
    public static let readCommand: UInt32 = 6
}

/// Descriptor bits (four little-endian longwords: status, control and sizes, buffer 1, buffer 2 or next).
public enum TulipDescriptor {
    public static let own: UInt32 = 0x8000_0000
    // RDES0
    public static let frameLengthShift: UInt32 = 16, frameLengthMask: UInt32 = 0x3FFF
    public static let errorSummary: UInt32 = 0x0000_8000
    public static let descriptorError: UInt32 = 0x0000_4000
    public static let multicastFrame: UInt32 = 0x0000_0400
    public static let firstDescriptor: UInt32 = 0x0000_0200
    public static let lastDescriptor: UInt32 = 0x0000_0100
    public static let frameTooLong: UInt32 = 0x0000_0080
    public static let frameType: UInt32 = 0x0000_0020
    // TDES0
    public static let jabberTimeout: UInt32 = 0x0000_4000
    // RDES1 / TDES1
    public static let endOfRing: UInt32 = 0x0200_0000
    public static let chained: UInt32 = 0x0100_0000
    public static let sizeMask: UInt32 = 0x7FF, size2Shift: UInt32 = 11
    // TDES1
    public static let interruptOnCompletion: UInt32 = 0x8000_0000
    public static let lastSegment: UInt32 = 0x4000_0000
    public static let firstSegment: UInt32 = 0x2000_0000
    public static let filterType1: UInt32 = 0x1000_0000
    public static let setupPacket: UInt32 = 0x0800_0000
    public static let disablePadding: UInt32 = 0x0080_0000
    public static let filterType0: UInt32 = 0x0040_0000
    /// A setup frame is 192 bytes: 16 perfect addresses, or the 512-bit hash table and one address.
    public static let setupFrameSize = 192
}
