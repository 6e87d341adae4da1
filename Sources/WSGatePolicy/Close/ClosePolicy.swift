import WSGateProtocol

/// Facts about a connection's end that the policy may need besides its cause.
public struct CloseDetails: Sendable, Equatable {
    /// The close code the peer sent (client for `client_closed`, upstream for
    /// `upstream_closed`); `nil` when its close frame had no code (1005).
    public var peerCode: UInt16?
    public var peerReason: String
    /// HTTP status behind `upstream_handshake_rejected` / `upstream_http_error`.
    public var httpStatus: Int?
    /// A short human description that may replace the default reason (never
    /// upstream internals: callers put those into the log's `error` instead).
    public var reasonOverride: String?

    public init(peerCode: UInt16? = nil, peerReason: String = "", httpStatus: Int? = nil, reasonOverride: String? = nil) {
        self.peerCode = peerCode
        self.peerReason = peerReason
        self.httpStatus = httpStatus
        self.reasonOverride = reasonOverride
    }
}

/// What the client gets.
public struct CloseDecision: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// Send a close frame carrying `code` and `reason`.
        case sendCode
        /// Send a close frame with an empty payload (the client sees 1005).
        case sendEmpty
        /// Drop the TCP connection without a close frame (the client sees 1006).
        case abort
        /// Nothing can be sent: the client's TCP is already gone.
        case none
    }

    /// The code the client's CloseEvent shows (1005 for an empty frame, 1006
    /// when no close frame reached it).
    public var code: UInt16
    public var reason: String
    public var action: Action
}

/// The pure mapping from a cause (plus details) to what the client sees,
/// with `close_codes` overrides. No I/O, no state: exhaustively unit-tested.
///
/// Per route, in this order: the route's own `close_codes` are final; else
/// the gateway's `close_codes` or the default code, passed through the
/// route's `close_profile`. An upstream's close code that is relayed goes
/// through the profile too (a client that cannot take 1014 cannot take it
/// from an upstream either); a client's own code is echoed as it was.
public struct ClosePolicy: Sendable {
    public var overrides: [CloseCause: UInt16]
    public var shutdownCode: UInt16
    public var maxMessageBytes: Int
    public var profile: CloseProfile
    public var routeOverrides: [CloseCause: UInt16]

    public init(
        overrides: [CloseCause: UInt16] = [:], shutdownCode: UInt16 = CloseCode.goingAway, maxMessageBytes: Int = 1_048_576,
        profile: CloseProfile = .iana, routeOverrides: [CloseCause: UInt16] = [:]
    ) {
        self.overrides = overrides
        self.shutdownCode = shutdownCode
        self.maxMessageBytes = maxMessageBytes
        self.profile = profile
        self.routeOverrides = routeOverrides
    }

    /// The gateway-wide policy (no route's profile or overrides).
    public init(config: GatewayConfig) {
        self.init(overrides: config.closeCodes, shutdownCode: config.shutdown.closeCode, maxMessageBytes: config.limits.maxMessageBytes)
    }

    /// The policy of one route.
    public init(config: GatewayConfig, route: Route) {
        self.init(
            overrides: config.closeCodes, shutdownCode: config.shutdown.closeCode, maxMessageBytes: config.limits.maxMessageBytes,
            profile: route.closeProfile, routeOverrides: route.closeCodes)
    }

    /// Codes a `close_codes` override may name: those a client may receive
    /// in a frame, plus 1006 meaning "drop the TCP connection".
    public static func isAllowedOverride(_ code: Int) -> Bool { CloseCode.isAllowedOverride(code) }

    /// Codes that may appear in a received close frame (RFC 6455 §7.4 plus the
    /// IANA-registered 1012–1014, which some libraries wrongly reject).
    public static func isValidReceivedCode(_ code: UInt16) -> Bool { CloseCode.isValidReceived(code) }

    public func decide(_ cause: CloseCause, _ details: CloseDetails = CloseDetails()) -> CloseDecision {
        switch cause {
        case .kicked:
            // The backend's own code and reason (validated by the control API).
            return CloseDecision(code: details.peerCode ?? CloseCode.normal, reason: CloseReason.truncate(details.peerReason), action: .sendCode)
        case .clientClosed, .upstreamClosed:
            guard let code = details.peerCode else {
                return CloseDecision(code: CloseCode.noStatus, reason: "", action: .sendEmpty)
            }
            let relayed = cause == .upstreamClosed ? profile.map(code) : code
            return CloseDecision(code: relayed, reason: CloseReason.truncate(details.peerReason), action: .sendCode)
        case .clientGone:
            return CloseDecision(code: CloseCode.abnormal, reason: "", action: .none)
        default:
            break
        }
        let code = routeOverrides[cause] ?? profile.map(overrides[cause] ?? defaultCode(cause, details))
        if code == CloseCode.abnormal {
            return CloseDecision(code: CloseCode.abnormal, reason: "", action: .abort)
        }
        let reason = CloseReason.truncate(details.reasonOverride ?? defaultReason(cause, details))
        return CloseDecision(code: code, reason: reason, action: .sendCode)
    }

    public func defaultCode(_ cause: CloseCause, _ details: CloseDetails) -> UInt16 {
        switch cause {
        case .clientClosed, .upstreamClosed: return details.peerCode ?? CloseCode.noStatus
        case .clientGone: return CloseCode.abnormal
        case .clientProtocolError: return CloseCode.protocolError
        case .clientInvalidUTF8: return CloseCode.invalidPayload
        case .clientMessageTooBig: return CloseCode.messageTooBig
        case .upstreamUnreachable, .upstreamTLSError, .upstreamTimeout, .upstreamHandshakeRejected,
            .upstreamProtocolError:
            return CloseCode.badGateway
        case .upstreamReset: return CloseCode.abnormal
        case .upstreamHTTPError:
            switch details.httpStatus ?? 500 {
            case 500: return CloseCode.internalError
            case 502, 504: return CloseCode.badGateway
            case 503: return CloseCode.tryAgainLater
            case 400..<500: return CloseCode.policyViolation
            default: return CloseCode.internalError
            }
        case .idleTimeout: return CloseCode.goingAway
        case .shutdown: return shutdownCode
        case .overloaded: return CloseCode.tryAgainLater
        case .rateLimited, .unauthorized, .tokenExpired: return CloseCode.policyViolation
        case .kicked: return details.peerCode ?? CloseCode.normal
        case .internalError: return CloseCode.internalError
        }
    }

    public func defaultReason(_ cause: CloseCause, _ details: CloseDetails) -> String {
        switch cause {
        case .clientClosed, .upstreamClosed: return details.peerReason
        case .clientGone: return ""
        case .clientProtocolError: return "protocol error"
        case .clientInvalidUTF8: return "invalid UTF-8 in text message"
        case .clientMessageTooBig: return "message too big (limit \(maxMessageBytes) bytes)"
        case .upstreamUnreachable: return "upstream unreachable"
        case .upstreamTLSError: return "upstream TLS error"
        case .upstreamTimeout: return "upstream timeout"
        case .upstreamHandshakeRejected:
            return details.httpStatus.map { "upstream rejected the handshake (HTTP \($0))" } ?? "upstream rejected the handshake"
        case .upstreamProtocolError: return "upstream protocol error"
        case .upstreamReset: return "upstream connection reset"
        case .upstreamHTTPError:
            return details.httpStatus.map { "upstream HTTP \($0)" } ?? "upstream HTTP error"
        case .idleTimeout: return "idle timeout"
        case .shutdown: return shutdownCode == CloseCode.serviceRestart ? "gateway restarting" : "gateway shutting down"
        case .overloaded: return "gateway overloaded, try again later"
        case .rateLimited: return "rate limit exceeded"
        case .unauthorized: return "unauthorized"
        case .tokenExpired: return "token expired"
        case .kicked: return details.peerReason
        case .internalError: return "internal error"
        }
    }
}
