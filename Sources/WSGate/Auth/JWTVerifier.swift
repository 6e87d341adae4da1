import JWTKit
import Logging
import NIOConcurrencyHelpers
import NIOCore
import WSGatePolicy

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A token that passed every check.
struct VerifiedToken: Sendable {
    /// `sub`: the log line's `subject`.
    var subject: String?
    /// `exp`, seconds since the epoch: the connection is closed then.
    var expiresAt: Double?
    /// String (or number, boolean) claims, for `forward_claims`.
    var claims: [String: String]
    /// The `channels` claim (a list, or a comma-separated string): the
    /// connection's channel subscriptions.
    var channels: [String] = []
}

/// Checks the JWTs of one route (`auth.jwt`): the signature with jwt-kit
/// against the route's keys, then what jwt-kit is not asked to judge, so
/// that the client can be told precisely what failed: the algorithm must
/// fit the key (`none` never does, nor HS256 with an RSA key), and `exp`,
/// `nbf`, `iss`, `aud` are checked with the route's leeway.
///
/// Keys: an HMAC secret from the environment or a JWKS file, read at
/// start; or a JWKS URL, fetched with libcurl at start, again every
/// `jwks_refresh_ms`, and at once (at most every 5 s) when a token names
/// a key id the set does not have: a key rotation reaches the gateway with
/// the first token that uses the new key. A failed fetch keeps the last
/// good set (and is logged); until a first set has loaded the route is not
/// ready (`/readyz` 503).
final class JWTVerifier: Sendable {
    let route: String
    let settings: AuthSettings
    private let logger: Logger

    /// The current keys, and each key id's key type.
    struct KeySet: Sendable {
        var collection: JWTKeyCollection
        var keyTypes: [String: String]  // kid → kty
        /// The key type of the key used for tokens without `kid`.
        var defaultType: String?
    }

    private let keys = NIOLockedValueBox<KeySet?>(nil)
    /// The fetch in flight, and when a token last made one (an unknown key
    /// id: at most one such fetch every `onDemandInterval`, so that tokens
    /// with made-up key ids cannot make the gateway hammer the JWKS).
    private let fetch = NIOLockedValueBox<(inFlight: EventLoopFuture<Void>?, lastOnDemand: NIODeadline)>((nil, .distantPast))
    static let onDemandInterval = TimeAmount.seconds(5)
    private let curl: CurlClient?
    private let eventLoop: EventLoop
    private let refresh = NIOLockedValueBox<RepeatedTask?>(nil)

    /// Reads keys from a file or the environment now (throws with a message
    /// for the start-up error when they cannot be used).
    init(route: String, settings: AuthSettings, curl: CurlClient?, eventLoop: EventLoop, logger: Logger) async throws {
        self.route = route
        self.settings = settings
        self.logger = logger
        self.curl = curl
        self.eventLoop = eventLoop
        switch settings.keys {
        case .hmacSecretEnv(let name):
            guard let secret = getenv(name).map({ String(cString: $0) }), !secret.isEmpty else {
                throw AuthSetupError(message: "routes \(route): auth.jwt.hmac_secret_env names \(name), which is not set")
            }
            guard secret.utf8.count >= 32 else {
                // RFC 7518 §3.2: an HS256 key at least as long as the hash.
                throw AuthSetupError(message: "routes \(route): the secret in \(name) has \(secret.utf8.count) bytes; HS256 needs at least 32")
            }
            let collection = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
            keys.withLockedValue { $0 = KeySet(collection: collection, keyTypes: [:], defaultType: "oct") }
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw AuthSetupError(message: "routes \(route): cannot read auth.jwt.keys_file \(path)")
            }
            let set = try await Self.keySet(jwks: String(decoding: data, as: UTF8.self))
            keys.withLockedValue { $0 = set }
        case .jwksURL:
            break  // fetched by `start`
        }
    }

    struct AuthSetupError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// True once a key set has loaded.
    var isReady: Bool { keys.withLockedValue { $0 != nil } }

    /// Starts fetching a JWKS URL (now, then every `jwks_refresh_ms`).
    func start() {
        guard case .jwksURL = settings.keys else { return }
        let task = eventLoop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: .milliseconds(Int64(settings.jwksRefreshMs))) {
            [self] _ in self.fetchKeys(reason: "refresh")
        }
        refresh.withLockedValue { $0 = task }
    }

    func stop() {
        refresh.withLockedValue { $0?.cancel() }
    }

    // MARK: Keys

    static func keySet(jwks: String) async throws -> KeySet {
        struct JWKSDocument: Decodable {
            struct Key: Decodable {
                var kid: String?
                var kty: String
            }
            var keys: [Key]
        }
        let document = try JSONDecoder().decode(JWKSDocument.self, from: Data(jwks.utf8))
        let collection = try await JWTKeyCollection().add(jwksJSON: jwks)
        var types: [String: String] = [:]
        for key in document.keys { if let kid = key.kid { types[kid] = key.kty } }
        return KeySet(collection: collection, keyTypes: types, defaultType: document.keys.count == 1 ? document.keys[0].kty : nil)
    }

    /// Fetches the JWKS URL; concurrent callers share one fetch.
    @discardableResult
    private func fetchKeys(reason: String) -> EventLoopFuture<Void> {
        guard case .jwksURL(let url) = settings.keys, let curl else { return eventLoop.makeSucceededVoidFuture() }
        let eventLoop = self.eventLoop
        return fetch.withLockedValue { state -> EventLoopFuture<Void> in
            if let inFlight = state.inFlight { return inFlight }
            let request = CurlRequest(
                url: url, method: "GET", headers: CurlHeaderList(["Accept: application/json"]), body: nil,
                connectTimeoutMs: 5_000, totalTimeoutMs: 10_000, maxResponseBytes: 1 << 20)
            let future = curl.execute(request, on: eventLoop).flatMap { [self] response -> EventLoopFuture<Void> in
                guard (200..<300).contains(response.status) else {
                    return eventLoop.makeFailedFuture(AuthSetupError(message: "HTTP \(response.status)"))
                }
                let text = String(buffer: response.body)
                return eventLoop.makeFutureWithTask { try await Self.keySet(jwks: text) }.map { set in
                    let first = self.keys.withLockedValue { current -> Bool in
                        defer { current = set }
                        return current == nil
                    }
                    self.logger.log(level: first ? .notice : .debug, "jwks_loaded", metadata: [
                        "route": .string(self.route), "keys": .stringConvertible(set.keyTypes.count), "reason": .string(reason),
                    ])
                }
            }.flatMapErrorThrowing { [self] error in
                // The last good set stays.
                self.logger.warning("jwks_fetch_failed", metadata: [
                    "route": .string(self.route), "url": .string(url),
                    "error": .string((error as? CurlFailure)?.message ?? "\(error)"), "reason": .string(reason),
                ])
            }.always { [self] _ in
                self.fetch.withLockedValue { $0.inFlight = nil }
            }
            state.inFlight = future
            return future
        }
    }

    // MARK: Verifying

    func verify(_ token: String?) -> EventLoopFuture<Result<VerifiedToken, ClaimChecks.Failure>> {
        guard let token, !token.isEmpty else { return eventLoop.makeSucceededFuture(.failure(.missingToken)) }
        guard let header = Self.header(of: token) else { return eventLoop.makeSucceededFuture(.failure(.malformed)) }
        let known = keys.withLockedValue { set in set.map { s in header.kid.map { s.keyTypes[$0] != nil } ?? true } }
        if known == false || known == nil, case .jwksURL = settings.keys, mayRefetch() {
            // A key id the set does not have (a rotation), or no set yet.
            return fetchKeys(reason: header.kid.map { "unknown kid \($0)" } ?? "no keys yet").flatMap { [self] in
                self.check(token, header: header)
            }
        }
        return check(token, header: header)
    }

    /// Whether a token may make the gateway fetch the JWKS now (and counts it).
    private func mayRefetch() -> Bool {
        fetch.withLockedValue { state in
            if state.inFlight != nil { return true }
            guard NIODeadline.now() - state.lastOnDemand > Self.onDemandInterval else { return false }
            state.lastOnDemand = .now()
            return true
        }
    }

    private func check(_ token: String, header: TokenHeader) -> EventLoopFuture<Result<VerifiedToken, ClaimChecks.Failure>> {
        guard let set = keys.withLockedValue({ $0 }) else { return eventLoop.makeSucceededFuture(.failure(.keysUnavailable)) }
        let kty: String?
        if let kid = header.kid {
            kty = set.keyTypes[kid] ?? (set.keyTypes.isEmpty ? set.defaultType : nil)
        } else {
            kty = set.defaultType
        }
        guard let kty else { return eventLoop.makeSucceededFuture(.failure(.unknownKey)) }
        guard let alg = header.alg, ClaimChecks.algorithm(alg, fitsKeyType: kty) else {
            return eventLoop.makeSucceededFuture(.failure(.unsupportedAlgorithm(header.alg ?? "(none)")))
        }
        let settings = self.settings
        return eventLoop.makeFutureWithTask { () -> Result<VerifiedToken, ClaimChecks.Failure> in
            let payload: GatewayClaims
            do {
                payload = try await set.collection.verify(token, as: GatewayClaims.self)
            } catch let error as JWTError {
                switch error.errorType {
                case .malformedToken: return .failure(.malformed)
                case .unknownKID, .missingKIDHeader, .noKeyProvided: return .failure(.unknownKey)
                default: return .failure(.badSignature)
                }
            } catch {
                return .failure(.malformed)
            }
            let claims = payload.values
            if let failure = ClaimChecks.check(
                exp: claims["exp"]?.number, nbf: claims["nbf"]?.number, iss: claims["iss"]?.string,
                aud: claims["aud"]?.strings, settings: settings, now: Date().timeIntervalSince1970)
            {
                return .failure(failure)
            }
            var forwarded: [String: String] = [:]
            for (name, value) in claims { if let text = value.text { forwarded[name] = text } }
            var channels: [String] = []
            if case .array(let items)? = claims["channels"] {
                channels = items.compactMap(\.string)
            } else if let text = claims["channels"]?.string {
                channels = text.split(separator: ",").map { String($0.filter { $0 != " " }) }.filter { !$0.isEmpty }
            }
            return .success(VerifiedToken(
                subject: claims["sub"]?.string, expiresAt: claims["exp"]?.number, claims: forwarded, channels: channels))
        }
    }

    struct TokenHeader: Decodable {
        var alg: String?
        var kid: String?
    }

    /// The JOSE header of a compact JWT, unverified (to choose the key).
    static func header(of token: String) -> TokenHeader? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let data = Base64URL.decode(parts[0]) else { return nil }
        return try? JSONDecoder().decode(TokenHeader.self, from: data)
    }
}

/// Every claim of a token, whatever it is called; jwt-kit checks the
/// signature, `ClaimChecks` the rest.
struct GatewayClaims: JWTPayload {
    var values: [String: ClaimValue]

    init(from decoder: any Decoder) throws {
        values = try decoder.singleValueContainer().decode([String: ClaimValue].self)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values)
    }

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A JSON value of a claim.
enum ClaimValue: Codable, Sendable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case array([ClaimValue])
    case other

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let a = try? c.decode([ClaimValue].self) {
            self = .array(a)
        } else {
            self = .other
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let n): try c.encode(n)
        case .bool(let b): try c.encode(b)
        case .array(let a): try c.encode(a)
        case .other: try c.encodeNil()
        }
    }

    var string: String? { if case .string(let s) = self { return s } else { return nil } }
    var number: Double? { if case .number(let n) = self { return n } else { return nil } }
    /// `aud` is a string or a list of them.
    var strings: [String]? {
        switch self {
        case .string(let s): return [s]
        case .array(let items): return items.compactMap(\.string)
        default: return nil
        }
    }
    /// A value that can go into a header: strings, numbers, booleans.
    var text: String? {
        switch self {
        case .string(let s): return s
        case .number(let n): return n == n.rounded() && abs(n) < 1e15 ? String(Int64(n)) : String(n)
        case .bool(let b): return b ? "true" : "false"
        default: return nil
        }
    }
}

/// base64url without padding (RFC 7515 §2).
enum Base64URL {
    static func decode(_ text: Substring) -> Data? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
