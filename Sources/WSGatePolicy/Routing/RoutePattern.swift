/// How a route's `path` matches request paths: exactly, or as a prefix when
/// written with a trailing `/*`.
public enum RoutePattern: Sendable, Equatable {
    case exact(String)
    /// Stored without the trailing `/*`: `/chat/*` matches `/chat`, `/chat/`
    /// and everything under `/chat/`, but not `/chatroom`.
    case prefix(String)

    public init(_ path: String) {
        if path.hasSuffix("/*") {
            self = .prefix(String(path.dropLast(2)))
        } else {
            self = .exact(path)
        }
    }

    /// Returns a reason when `path` is not a usable route path.
    public static func validate(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "must start with /" }
        if path.contains("?") || path.contains("#") { return "must not contain a query or fragment" }
        if path.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) { return "must not contain spaces, control or non-ASCII characters" }
        let body = path.hasSuffix("/*") ? String(path.dropLast(2)) : path
        if body.contains("*") { return "* is only allowed as a trailing /*" }
        return nil
    }

    /// If `requestPath` matches, the part of it after the prefix (empty for an
    /// exact match), else `nil`.
    public func match(_ requestPath: Substring) -> Substring? {
        switch self {
        case .exact(let path):
            return requestPath == path ? requestPath[requestPath.endIndex...] : nil
        case .prefix(let prefix):
            guard requestPath.hasPrefix(prefix) else { return nil }
            let rest = requestPath.dropFirst(prefix.count)
            if rest.isEmpty || rest.hasPrefix("/") || prefix.hasSuffix("/") { return rest }
            return nil
        }
    }
}
