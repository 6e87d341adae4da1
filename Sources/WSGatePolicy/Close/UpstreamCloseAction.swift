import WSGateProtocol

/// What the upstream leg is told when a connection ends: the other half of
/// the close table (`ClosePolicy.decide` is what the client is told).
public enum UpstreamCloseAction: Sendable, Equatable {
    /// A close handshake: a close frame with `code` (nil: empty payload) and
    /// `reason`, a bounded wait for the reply, then TCP close. Legs without a
    /// socket of their own (echo, HTTP) just end.
    case close(code: UInt16?, reason: String)
    /// Drop the upstream connection at once: it failed, or never finished
    /// connecting, so there is no handshake to hold.
    case abort
}

extension ClosePolicy {
    /// The upstream's side of the close table, by cause. The client's close
    /// code is passed on as it came (`client_closed`); for every other end the
    /// client side caused, the upstream hears 1001 "going away" with a short
    /// reason that names the cause but nothing about the client.
    public func upstreamAction(_ cause: CloseCause, _ details: CloseDetails) -> UpstreamCloseAction {
        switch cause {
        case .clientClosed:
            return .close(code: details.peerCode, reason: details.peerReason)
        case .clientGone:
            return .close(code: CloseCode.goingAway, reason: "client gone")
        case .clientProtocolError:
            return .close(code: CloseCode.goingAway, reason: "client protocol error")
        case .clientInvalidUTF8:
            return .close(code: CloseCode.goingAway, reason: "client sent invalid UTF-8")
        case .clientMessageTooBig:
            return .close(code: CloseCode.goingAway, reason: "client message too big")
        case .idleTimeout:
            return .close(code: CloseCode.goingAway, reason: "idle timeout")
        case .shutdown:
            return .close(code: shutdownCode, reason: defaultReason(.shutdown, details))
        case .overloaded:
            return .close(code: CloseCode.tryAgainLater, reason: "gateway overloaded")
        case .rateLimited:
            return .close(code: CloseCode.goingAway, reason: "client over its rate limit")
        case .unauthorized:
            return .abort  // never connected: the handshake stopped at the token
        case .tokenExpired:
            return .close(code: CloseCode.goingAway, reason: "client token expired")
        case .kicked:
            return .close(code: CloseCode.goingAway, reason: "client closed by the control API")
        case .internalError:
            return .close(code: CloseCode.internalError, reason: "gateway internal error")
        case .upstreamClosed, .upstreamProtocolError:
            // The leg already answered (or sent) a close frame itself and is
            // finishing its handshake; for it this is a no-op.
            return .close(code: CloseCode.normal, reason: "")
        case .upstreamUnreachable, .upstreamTLSError, .upstreamTimeout, .upstreamHandshakeRejected,
            .upstreamReset, .upstreamHTTPError:
            return .abort
        }
    }
}
