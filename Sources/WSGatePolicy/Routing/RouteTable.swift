/// The result of routing one request: the route and the upstream address
/// built for it.
public struct RouteMatch: Sendable {
    public var route: Route
    /// For URL upstreams, the upstream URL with the matched suffix and the
    /// client's query appended.
    public var upstreamURL: URLParts?
}

/// Ordered route list: the first route whose pattern matches wins.
public struct RouteTable: Sendable {
    private let entries: [(pattern: RoutePattern, route: Route)]

    public init(routes: [Route]) {
        entries = routes.map { (RoutePattern($0.path), $0) }
    }

    /// Routes a request target (`/chat/room1?x=1`).
    ///
    /// Only the upstream configured for the route is ever dialled: the client
    /// contributes a path suffix and query, never a host.
    public func match(requestTarget: String) -> RouteMatch? {
        let target = Substring(requestTarget)
        let queryStart = target.firstIndex(of: "?")
        let path = target[..<(queryStart ?? target.endIndex)]
        let query = queryStart.map { target[target.index(after: $0)...] }
        for entry in entries {
            guard let suffix = entry.pattern.match(path) else { continue }
            switch entry.route.upstream {
            case .echo:
                return RouteMatch(route: entry.route, upstreamURL: nil)
            case .webSocket(let base), .http(let base):
                return RouteMatch(route: entry.route, upstreamURL: Self.join(base, suffix: suffix, query: query))
            }
        }
        return nil
    }

    static func join(_ base: URLParts, suffix: Substring, query: Substring?) -> URLParts {
        var url = base
        if !suffix.isEmpty {
            if url.path.hasSuffix("/") && suffix.hasPrefix("/") {
                url.path += suffix.dropFirst()
            } else {
                url.path += suffix
            }
        }
        if let query, !query.isEmpty {
            url.query = url.query.map { $0.isEmpty ? String(query) : "\($0)&\(query)" } ?? String(query)
        }
        return url
    }
}
