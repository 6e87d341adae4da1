/// A parsed `upstream:` value: where a route's traffic goes.
public enum UpstreamTarget: Sendable, Equatable, CustomStringConvertible {
    /// `builtin:echo`: every message comes straight back.
    case echo
    /// `ws://` or `wss://`: a second WebSocket, frames relayed both ways.
    case webSocket(URLParts)
    /// `http://` or `https://`: one HTTP request per message.
    case http(URLParts)

    public var description: String {
        switch self {
        case .echo: return "builtin:echo"
        case .webSocket(let url), .http(let url): return url.description
        }
    }

    /// Parses an upstream string, or explains why it cannot be used.
    public static func parse(_ string: String) -> Result<UpstreamTarget, UpstreamParseError> {
        if string == "builtin:echo" { return .success(.echo) }
        if string.hasPrefix("builtin:") {
            return .failure(.init(message: "unknown builtin \(JSONText.quoted(string)) (only builtin:echo exists)"))
        }
        switch URLParts.parse(string) {
        case .failure(let error):
            return .failure(error)
        case .success(let url):
            switch url.scheme {
            case "ws", "wss": return .success(.webSocket(url))
            case "http", "https": return .success(.http(url))
            default: return .failure(.init(message: "unsupported scheme \(JSONText.quoted(url.scheme))"))
            }
        }
    }
}

public struct UpstreamParseError: Error, Equatable, Sendable {
    public var message: String
}

/// A minimal absolute-URL model (scheme, host, port, path, query): all a
/// gateway needs to dial an upstream and build the request target. Foundation's
/// URL is avoided on purpose: it accepts far more than an upstream may be.
public struct URLParts: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int
    /// Always starts with `/`.
    public var path: String
    /// Without the leading `?`; `nil` when absent.
    public var query: String?

    public var isTLS: Bool { scheme == "wss" || scheme == "https" }

    public var defaultPort: Int { isTLS ? 443 : 80 }

    /// `host[:port]` as sent in a `Host` header (port omitted when default).
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == defaultPort ? h : "\(h):\(port)"
    }

    /// Path plus query, as used in a request line.
    public var requestTarget: String {
        query.map { "\(path)?\($0)" } ?? path
    }

    public var description: String {
        "\(scheme)://\(hostHeader)\(requestTarget)"
    }

    public static func parse(_ string: String) -> Result<URLParts, UpstreamParseError> {
        guard let schemeEnd = string.range(of: "://") else {
            return .failure(.init(message: "not a URL (expected scheme://host[:port]/path or builtin:echo)"))
        }
        let scheme = String(string[..<schemeEnd.lowerBound]).lowercased()
        guard ["ws", "wss", "http", "https"].contains(scheme) else {
            return .failure(.init(message: "unsupported scheme \(JSONText.quoted(scheme))"))
        }
        var rest = string[schemeEnd.upperBound...]
        if rest.contains(where: { $0 == " " || $0.isNewline || $0 == "#" }) {
            return .failure(.init(message: "URL must not contain spaces or a fragment"))
        }
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        rest = rest[authorityEnd...]
        if authority.contains("@") {
            return .failure(.init(message: "credentials in the URL are not supported"))
        }
        var host: Substring
        var portText: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                return .failure(.init(message: "unterminated IPv6 address"))
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                return .failure(.init(message: "invalid authority \(JSONText.quoted(String(authority)))"))
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        guard !host.isEmpty else { return .failure(.init(message: "missing host")) }
        let defaultPort = (scheme == "wss" || scheme == "https") ? 443 : 80
        var port = defaultPort
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else {
                return .failure(.init(message: "invalid port \(JSONText.quoted(String(portText)))"))
            }
            port = p
        }
        var path = "/"
        var query: String? = nil
        if let q = rest.firstIndex(of: "?") {
            let p = rest[..<q]
            path = p.isEmpty ? "/" : String(p)
            query = String(rest[rest.index(after: q)...])
        } else if !rest.isEmpty {
            path = String(rest)
        }
        return .success(URLParts(scheme: scheme, host: String(host).lowercased(), port: port, path: path, query: query))
    }
}
