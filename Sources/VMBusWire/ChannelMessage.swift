// Any VMBus channel message, decoded from a SynIC payload by its msgtype.

/// One decoded channel message. Types Viridian does not model (reserved channels, 6.0 extras)
/// decode to `.other` with their raw bytes so that a receiver can log and drop them.
public enum ChannelMessage: Equatable, Sendable {
    case offerChannel(OfferChannel)
    case rescindChannelOffer(RescindChannelOffer)
    case requestOffers(RequestOffers)
    case allOffersDelivered(AllOffersDelivered)
    case openChannel(OpenChannel)
    case openChannelResult(OpenChannelResult)
    case closeChannel(CloseChannel)
    case gpadlHeader(GpadlHeader)
    case gpadlBody(GpadlBody)
    case gpadlCreated(GpadlCreated)
    case gpadlTeardown(GpadlTeardown)
    case gpadlTorndown(GpadlTorndown)
    case relidReleased(RelidReleased)
    case initiateContact(InitiateContact)
    case versionResponse(VersionResponse)
    case unload(Unload)
    case unloadResponse(UnloadResponse)
    case tlConnectRequest(TLConnectRequest)
    case modifyChannel(ModifyChannel)
    case tlConnectResult(TLConnectResult)
    case modifyChannelResponse(ModifyChannelResponse)
    case other(ChannelMessageType, [UInt8])

    /// Decodes a channel message (header included), refusing unknown types and bad sizes.
    public init(decoding b: [UInt8]) throws(WireError) {
        guard b.count >= channelMessageHeaderSize else {
            throw .truncated(needed: channelMessageHeaderSize, got: b.count)
        }
        guard b.count <= HvMessage.payloadCapacity else {
            throw .oversized(limit: HvMessage.payloadCapacity, got: b.count)
        }
        let raw = b.le(UInt32.self, at: 0)
        guard let type = ChannelMessageType(rawValue: raw), type != .invalid else { throw .unknownMessageType(raw) }
        switch type {
        case .offerChannel: self = .offerChannel(try .init(decoding: b))
        case .rescindChannelOffer: self = .rescindChannelOffer(try .init(decoding: b))
        case .requestOffers: self = .requestOffers(try .init(decoding: b))
        case .allOffersDelivered: self = .allOffersDelivered(try .init(decoding: b))
        case .openChannel: self = .openChannel(try .init(decoding: b))
        case .openChannelResult: self = .openChannelResult(try .init(decoding: b))
        case .closeChannel: self = .closeChannel(try .init(decoding: b))
        case .gpadlHeader: self = .gpadlHeader(try .init(decoding: b))
        case .gpadlBody: self = .gpadlBody(try .init(decoding: b))
        case .gpadlCreated: self = .gpadlCreated(try .init(decoding: b))
        case .gpadlTeardown: self = .gpadlTeardown(try .init(decoding: b))
        case .gpadlTorndown: self = .gpadlTorndown(try .init(decoding: b))
        case .relidReleased: self = .relidReleased(try .init(decoding: b))
        case .initiateContact: self = .initiateContact(try .init(decoding: b))
        case .versionResponse: self = .versionResponse(try .init(decoding: b))
        case .unload: self = .unload(try .init(decoding: b))
        case .unloadResponse: self = .unloadResponse(try .init(decoding: b))
        case .tlConnectRequest: self = .tlConnectRequest(try .init(decoding: b))
        case .modifyChannel: self = .modifyChannel(try .init(decoding: b))
        case .tlConnectResult: self = .tlConnectResult(try .init(decoding: b))
        case .modifyChannelResponse: self = .modifyChannelResponse(try .init(decoding: b))
        case .invalid, .openReservedChannel, .closeReservedChannel, .closeReservedResponse, .modifyConnection,
            .modifyConnectionResponse, .pause, .pauseResponse, .resume:
            self = .other(type, b)
        }
    }

    /// The message's type number.
    public var type: ChannelMessageType {
        switch self {
        case .offerChannel: .offerChannel
        case .rescindChannelOffer: .rescindChannelOffer
        case .requestOffers: .requestOffers
        case .allOffersDelivered: .allOffersDelivered
        case .openChannel: .openChannel
        case .openChannelResult: .openChannelResult
        case .closeChannel: .closeChannel
        case .gpadlHeader: .gpadlHeader
        case .gpadlBody: .gpadlBody
        case .gpadlCreated: .gpadlCreated
        case .gpadlTeardown: .gpadlTeardown
        case .gpadlTorndown: .gpadlTorndown
        case .relidReleased: .relidReleased
        case .initiateContact: .initiateContact
        case .versionResponse: .versionResponse
        case .unload: .unload
        case .unloadResponse: .unloadResponse
        case .tlConnectRequest: .tlConnectRequest
        case .modifyChannel: .modifyChannel
        case .tlConnectResult: .tlConnectResult
        case .modifyChannelResponse: .modifyChannelResponse
        case .other(let type, _): type
        }
    }

    /// The bytes that go into a SynIC payload.
    public func encode() -> [UInt8] {
        switch self {
        case .offerChannel(let m): m.encode()
        case .rescindChannelOffer(let m): m.encode()
        case .requestOffers(let m): m.encode()
        case .allOffersDelivered(let m): m.encode()
        case .openChannel(let m): m.encode()
        case .openChannelResult(let m): m.encode()
        case .closeChannel(let m): m.encode()
        case .gpadlHeader(let m): m.encode()
        case .gpadlBody(let m): m.encode()
        case .gpadlCreated(let m): m.encode()
        case .gpadlTeardown(let m): m.encode()
        case .gpadlTorndown(let m): m.encode()
        case .relidReleased(let m): m.encode()
        case .initiateContact(let m): m.encode()
        case .versionResponse(let m): m.encode()
        case .unload(let m): m.encode()
        case .unloadResponse(let m): m.encode()
        case .tlConnectRequest(let m): m.encode()
        case .modifyChannel(let m): m.encode()
        case .tlConnectResult(let m): m.encode()
        case .modifyChannelResponse(let m): m.encode()
        case .other(_, let bytes): bytes
        }
    }
}
