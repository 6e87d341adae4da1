import WSGatePolicy
import NIOCore
import NIOHTTP1

/// Builds the upstream leg a route names, with what it carries from the
/// client's handshake: the subprotocol offer, the route's `forward_headers`,
/// `X-Forwarded-For` and the connection id (contract §3, §6).
struct UpstreamFactory {
    let resources: UpstreamResources

    /// No libcurl worker for an HTTP route (cannot happen when the config
    /// was loaded: the workers exist whenever a route is HTTP).
    struct Unavailable: Error {}

    /// `clientIP`: the client's address as the log names it (for
    /// `hash_key: client_ip`).
    /// `claimHeaders`: a verified token's `forward_claims`; headers named in
    /// `removedHeaders` are never copied from the client (it must not be able
    /// to forge them).
    func make(
        for match: RouteMatch, request head: HTTPRequestHead, forwardedFor forwarded: String, clientIP: String,
        connectionID: String, eventLoop: EventLoop, claimHeaders: [(String, String)] = [], removedHeaders: Set<String> = []
    ) throws -> UpstreamLeg {
        let extra = Extra(claims: claimHeaders, removed: removedHeaders)
        switch match.route.upstream {
        case .echo:
            return EchoUpstream(eventLoop: eventLoop)
        case .webSocket:
            guard let pool = resources.pools[match.route.path] else { throw Unavailable() }
            let route = match.route
            let resources = self.resources
            let base = match.upstreamURL!
            let urlFor = { (target: PoolState.Target) in Self.url(base, for: target) }
            return PooledUpstream(
                pool: pool, eventLoop: eventLoop, hashKey: PoolKey.value(route.pool.hashKey, head: head, clientIP: clientIP),
                connectTimeout: resources.settings.upstreamConnect, urlFor: urlFor
            ) { target in
                let url = urlFor(target)
                return WebSocketUpstream(
                    eventLoop: eventLoop, url: url,
                    requestHeaders: Self.upstreamHeaders(
                        for: head, url: url, route: route, connectionID: connectionID, forwardedFor: forwarded, extra: extra),
                    offeredProtocols: Self.upstreamOffer(head.headers), settings: resources.settings,
                    tls: resources.tls[route.path], serverName: route.tls?.serverName,
                    dialAddress: target.address == url.host && target.port == url.port ? nil : (target.address, target.port))
            }
        case .http:
            guard let curl = resources.curl?.client(for: eventLoop) else { throw Unavailable() }
            let http = HTTPUpstream(
                eventLoop: eventLoop, client: curl, url: match.upstreamURL!, route: match.route,
                commonHeaders: Self.httpHeaderLines(
                    for: head, route: match.route, connectionID: connectionID, forwardedFor: forwarded, extra: extra),
                config: resources.config, logger: resources.logger, pool: resources.pools[match.route.path],
                hashKey: PoolKey.value(match.route.pool.hashKey, head: head, clientIP: clientIP))
            http.requestTimer = resources.httpRequestTimer
            return http
        }
    }

    /// The route's URL for this connection (suffix and query appended) with
    /// the host and port of the target's member: members differ only there.
    static func url(_ base: URLParts, for target: PoolState.Target) -> URLParts {
        var url = base
        url.host = target.member.url.host
        url.port = target.member.url.port
        return url
    }

    /// Header lines every HTTP upstream request of this connection carries
    /// (contract §6): connection id, `X-Forwarded-For`, `forward_headers`.
    /// What a verified token adds to the upstream's headers.
    struct Extra {
        var claims: [(String, String)] = []
        /// Lower-cased names the client may not set (the claims' headers).
        var removed: Set<String> = []
    }

    static func httpHeaderLines(for head: HTTPRequestHead, route: Route, connectionID: String, forwardedFor: String, extra: Extra = Extra()) -> [String] {
        var lines = ["X-WSGate-Connection-Id: \(connectionID)", "X-Forwarded-For: \(forwardedFor)"]
        for name in route.forwardHeaders where !extra.removed.contains(name) {
            for value in head.headers[name] where !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                lines.append("\(name): \(value)")
            }
        }
        for (name, value) in extra.claims { lines.append("\(name): \(value)") }
        return lines
    }

    static func offeredProtocols(_ headers: HTTPHeaders) -> [String] {
        headers[canonicalForm: "sec-websocket-protocol"].map { String($0) }.filter { !$0.isEmpty }
    }

    /// The offer passed upstream: a token offered as `bearer.<token>` stays
    /// at the gateway.
    static func upstreamOffer(_ headers: HTTPHeaders) -> [String] {
        offeredProtocols(headers).filter { !$0.hasPrefix(TokenExtractor.bearerPrefix) }
    }

    /// The upstream's handshake headers: Host, the client's subprotocol
    /// offer, the route's `forward_headers`, `X-Forwarded-For` (see
    /// `ForwardedFor`) and the connection id for correlation.
    static func upstreamHeaders(
        for head: HTTPRequestHead, url: URLParts, route: Route, connectionID: String, forwardedFor: String, extra: Extra = Extra()
    ) -> HTTPHeaders {
        var headers = HTTPHeaders()
        // With `tls.server_name` the upstream is addressed by that name (SNI,
        // certificate) and so is its virtual host.
        var named = url
        if url.isTLS, let serverName = route.tls?.serverName { named.host = serverName }
        headers.add(name: "Host", value: named.hostHeader)
        let offered = upstreamOffer(head.headers)
        if !offered.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: offered.joined(separator: ", ")) }
        for name in route.forwardHeaders where !extra.removed.contains(name) {
            for value in head.headers[name] { headers.add(name: name, value: value) }
        }
        for (name, value) in extra.claims { headers.add(name: name, value: value) }
        headers.add(name: "X-Forwarded-For", value: forwardedFor)
        headers.add(name: "X-WSGate-Connection-Id", value: connectionID)
        return headers
    }
}
