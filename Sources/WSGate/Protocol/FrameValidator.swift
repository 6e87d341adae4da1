import NIOCore
import NIOWebSocket

/// Why a peer's frame stream is unacceptable.
public enum FrameViolation: Error, Equatable, Sendable {
    /// RFC 6455 §5 framing rules (reserved bits, opcodes, masking,
    /// fragmentation, control frames, close payloads): close code 1002.
    case protocolError(String)
    /// A text message (or close reason) that is not UTF-8: 1007.
    case invalidUTF8
    /// A message larger than `max_message_bytes`: 1009.
    case messageTooBig(limit: Int)
}

/// A frame that passed validation. Control payloads are unmasked; data
/// frames keep their payload *as received* (still masked when `maskKey` is
/// set), so relaying them costs one re-masking copy and nothing else.
public enum InboundFrame {
    /// A text, binary or continuation frame; `opcode` is the frame's own.
    case data(WebSocketFrame)
    case ping(ByteBuffer)
    case pong
    /// `code` is nil when the close frame had no payload (1005).
    case close(code: UInt16?, reason: String)
}

/// The endpoint checks RFC 6455 leaves to the receiver and NIO's decoder does
/// not do: reserved bits and opcodes, masking direction, fragment ordering,
/// incremental UTF-8 of text messages, close payloads, message size across
/// fragments. One per direction per connection; frames pass through it one by
/// one, so nothing is reassembled.
public struct FrameValidator {
    public enum Role: Sendable {
        /// Frames from a client: must be masked (RFC 6455 §5.1).
        case fromClient
        /// Frames from a server (the upstream): must not be masked.
        case fromServer
    }

    let role: Role
    let maxMessageBytes: Int
    /// The opcode of the data message in progress, if a fragmented one is.
    private var messageOpcode: WebSocketOpcode? = nil
    private var messageBytes = 0
    private var utf8 = UTF8Validator()

    public init(role: Role, maxMessageBytes: Int) {
        self.role = role
        self.maxMessageBytes = maxMessageBytes
    }

    /// True while a fragmented message has started but not finished.
    public var isInsideMessage: Bool { messageOpcode != nil }

    /// Validates `frame`. Control frames are unmasked in place; data frames
    /// are left masked (text is UTF-8-checked through the mask).
    public mutating func validate(_ frame: inout WebSocketFrame) -> Result<InboundFrame, FrameViolation> {
        if frame.rsv1 || frame.rsv2 || frame.rsv3 {
            return .failure(.protocolError("reserved bits set without a negotiated extension"))
        }
        switch (role, frame.maskKey) {
        case (.fromClient, nil): return .failure(.protocolError("client frame not masked"))
        case (.fromServer, .some): return .failure(.protocolError("server frame masked"))
        default: break
        }
        let opcode = frame.opcode
        if opcode.isControlOpcode, let key = frame.maskKey {
            frame.data.applyWebSocketMask(key)
            frame.maskKey = nil
        }
        switch opcode {
        case .text, .binary:
            if messageOpcode != nil {
                return .failure(.protocolError("new message started inside a fragmented message"))
            }
            messageBytes = 0
            if opcode == .text { utf8.reset() }
            if !frame.fin { messageOpcode = opcode }
            return data(frame, isText: opcode == .text)
        case .continuation:
            guard let current = messageOpcode else {
                return .failure(.protocolError("continuation frame without a message to continue"))
            }
            if frame.fin { messageOpcode = nil }
            return data(frame, isText: current == .text)
        case .ping:
            guard frame.fin else { return .failure(.protocolError("fragmented control frame")) }
            guard frame.data.readableBytes <= 125 else { return .failure(.protocolError("control frame over 125 bytes")) }
            return .success(.ping(frame.data))
        case .pong:
            guard frame.fin else { return .failure(.protocolError("fragmented control frame")) }
            guard frame.data.readableBytes <= 125 else { return .failure(.protocolError("control frame over 125 bytes")) }
            return .success(.pong)
        case .connectionClose:
            guard frame.fin else { return .failure(.protocolError("fragmented control frame")) }
            return Self.parseClose(frame.data)
        default:
            return .failure(.protocolError("reserved opcode \(UInt8(webSocketOpcode: opcode))"))
        }
    }

    private mutating func data(_ frame: WebSocketFrame, isText: Bool) -> Result<InboundFrame, FrameViolation> {
        messageBytes += frame.data.readableBytes
        if messageBytes > maxMessageBytes { return .failure(.messageTooBig(limit: maxMessageBytes)) }
        if isText {
            let key = frame.maskKey?.littleEndianWord ?? 0
            let ok = frame.data.withUnsafeReadableBytes { utf8.feed($0, maskKey: key) }
            if !ok || (frame.fin && !utf8.isComplete) { return .failure(.invalidUTF8) }
        }
        return .success(.data(frame))
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
            guard ClosePolicy.isValidReceivedCode(code) else {
                return .failure(.protocolError("invalid close code \(code)"))
            }
            var validator = UTF8Validator()
            let ok = payload.withUnsafeReadableBytes { validator.feed($0) }
            guard ok, validator.isComplete else { return .failure(.invalidUTF8) }
            return .success(.close(code: code, reason: payload.readString(length: payload.readableBytes) ?? ""))
        }
    }
}
