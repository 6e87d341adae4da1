/// A route's `auth`: who may connect, proven by a JWT at the handshake.
public struct AuthSettings: Sendable, Equatable {
    /// Where the keys come from.
    public enum Keys: Sendable, Equatable {
        /// A JWKS served over HTTP(S), fetched with libcurl, cached and
        /// refreshed.
        case jwksURL(String)
        /// A JWKS file, read at start.
        case file(String)
        /// An HMAC secret (HS256/384/512) from this environment variable.
        case hmacSecretEnv(String)
    }

    /// Where a token may be found, tried in order.
    public enum TokenSource: Sendable, Equatable, CustomStringConvertible {
        case header(String)  // lower-cased; `authorization` strips "Bearer "
        case query(String)
        case cookie(String)
        /// A `Sec-WebSocket-Protocol` offer `bearer.<token>` (browsers cannot
        /// set headers on a WebSocket); it is not passed upstream.
        case subprotocol

        public var description: String {
            switch self {
            case .header(let n): return "header:\(n)"
            case .query(let n): return "query:\(n)"
            case .cookie(let n): return "cookie:\(n)"
            case .subprotocol: return "subprotocol"
            }
        }

        public static func parse(_ text: String) -> TokenSource? {
            if text == "subprotocol" { return .subprotocol }
            guard let colon = text.firstIndex(of: ":") else { return nil }
            let name = String(text[text.index(after: colon)...])
            guard !name.isEmpty, !name.contains(where: { $0 == " " || $0 == "\t" }) else { return nil }
            switch text[..<colon] {
            case "header": return HeaderRules.isToken(name.lowercased()) ? .header(name.lowercased()) : nil
            case "query": return .query(name)
            case "cookie": return .cookie(name)
            default: return nil
            }
        }
    }

    public enum OnFailure: String, Sendable, Equatable, CaseIterable {
        /// 101, then 1008 with a reason that says which check failed.
        case close
        /// HTTP 401 and a `websocket_reject` line.
        case reject
    }

    public var keys: Keys
    public var issuer: String? = nil
    public var audiences: [String] = []
    public var leewayMs = 30_000
    public var tokenFrom: [TokenSource] = [.header("authorization"), .query("access_token"), .subprotocol]
    /// Claim → header name, sent upstream (same-named client headers are removed).
    public var forwardClaims: [(claim: String, header: String)] = []
    public var onFailure = OnFailure.close
    /// How often a `jwks_url` is fetched again.
    public var jwksRefreshMs = 300_000

    public init(keys: Keys) {
        self.keys = keys
    }

    public static func == (a: AuthSettings, b: AuthSettings) -> Bool {
        a.keys == b.keys && a.issuer == b.issuer && a.audiences == b.audiences && a.leewayMs == b.leewayMs
            && a.tokenFrom == b.tokenFrom && a.onFailure == b.onFailure && a.jwksRefreshMs == b.jwksRefreshMs
            && a.forwardClaims.map(\.claim) == b.forwardClaims.map(\.claim) && a.forwardClaims.map(\.header) == b.forwardClaims.map(\.header)
    }
}
