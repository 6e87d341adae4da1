/// The checks on a verified token's claims (RFC 7519 §4.1), with the reason
/// a client is told when one fails: `unauthorized: token expired`.
///
/// Pure: the clock is passed in. The signature is checked before (by
/// jwt-kit); these are the checks a gateway must make itself to say
/// precisely which one failed.
public enum ClaimChecks {
    /// Why a token was refused (the text after `unauthorized: `).
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        case missingToken
        case malformed
        case unsupportedAlgorithm(String)
        case unknownKey
        case badSignature
        case expired
        case notYetValid
        case wrongIssuer
        case wrongAudience
        case keysUnavailable

        public var description: String {
            switch self {
            case .missingToken: return "missing token"
            case .malformed: return "malformed token"
            case .unsupportedAlgorithm(let alg): return "algorithm \(alg) not accepted"
            case .unknownKey: return "unknown signing key"
            case .badSignature: return "bad signature"
            case .expired: return "token expired"
            case .notYetValid: return "token not yet valid"
            case .wrongIssuer: return "wrong issuer"
            case .wrongAudience: return "wrong audience"
            case .keysUnavailable: return "signing keys unavailable"
            }
        }
    }

    /// `exp`, `nbf`, `iss`, `aud` against the route's settings; `now` and the
    /// claims' times in seconds since the epoch.
    public static func check(
        exp: Double?, nbf: Double?, iss: String?, aud: [String]?, settings: AuthSettings, now: Double
    ) -> Failure? {
        let leeway = Double(settings.leewayMs) / 1000
        if let exp, now > exp + leeway { return .expired }
        if let nbf, now + leeway < nbf { return .notYetValid }
        if let issuer = settings.issuer, iss != issuer { return .wrongIssuer }
        if !settings.audiences.isEmpty {
            guard let aud, aud.contains(where: settings.audiences.contains) else { return .wrongAudience }
        }
        return nil
    }

    /// Algorithms accepted, by the kind of key (`kty`) that must verify them:
    /// a token's header cannot choose an HMAC check with a public RSA key
    /// (the classic confusion), and `none` is never accepted.
    public static func algorithm(_ alg: String, fitsKeyType kty: String) -> Bool {
        switch kty {
        case "oct": return ["HS256", "HS384", "HS512"].contains(alg)
        case "RSA": return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"].contains(alg)
        case "EC": return ["ES256", "ES384", "ES512"].contains(alg)
        case "OKP": return alg == "EdDSA"
        default: return false
        }
    }
}
