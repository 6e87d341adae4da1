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
