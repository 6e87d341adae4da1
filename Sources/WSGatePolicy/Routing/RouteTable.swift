/// The result of routing one request: the route and the upstream address
/// built for it.
public struct RouteMatch: Sendable {
    public var route: Route
    /// For URL upstreams, the upstream URL with the matched suffix and the
    /// client's query appended.
    public var upstreamURL: URLParts?
}

/// What routing a request target found.
public enum RouteLookup: Sendable {
    case matched(RouteMatch)
    /// No route's pattern matches the (normalised) path.
    case noRoute
    /// The path as sent matches `route`, but once its dot segments are
    /// resolved it no longer does (`/chat/../admin` for `/chat/*`).
    case leavesRoute(Route)
    /// The path climbs above the root (`/../x`).
    case invalidPath
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
        if case .matched(let match) = lookup(requestTarget: requestTarget) { return match }
        return nil
    }

    /// Routes a request target by its normalised path (`RequestPath`); the
    /// upstream gets the normalised suffix. A path that only matched its
    /// route before normalisation is refused rather than rerouted.
    public func lookup(requestTarget: String) -> RouteLookup {
        let target = Substring(requestTarget)
        let queryStart = target.firstIndex(of: "?")
        let raw = target[..<(queryStart ?? target.endIndex)]
        let query = queryStart.map { target[target.index(after: $0)...] }
        guard case .path(let path) = RequestPath.normalize(raw) else { return .invalidPath }
        if path != raw, let rawEntry = entries.first(where: { $0.pattern.match(raw) != nil }),
            rawEntry.pattern.match(path) == nil {
            return .leavesRoute(rawEntry.route)
        }
        for entry in entries {
            guard let suffix = entry.pattern.match(path) else { continue }
            switch entry.route.upstream {
            case .echo:
                return .matched(RouteMatch(route: entry.route, upstreamURL: nil))
            case .webSocket(let base), .http(let base):
                return .matched(RouteMatch(route: entry.route, upstreamURL: Self.join(base, suffix: suffix, query: query)))
            }
        }
        return .noRoute
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
