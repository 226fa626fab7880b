// Typed errors of the process boundary.

/// Why a PartitionLink operation failed.
public enum LinkError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(call: String, errno: Int32)
    /// A frame from the peer is malformed.
    case malformed(String)
    /// The peer speaks another protocol version.
    case versionMismatch(UInt16)
    /// The host refused the agent (code, reason).
    case refused(UInt32, String)
    /// The peer closed the connection.
    case closed
    /// The path is not of the form unix:PATH.
    case badAddress(String)

    public var description: String {
        switch self {
        case .system(let call, let e): "\(call) failed: \(String(cString: strerror(e)))"
        case .malformed(let why): "malformed link frame: \(why)"
        case .versionMismatch(let v): "peer speaks PartitionLink version \(v), this side \(LinkFrame.version)"
        case .refused(_, let why): "host refused the agent: \(why)"
        case .closed: "the peer closed the link"
        case .badAddress(let a): "bad link address '\(a)': expected unix:PATH"
        }
    }
}

import Glibc
