import NIOCore
import NIOWebSocket

/// A frame that passed validation. Control payloads are unmasked; data
/// frames keep their payload *as received* (still masked when the header has
/// a key), so relaying them costs one re-masking pass and nothing else.
public enum InboundFrame: Equatable {
    /// A text, binary or continuation frame.
    case data
    case ping(ByteBuffer)
    case pong
    /// `code` is nil when the close frame had no payload (1005).
    case close(code: UInt16?, reason: String)
}

/// The endpoint checks RFC 6455 leaves to the receiver once `FrameReader`
/// has framed the stream: reserved bits and opcodes, masking direction,
/// fragment ordering, incremental UTF-8 of text messages, close payloads,
/// message size across fragments. One per direction per connection; frames
/// pass through it one by one, so nothing is reassembled.
public struct FrameValidator {
    public enum Role: Sendable {
        /// Frames from a client: must be masked (RFC 6455 §5.1).
        case fromClient
        /// Frames from a server (the upstream): must not be masked.
        case fromServer
    }

    let role: Role
    let maxMessageBytes: Int
    /// The opcode of the data message in progress (1 text, 2 binary), if a
    /// fragmented one is.
    private var messageOpcode: UInt8? = nil
    private var messageBytes = 0
    private var utf8 = UTF8Validator()
    /// Fail-fast UTF-8 for a text frame still arriving: how many of its
    /// payload bytes `partialUTF8` has seen.
    private var partialChecked = 0
    private var partialUTF8 = UTF8Validator()

    public init(role: Role, maxMessageBytes: Int) {
        self.role = role
        self.maxMessageBytes = maxMessageBytes
    }

    /// True while a fragmented message has started but not finished.
    public var isInsideMessage: Bool { messageOpcode != nil }

    /// Validates one complete frame. Control payloads are unmasked in place;
    /// data payloads are left masked (text is UTF-8-checked through the mask).
    public mutating func validate(_ header: FrameHeader, payload: inout ByteBuffer) -> Result<InboundFrame, FrameViolation> {
        partialChecked = 0
        if header.hasReservedBits {
            return .failure(.protocolError("reserved bits set without a negotiated extension"))
        }
        switch (role, header.maskKey) {
        case (.fromClient, nil): return .failure(.protocolError("client frame not masked"))
        case (.fromServer, .some): return .failure(.protocolError("server frame masked"))
        default: break
        }
        let opcode = header.opcodeBits
        if header.isControl, let key = header.maskKey {
            payload.applyWebSocketMask(word: key)
        }
        switch opcode {
        case 0x1, 0x2:
            if messageOpcode != nil {
                return .failure(.protocolError("new message started inside a fragmented message"))
            }
            messageBytes = 0
            if opcode == 0x1 { utf8.reset() }
            if !header.fin { messageOpcode = opcode }
            return data(header, payload, isText: opcode == 0x1)
        case 0x0:
            guard let current = messageOpcode else {
                return .failure(.protocolError("continuation frame without a message to continue"))
            }
            if header.fin { messageOpcode = nil }
            return data(header, payload, isText: current == 0x1)
        case 0x9, 0xA, 0x8:
            guard header.fin else { return .failure(.protocolError("fragmented control frame")) }
            guard payload.readableBytes <= 125 else { return .failure(.protocolError("control frame over 125 bytes")) }
            if opcode == 0x9 { return .success(.ping(payload)) }
            if opcode == 0xA { return .success(.pong) }
            return Self.parseClose(payload)
        default:
            return .failure(.protocolError("reserved opcode \(opcode)"))
        }
    }

    private mutating func data(_ header: FrameHeader, _ payload: ByteBuffer, isText: Bool) -> Result<InboundFrame, FrameViolation> {
        messageBytes += payload.readableBytes
        if messageBytes > maxMessageBytes { return .failure(.messageTooBig(limit: maxMessageBytes)) }
        if isText {
            let key = header.maskKey ?? 0
            let ok = payload.withUnsafeReadableBytes { utf8.feed($0, maskKey: key) }
            if !ok || (header.fin && !utf8.isComplete) { return .failure(.invalidUTF8) }
        }
        return .success(.data)
    }

    /// Checks the bytes of a text frame that has only partly arrived, so that
    /// invalid UTF-8 is refused when it arrives, not once the whole frame
    /// (up to `max_message_bytes`) is in. Each byte is checked once: the
    /// state carries over between calls for the same frame, and `validate`
    /// checks the complete frame from its start as usual. False: the bytes
    /// so far can no longer be valid UTF-8 (close 1007).
    public mutating func checkPartial(_ header: FrameHeader, arrived: ByteBuffer) -> Bool {
        let isText: Bool
        switch header.opcodeBits {
        case 0x1: isText = messageOpcode == nil
        case 0x0: isText = messageOpcode == 0x1
        default: isText = false
        }
        guard isText, !header.hasReservedBits, (header.maskKey != nil) == (role == .fromClient) else { return true }
        if partialChecked == 0 || partialChecked > arrived.readableBytes {
            partialUTF8 = header.opcodeBits == 0x1 ? UTF8Validator() : utf8
            partialChecked = 0
        }
        guard arrived.readableBytes > partialChecked else { return true }
        // The key position of the first new byte is its offset in the payload.
        var key = header.maskKey ?? 0
        let shift = UInt32((partialChecked & 3) * 8)
        if shift != 0 { key = (key >> shift) | (key << (32 - shift)) }
        let from = partialChecked
        partialChecked = arrived.readableBytes
        return arrived.withUnsafeReadableBytes { bytes in
            partialUTF8.feed(UnsafeRawBufferPointer(rebasing: bytes[from...]), maskKey: key)
        }
    }

    /// Parses an (unmasked) close payload: empty, or a valid code plus a UTF-8 reason.
    static func parseClose(_ payload: ByteBuffer) -> Result<InboundFrame, FrameViolation> {
        var payload = payload
        switch payload.readableBytes {
        case 0:
            return .success(.close(code: nil, reason: ""))
        case 1:
            return .failure(.protocolError("close frame with a 1-byte payload"))
        case 126...:
            return .failure(.protocolError("control frame over 125 bytes"))
        default:
            let code = payload.readInteger(as: UInt16.self)!
            guard CloseCode.isValidReceived(code) else {
                return .failure(.protocolError("invalid close code \(code)"))
            }
            var validator = UTF8Validator()
            let ok = payload.withUnsafeReadableBytes { validator.feed($0) }
            guard ok, validator.isComplete else { return .failure(.invalidUTF8) }
            return .success(.close(code: code, reason: payload.readString(length: payload.readableBytes) ?? ""))
        }
    }
}
