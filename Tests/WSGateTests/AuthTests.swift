import NIOHTTP1
import Testing
@testable import WSGate
@testable import WSGatePolicy

/// The pure parts of `auth.jwt`: claim checks with leeway, which algorithm
/// fits which key, where tokens are found, and the config.
@Suite("Auth")
struct AuthTests {
    var settings: AuthSettings {
        var s = AuthSettings(keys: .hmacSecretEnv("X"))
        s.issuer = "https://auth/"
        s.audiences = ["chat", "admin"]
        s.leewayMs = 30_000
        return s
    }

    @Test func claimsWithLeeway() {
        let now = 1_000_000.0
        func check(exp: Double? = nil, nbf: Double? = nil, iss: String? = "https://auth/", aud: [String]? = ["chat"]) -> ClaimChecks.Failure? {
            ClaimChecks.check(exp: exp, nbf: nbf, iss: iss, aud: aud, settings: settings, now: now)
        }
        #expect(check(exp: now + 1) == nil)
        #expect(check(exp: now - 29) == nil, "within the leeway")
        #expect(check(exp: now - 31) == .expired)
        #expect(check(nbf: now + 29) == nil)
        #expect(check(nbf: now + 31) == .notYetValid)
        #expect(check(iss: "https://evil/") == .wrongIssuer)
        #expect(check(iss: nil) == .wrongIssuer)
        #expect(check(aud: ["billing"]) == .wrongAudience)
        #expect(check(aud: ["billing", "admin"]) == nil, "any one audience is enough")
        #expect(check(aud: nil) == .wrongAudience)
        var open = settings
        open.issuer = nil
        open.audiences = []
        #expect(ClaimChecks.check(exp: nil, nbf: nil, iss: nil, aud: nil, settings: open, now: now) == nil)
    }

    @Test func algorithmsMustFitTheirKey() {
        #expect(ClaimChecks.algorithm("RS256", fitsKeyType: "RSA"))
        #expect(!ClaimChecks.algorithm("HS256", fitsKeyType: "RSA"), "the HS/RS confusion")
        #expect(!ClaimChecks.algorithm("none", fitsKeyType: "oct"))
        #expect(!ClaimChecks.algorithm("none", fitsKeyType: "RSA"))
        #expect(ClaimChecks.algorithm("ES256", fitsKeyType: "EC"))
        #expect(ClaimChecks.algorithm("EdDSA", fitsKeyType: "OKP"))
        #expect(!ClaimChecks.algorithm("RS256", fitsKeyType: "EC"))
    }

    @Test func tokensAreFoundInTheConfiguredOrder() {
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/c?x=1&access_token=q%2Etok")
        head.headers.add(name: "Cookie", value: "a=b; session=c.tok")
        head.headers.add(name: "Sec-WebSocket-Protocol", value: "chat.v1, bearer.s.tok")
        head.headers.add(name: "Authorization", value: "Bearer h.tok")
        let all: [AuthSettings.TokenSource] = [.header("authorization"), .query("access_token"), .cookie("session"), .subprotocol]
        #expect(TokenExtractor.find(in: head, sources: all).token == "h.tok")
        #expect(TokenExtractor.find(in: head, sources: [.query("access_token")]).token == "q.tok", "percent-decoded")
        #expect(TokenExtractor.find(in: head, sources: [.cookie("session")]).token == "c.tok")
        let sub = TokenExtractor.find(in: head, sources: [.subprotocol])
        #expect(sub.token == "s.tok" && sub.bearerOffer == "bearer.s.tok")
        #expect(TokenExtractor.find(in: head, sources: [.query("nope"), .cookie("nope")]).token == nil)
        var basic = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")
        basic.headers.add(name: "Authorization", value: "Basic dXNlcjpwdw==")
        #expect(TokenExtractor.find(in: basic, sources: [.header("authorization")]).token == nil, "not a bearer token")
        #expect(UpstreamFactory.upstreamOffer(head.headers) == ["chat.v1"], "the token offer stays at the gateway")
    }

    @Test func configIsCheckedWithKeyPaths() throws {
        let config = try ConfigLoader.load(yaml: """
            routes:
              - path: /a
                upstream: 'builtin:echo'
                auth:
                  jwt: {jwks_url: 'https://auth/jwks.json', issuer: 'https://auth/', audiences: [chat], leeway_ms: 5000,
                        token_from: ['header:authorization', subprotocol], forward_claims: {sub: X-User-Id}}
                  on_failure: reject
            """)
        let auth = try #require(config.routes[0].auth)
        #expect(auth.keys == .jwksURL("https://auth/jwks.json"))
        #expect(auth.tokenFrom == [.header("authorization"), .subprotocol])
        #expect(auth.forwardClaims.map(\.header) == ["X-User-Id"] && auth.onFailure == .reject && auth.leewayMs == 5000)
        func problems(_ yaml: String) -> [String] {
            do {
                _ = try ConfigLoader.load(yaml: "routes:\n  - path: /a\n    upstream: 'builtin:echo'\n    auth: " + yaml)
                return []
            } catch {
                return error.problems.map(\.description)
            }
        }
        #expect(problems("{jwt: {issuer: x}}") == ["routes[0].auth.jwt: needs one of jwks_url, keys_file, hmac_secret_env"])
        #expect(problems("{jwt: {hmac_secret_env: A, jwks_url: 'https://x/'}}") == ["routes[0].auth.jwt: give only one of jwks_url, hmac_secret_env"])
        #expect(problems("{jwt: {hmac_secret_env: A, token_from: [body]}}").first?.hasPrefix("routes[0].auth.jwt.token_from[0]: invalid token source") == true)
        #expect(problems("{jwt: {hmac_secret_env: A, forward_claims: {sub: Host}}}").first?.hasPrefix("routes[0].auth.jwt.forward_claims.sub:") == true)
        #expect(problems("{jwt: {keys_file: /nonexistent/keys.json}}") == ["routes[0].auth.jwt.keys_file: cannot read \"/nonexistent/keys.json\""])
        #expect(problems("{jwt: {hmac_secret_env: A}, on_failure: ignore}").first?.hasPrefix("routes[0].auth.on_failure:") == true)
        #expect(problems("{oauth: {}}").first?.hasPrefix("routes[0].auth.oauth: unknown key") == true)
    }
}
