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
                let token = value.trimmingSpaces()
                if !token.isEmpty { return Found(token: token) }
            case .query(let name):
                guard let q = head.uri.firstIndex(of: "?") else { continue }
                for pair in head.uri[head.uri.index(after: q)...].split(separator: "&") {
                    let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    if parts[0] == name, parts.count > 1, !parts[1].isEmpty { return Found(token: String(parts[1]).removingPercentEncoding()) }
                }
            case .cookie(let name):
                for header in head.headers["cookie"] {
                    for item in header.split(separator: ";") {
                        let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                        if String(parts[0]).trimmingSpaces() == name, parts.count > 1 {
                            let token = String(parts[1]).trimmingSpaces()
                            if !token.isEmpty { return Found(token: token) }
                        }
                    }
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

extension String {
    fileprivate func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }

    /// `%XX` decoded (a token in a query string may be encoded).
    fileprivate func removingPercentEncoding() -> String {
        var out: [UInt8] = []
        var bytes = Array(utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2,
                let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
