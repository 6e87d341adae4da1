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
            guard let q = head.uri.firstIndex(of: "?") else { return nil }
            for pair in head.uri[head.uri.index(after: q)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if parts[0] == name { return parts.count > 1 ? String(parts[1]) : "" }
            }
            return nil
        case .cookie(let name):
            for header in head.headers["cookie"] {
                for item in header.split(separator: ";") {
                    let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    if parts[0].trimmingCharacters(in: " \t") == name { return parts.count > 1 ? String(parts[1]) : "" }
                }
            }
            return nil
        case .clientIP:
            return clientIP
        }
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        drop(while: { set.contains($0) }).reversed().drop(while: { set.contains($0) }).reversed().reduce(into: Substring()) { $0.append($1) }
    }
}
