import NIOHTTP1
import WSGatePolicy

/// Finds a route's token in the client's handshake: the first of the
/// route's `token_from` sources that has one.
enum TokenExtractor {
    /// The prefix of a subprotocol offer that carries a token.
    static let bearerPrefix = "bearer."

    struct Found {
        var token: String?
        /// The `bearer.<token>` offer, when the token came from there (it is
        /// not passed upstream).
        var bearerOffer: String?
    }

    static func find(in head: HTTPRequestHead, sources: [AuthSettings.TokenSource]) -> Found {
        for source in sources {
            switch source {
            case .header(let name):
                guard var value = head.headers.first(name: name) else { continue }
                if name == "authorization" {
                    guard value.count > 7, value.prefix(7).lowercased() == "bearer " else { continue }
                    value = String(value.dropFirst(7))
                }
                let token = HTTPText.trimmingBlanks(value)
                if !token.isEmpty { return Found(token: token) }
            case .query(let name):
                if let value = HTTPText.queryValues(name, in: head.uri).first(where: { !$0.isEmpty }) {
                    return Found(token: HTTPText.percentDecoded(value))
                }
            case .cookie(let name):
                if let token = HTTPText.cookieValues(name, in: head.headers["cookie"]).map(HTTPText.trimmingBlanks).first(where: { !$0.isEmpty }) {
                    return Found(token: token)
                }
            case .subprotocol:
                for offer in UpstreamFactory.offeredProtocols(head.headers) where offer.hasPrefix(bearerPrefix) {
                    let token = String(offer.dropFirst(bearerPrefix.count))
                    if !token.isEmpty { return Found(token: token, bearerOffer: offer) }
                }
            }
        }
        return Found(token: nil)
    }
}
