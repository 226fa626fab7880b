// Guest file copy (FCOPY) wire layout: hv_fcopy_hdr, hv_start_fcopy and hv_do_fcopy after the IC header.

import VMBusWire

/// FCOPY operations (`hv_fcopy_hdr.operation`).
public enum FCopyOperation: UInt32, Sendable {
    case start = 0, write = 1, complete = 2, cancel = 3
}

/// START_FILE_COPY's `copy_flags`.
public struct FCopyFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let overwrite = FCopyFlags(rawValue: 1)
    public static let createPath = FCopyFlags(rawValue: 2)
}

/// Offsets and sizes, from the start of the FCOPY message (after the 28-byte IC header).
public enum FCopyLayout {
    /// operation (u32) and two 16-byte service ids Linux leaves unused.
    public static let headerSize = 36
    public static let startSize = 1088
    public static let writeSize = 6196
    /// Largest WRITE_TO_FILE fragment (DATA_FRAGMENT).
    public static let fragment = 6144
    public static let fileName = UTF16Field("file_name", offset: 36, units: 260)
    public static let pathName = UTF16Field("path_name", offset: 556, units: 260)
    public static let copyFlags = 1076
    public static let fileSize = 1080
    public static let writeOffset = 40
    public static let writeSize32 = 48
    public static let writeData = 52
    /// Viridian's use of the unused `service_id1`: "VRDNMODE" then the file's permission bits
    /// (u32), so a copy keeps its mode. Other hosts leave it zero; other guests ignore it.
    public static let modeTagOffset = 20
    public static let modeTag = Array("VRDNMODE".utf8)
}

/// A malformed FCOPY message.
public enum FCopyWireError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(Int)
    case field(UTF16FieldError)
    case fragmentTooLarge(UInt32)

    public var description: String {
        switch self {
        case .truncated(let n): "message of \(n) bytes is too short"
        case .field(let e): "\(e)"
        case .fragmentTooLarge(let n): "fragment of \(n) bytes exceeds \(FCopyLayout.fragment)"
        }
    }
}

/// START_FILE_COPY: where the file goes, how, and how big it is.
public struct FCopyStart: Equatable, Sendable {
    public var fileName: String
    public var pathName: String
    public var flags: FCopyFlags
    public var fileSize: UInt64
    /// Permission bits carried in Viridian's tag, if the host sent one.
    public var mode: UInt32?

    public init(fileName: String, pathName: String, flags: FCopyFlags, fileSize: UInt64, mode: UInt32? = nil) {
        self.fileName = fileName
        self.pathName = pathName
        self.flags = flags
        self.fileSize = fileSize
        self.mode = mode
    }

    public static func == (a: FCopyStart, b: FCopyStart) -> Bool {
        a.fileName == b.fileName && a.pathName == b.pathName && a.flags.rawValue == b.flags.rawValue && a.fileSize == b.fileSize && a.mode == b.mode
    }

    public init(decoding body: [UInt8]) throws(FCopyWireError) {
        guard body.count >= FCopyLayout.startSize else { throw .truncated(body.count) }
        do {
            fileName = try FCopyLayout.fileName.read(body)
            pathName = try FCopyLayout.pathName.read(body)
        } catch { throw .field(error) }
        flags = FCopyFlags(rawValue: body.le(UInt32.self, at: FCopyLayout.copyFlags))
        fileSize = body.le(UInt64.self, at: FCopyLayout.fileSize)
        let tag = FCopyLayout.modeTagOffset
        mode = Array(body[tag..<(tag + 8)]) == FCopyLayout.modeTag ? body.le(UInt32.self, at: tag + 8) : nil
    }

    public func encoded() throws(FCopyWireError) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: FCopyLayout.startSize)
        b.putLE(FCopyOperation.start.rawValue, at: 0)
        do {
            try FCopyLayout.fileName.write(fileName, into: &b)
            try FCopyLayout.pathName.write(pathName, into: &b)
        } catch { throw .field(error) }
        b.putLE(flags.rawValue, at: FCopyLayout.copyFlags)
        b.putLE(fileSize, at: FCopyLayout.fileSize)
        if let mode {
            b.replaceSubrange(FCopyLayout.modeTagOffset..<(FCopyLayout.modeTagOffset + 8), with: FCopyLayout.modeTag)
            b.putLE(mode, at: FCopyLayout.modeTagOffset + 8)
        }
        return b
    }
}

/// WRITE_TO_FILE: `size` bytes at `offset`, the bytes at 52.
public struct FCopyFragment: Sendable {
    public var offset: UInt64
    public var size: Int

    /// Reads offset and size, refusing fragments larger than DATA_FRAGMENT or than the message.
    public init(decoding body: [UInt8]) throws(FCopyWireError) {
        guard body.count >= FCopyLayout.writeData else { throw .truncated(body.count) }
        let size = body.le(UInt32.self, at: FCopyLayout.writeSize32)
        guard size <= FCopyLayout.fragment else { throw .fragmentTooLarge(size) }
        guard body.count >= FCopyLayout.writeData + Int(size) else { throw .truncated(body.count) }
        offset = body.le(UInt64.self, at: FCopyLayout.writeOffset)
        self.size = Int(size)
    }

    /// A whole WRITE_TO_FILE body (6196 bytes) with `data` (at most 6144 bytes).
    public static func body(offset: UInt64, data: UnsafeRawBufferPointer) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: FCopyLayout.writeSize)
        b.putLE(FCopyOperation.write.rawValue, at: 0)
        b.putLE(offset, at: FCopyLayout.writeOffset)
        let n = min(data.count, FCopyLayout.fragment)
        b.putLE(UInt32(n), at: FCopyLayout.writeSize32)
        b.withUnsafeMutableBytes { out in
            if n > 0 { out.baseAddress!.advanced(by: FCopyLayout.writeData).copyMemory(from: data.baseAddress!, byteCount: n) }
        }
        return b
    }

    /// A body with just the operation (COMPLETE_FCOPY, CANCEL_FCOPY).
    public static func bare(_ operation: FCopyOperation) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: FCopyLayout.headerSize)
        b.putLE(operation.rawValue, at: 0)
        return b
    }
}
