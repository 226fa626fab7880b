// Hyper-V socket connection messages: TL_CONNECT_REQUEST (21) and TL_CONNECT_RESULT (23).

/// TL_CONNECT_REQUEST (21): the guest connects to a host service. 40 bytes; 56 with a silo id (5.2+).
public struct TLConnectRequest: ChannelMessageBody {
    public static let messageType = ChannelMessageType.tlConnectRequest
    public static let minimumSize = 40
    public static let sizeWithSilo = 56
    public var guestEndpointID: GUID
    public var hostServiceID: GUID
    public var siloID: GUID?
    public init(guestEndpointID: GUID, hostServiceID: GUID, siloID: GUID? = nil) {
        self.guestEndpointID = guestEndpointID
        self.hostServiceID = hostServiceID
        self.siloID = siloID
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(guestEndpointID: GUID.read(b, at: 8), hostServiceID: GUID.read(b, at: 24),
                  siloID: b.count >= Self.sizeWithSilo ? GUID.read(b, at: 40) : nil)
    }
    public var encodedSize: Int { siloID == nil ? Self.minimumSize : Self.sizeWithSilo }
    public func encodeFields(into b: inout [UInt8]) {
        guestEndpointID.write(into: &b, at: 8)
        hostServiceID.write(into: &b, at: 24)
        siloID?.write(into: &b, at: 40)
    }
}

/// TL_CONNECT_RESULT (23): the host refuses a socket connection. 44 bytes.
public struct TLConnectResult: ChannelMessageBody {
    public static let messageType = ChannelMessageType.tlConnectResult
    public static let minimumSize = 44
    public var endpointID: GUID
    public var serviceID: GUID
    public var status: Int32
    public init(endpointID: GUID, serviceID: GUID, status: Int32) {
        self.endpointID = endpointID
        self.serviceID = serviceID
        self.status = status
    }
    public init(decodingChecked b: [UInt8]) throws(WireError) {
        self.init(endpointID: GUID.read(b, at: 8), serviceID: GUID.read(b, at: 24), status: b.le(at: 40))
    }
    public var encodedSize: Int { Self.minimumSize }
    public func encodeFields(into b: inout [UInt8]) {
        endpointID.write(into: &b, at: 8)
        serviceID.write(into: &b, at: 24)
        b.putLE(status, at: 40)
    }
}
