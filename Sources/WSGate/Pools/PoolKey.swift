import NIOHTTP1
import WSGatePolicy

/// The value `balance: hash` hashes, taken from the client's handshake.
enum PoolKey {
    /// Nil when the request has no such header, parameter or cookie (the
    /// connection is then placed as by round robin).
    static func value(_ key: PoolSettings.HashKey?, head: HTTPRequestHead, clientIP: String) -> String? {
        switch key {
        case nil:
            return nil
        case .header(let name):
            return head.headers.first(name: name)
        case .query(let name):
            return HTTPText.queryValues(name, in: head.uri).first
        case .cookie(let name):
            return HTTPText.cookieValues(name, in: head.headers["cookie"]).first
        case .clientIP:
            return clientIP
        }
    }
}
