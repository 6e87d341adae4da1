import WSGateProtocol

/// A route's close-code dialect (`close_profile`), for clients that do not
/// take the newer IANA codes.
///
/// gorilla/websocket fails a connection that receives 1014 ("invalid close
/// code"), Starscream rewrites 1014–2999 to 1002, and some libraries drop
/// 1012–1014 as reserved; every client passes the application range
/// 4000–4999 through. A profile maps the codes the gateway would send
/// (and the codes an upstream's close relays) into a dialect such clients
/// read; the reason is kept, so the client still learns what happened.
public enum CloseProfile: String, Sendable, Equatable, CaseIterable {
    /// The codes of contract §4 as they are.
    case iana
    /// RFC 6455's original codes only: 1012 → 1001, 1013 → 1011, 1014 → 1011.
    case legacy
    /// Application codes for the server errors: 1011 → 4500, 1013 → 4503,
    /// 1014 → 4502 (HTTP's 500, 503, 502 in the 4000s).
    case app

    /// The code a client of this profile gets instead of `code`.
    public func map(_ code: UInt16) -> UInt16 {
        switch (self, code) {
        case (.legacy, CloseCode.serviceRestart): return CloseCode.goingAway
        case (.legacy, CloseCode.tryAgainLater), (.legacy, CloseCode.badGateway): return CloseCode.internalError
        case (.app, CloseCode.internalError): return 4500
        case (.app, CloseCode.tryAgainLater): return 4503
        case (.app, CloseCode.badGateway): return 4502
        default: return code
        }
    }
}
