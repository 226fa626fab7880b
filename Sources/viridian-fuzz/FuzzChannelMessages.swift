// Target "channel-message": every VMBus channel message decoder, raw and with a chosen msgtype.

import VMBusWire

let channelMessageTarget = FuzzTarget(
    name: "channel-message",
    summary: "ChannelMessage(decoding:) for every msgtype; whatever decodes re-encodes to a prefix that decodes the same"
) { data in
    let bytes = [UInt8](data)
    ChannelMessageFuzz.decode(bytes)
    // The same bytes with the first byte chosen as the msgtype, so every body decoder is reached.
    guard bytes.count >= 5 else { return }
    var typed = Array(bytes.dropFirst())
    typed.putLE(UInt32(bytes[0] % 32), at: 0)
    ChannelMessageFuzz.decode(typed)
}

enum ChannelMessageFuzz {
    /// Decodes, checks the round trip the decoder promises, and reads the derived fields.
    static func decode(_ bytes: [UInt8]) {
        let message: ChannelMessage
        do { message = try ChannelMessage(decoding: bytes) } catch {
            fuzzConsume(UInt64(truncatingIfNeeded: "\(error)".utf8.count))
            return
        }
        let again = message.encode()
        fuzzCheck(again.count <= bytes.count, "\(message.type) re-encoded to \(again.count) bytes from \(bytes.count)")
        fuzzCheck(again.count <= HvMessage.payloadCapacity, "\(message.type) encoded beyond a SynIC payload")
        let twice = try? ChannelMessage(decoding: again)
        fuzzCheck(twice == message, "\(message.type) does not survive encode and decode")
        inspect(message)
    }

    /// What a receiver derives from a message (versions, classes, GPA ranges).
    static func inspect(_ message: ChannelMessage) {
        switch message {
        case .initiateContact(let m):
            let v = m.version
            fuzzConsume(v.linuxName)
            fuzzConsume(UInt64(v.major) ^ UInt64(v.minor) << 16)
            let flags = [v.hasChannelConnectionIDs, v.usesPerChannelEventFlags, v.honoursTargetVCPU, v.hasModifyChannel,
                         v.usesMessageConnection4, v.answersModifyChannel]
            fuzzConsume(UInt64(flags.filter { $0 }.count))
            fuzzConsume(UInt64(m.messageSINT) ^ UInt64(m.messageVTL) ^ UInt64(m.featureFlags) ^ m.interruptPage)
            if let id = m.clientID { fuzzConsume(id.description) }
        case .offerChannel(let m):
            fuzzConsume(DeviceClass.named(m.interfaceType).name)
            fuzzConsume(m.interfaceInstance.description)
            fuzzConsume(UInt64(m.flags.rawValue))
        case .versionResponse(let m):
            fuzzConsume(UInt64(m.isSupported ? 1 : 0) ^ UInt64(m.messageConnectionID))
            _ = VersionResponse.ConnectionState(rawValue: m.connectionState)
        case .gpadlHeader(let m):
            _ = try? GpaRange.parse(words: m.words, rangeCount: Int(m.rangeCount))
        case .gpadlBody(let m):
            _ = try? GpaRange.parse(words: m.words, rangeCount: 1)
        case .tlConnectRequest(let m):
            fuzzConsume(m.guestEndpointID.description + m.hostServiceID.description)
        case .openChannel(let m):
            fuzzConsume(m.userData)
        default:
            fuzzConsume(UInt64(message.type.rawValue))
        }
    }
}
