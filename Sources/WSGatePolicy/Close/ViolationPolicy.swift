import WSGateProtocol

/// What an RFC 6455 violation means for each leg: the cause when the client
/// committed it, and the close code a WebSocket upstream gets when it did.
public enum ViolationPolicy {
    /// The cause, details and log `error` for a client that broke the protocol.
    public static func clientCause(_ violation: FrameViolation) -> (cause: CloseCause, details: CloseDetails, error: String) {
        switch violation {
        case .protocolError(let detail):
            return (.clientProtocolError, CloseDetails(reasonOverride: "protocol error: \(detail)"), detail)
        case .invalidUTF8:
            return (.clientInvalidUTF8, CloseDetails(), "invalid UTF-8 in a text message or close reason")
        case .messageTooBig(let limit):
            return (.clientMessageTooBig, CloseDetails(), "message over \(limit) bytes")
        }
    }

    /// The close frame a WebSocket upstream that broke the protocol gets (the
    /// client's connection ends with `upstream_protocol_error`), and the
    /// detail for the log's `error`.
    public static func upstreamClose(_ violation: FrameViolation) -> (code: UInt16, detail: String) {
        switch violation {
        case .protocolError(let detail): return (CloseCode.protocolError, detail)
        case .invalidUTF8: return (CloseCode.invalidPayload, "invalid UTF-8 in a text message or close reason")
        case .messageTooBig(let limit): return (CloseCode.messageTooBig, "message over \(limit) bytes")
        }
    }
}
