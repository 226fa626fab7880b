// Channel message type numbers (CHANNELMSG_*) and the body protocol every message struct follows.

/// The `msgtype` of a VMBus channel message header.
public enum ChannelMessageType: UInt32, Sendable, CaseIterable {
    case invalid = 0
    case offerChannel = 1
    case rescindChannelOffer = 2
    case requestOffers = 3
    case allOffersDelivered = 4
    case openChannel = 5
    case openChannelResult = 6
    case closeChannel = 7
    case gpadlHeader = 8
    case gpadlBody = 9
    case gpadlCreated = 10
    case gpadlTeardown = 11
    case gpadlTorndown = 12
    case relidReleased = 13
    case initiateContact = 14
    case versionResponse = 15
    case unload = 16
    case unloadResponse = 17
    case openReservedChannel = 18
    case closeReservedChannel = 19
    case closeReservedResponse = 20
    case tlConnectRequest = 21
    case modifyChannel = 22
    case tlConnectResult = 23
    case modifyChannelResponse = 24
    case modifyConnection = 25
    case modifyConnectionResponse = 26
    case pause = 27
    case pauseResponse = 28
    case resume = 29
}

/// Size of the common channel message header: u32 msgtype, u32 padding.
public let channelMessageHeaderSize = 8

/// A channel message with a fixed type number and a byte-exact body.
public protocol ChannelMessageBody: Equatable, Sendable {
    static var messageType: ChannelMessageType { get }
    /// Smallest valid size including the 8-byte header.
    static var minimumSize: Int { get }
    /// Decodes from bytes whose length has been checked against `minimumSize` and 240.
    init(decodingChecked bytes: [UInt8]) throws(WireError)
    /// Total encoded size including the header.
    var encodedSize: Int { get }
    /// Writes the fields after the header into a zero-filled array of `encodedSize` bytes.
    func encodeFields(into bytes: inout [UInt8])
}

extension ChannelMessageBody {
    /// Decodes one message; refuses short, oversized or mistyped input.
    public init(decoding bytes: [UInt8]) throws(WireError) {
        guard bytes.count >= Self.minimumSize else { throw .truncated(needed: Self.minimumSize, got: bytes.count) }
        guard bytes.count <= HvMessage.payloadCapacity else {
            throw .oversized(limit: HvMessage.payloadCapacity, got: bytes.count)
        }
        let type = bytes.le(UInt32.self, at: 0)
        guard type == Self.messageType.rawValue else { throw .invalidField("msgtype", UInt64(type)) }
        try self.init(decodingChecked: bytes)
    }

    /// The message as it goes into a SynIC payload, header included.
    public func encode() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: encodedSize)
        out.putLE(Self.messageType.rawValue, at: 0)
        encodeFields(into: &out)
        return out
    }
}

/// A message that is only its header (REQUESTOFFERS, ALLOFFERS_DELIVERED, UNLOAD, UNLOAD_RESPONSE).
public protocol HeaderOnlyMessage: ChannelMessageBody {
    init()
}

extension HeaderOnlyMessage {
    public static var minimumSize: Int { channelMessageHeaderSize }
    public init(decodingChecked bytes: [UInt8]) throws(WireError) { self.init() }
    public var encodedSize: Int { channelMessageHeaderSize }
    public func encodeFields(into bytes: inout [UInt8]) {}
}

/// A message whose only field is a u32 relid at offset 8 (RESCIND, CLOSECHANNEL, RELID_RELEASED).
public protocol RelidOnlyMessage: ChannelMessageBody {
    var childRelid: UInt32 { get }
    init(childRelid: UInt32)
}

extension RelidOnlyMessage {
    public static var minimumSize: Int { 12 }
    public init(decodingChecked bytes: [UInt8]) throws(WireError) { self.init(childRelid: bytes.le(at: 8)) }
    public var encodedSize: Int { 12 }
    public func encodeFields(into bytes: inout [UInt8]) { bytes.putLE(childRelid, at: 8) }
}
