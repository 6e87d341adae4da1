/// Why a client connection ended. Every upgraded connection ends with exactly
/// one cause: the first one the Session observes.
public enum CloseCause: String, Sendable, CaseIterable, Hashable {
    case clientClosed = "client_closed"
    case clientGone = "client_gone"
    case clientProtocolError = "client_protocol_error"
    case clientInvalidUTF8 = "client_invalid_utf8"
    case clientMessageTooBig = "client_message_too_big"
    case upstreamClosed = "upstream_closed"
    case upstreamUnreachable = "upstream_unreachable"
    case upstreamTLSError = "upstream_tls_error"
    case upstreamTimeout = "upstream_timeout"
    case upstreamHandshakeRejected = "upstream_handshake_rejected"
    case upstreamProtocolError = "upstream_protocol_error"
    case upstreamReset = "upstream_reset"
    case upstreamHTTPError = "upstream_http_error"
    case idleTimeout = "idle_timeout"
    case shutdown = "shutdown"
    case overloaded = "overloaded"
    /// Contract §8: a client over its route's `rate_limit` with `action: close`.
    case rateLimited = "rate_limited"
    /// Contract §8: the route requires a token and it is missing or invalid.
    case unauthorized = "unauthorized"
    /// Contract §8: a relayed connection's token reached its `exp`.
    case tokenExpired = "token_expired"
    /// Contract §8: the backend closed the connection through the control API.
    case kicked = "kicked"
    case internalError = "internal_error"

    /// Causes whose code is the peer's own (echoed or relayed), or where
    /// nothing can be sent at all, cannot be remapped under `close_codes`.
    public var isOverridable: Bool {
        switch self {
        case .clientClosed, .clientGone, .upstreamClosed, .kicked: return false
        default: return true
        }
    }

    /// Who ended the connection, as logged in `initiator`.
    public var initiator: Initiator {
        switch self {
        case .clientClosed, .clientGone: return .client
        case .upstreamClosed, .upstreamReset: return .upstream
        default: return .gateway
        }
    }
}

public enum Initiator: String, Sendable {
    case client, upstream, gateway
}
