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

    func make(for match: RouteMatch, request head: HTTPRequestHead, forwardedFor forwarded: String, connectionID: String, eventLoop: EventLoop) throws -> UpstreamLeg {
        switch match.route.upstream {
        case .echo:
            return EchoUpstream(eventLoop: eventLoop)
        case .webSocket:
            return WebSocketUpstream(
                eventLoop: eventLoop, url: match.upstreamURL!,
                requestHeaders: Self.upstreamHeaders(
                    for: head, url: match.upstreamURL!, route: match.route, connectionID: connectionID, forwardedFor: forwarded),
                offeredProtocols: Self.offeredProtocols(head.headers), settings: resources.settings,
                tls: resources.tls[match.route.path], serverName: match.route.tls?.serverName)
        case .http:
            guard let curl = resources.curl?.client(for: eventLoop) else { throw Unavailable() }
            let http = HTTPUpstream(
                eventLoop: eventLoop, client: curl, url: match.upstreamURL!, route: match.route,
                commonHeaders: Self.httpHeaderLines(for: head, route: match.route, connectionID: connectionID, forwardedFor: forwarded),
                config: resources.config, logger: resources.logger)
            http.requestTimer = resources.httpRequestTimer
            return http
        }
    }

    /// Header lines every HTTP upstream request of this connection carries
    /// (contract §6): connection id, `X-Forwarded-For`, `forward_headers`.
    static func httpHeaderLines(for head: HTTPRequestHead, route: Route, connectionID: String, forwardedFor: String) -> [String] {
        var lines = ["X-WSGate-Connection-Id: \(connectionID)", "X-Forwarded-For: \(forwardedFor)"]
        for name in route.forwardHeaders {
            for value in head.headers[name] where !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                lines.append("\(name): \(value)")
            }
        }
        return lines
    }

    static func offeredProtocols(_ headers: HTTPHeaders) -> [String] {
        headers[canonicalForm: "sec-websocket-protocol"].map { String($0) }.filter { !$0.isEmpty }
    }

    /// The upstream's handshake headers: Host, the client's subprotocol
    /// offer, the route's `forward_headers`, `X-Forwarded-For` (see
    /// `ForwardedFor`) and the connection id for correlation.
    static func upstreamHeaders(for head: HTTPRequestHead, url: URLParts, route: Route, connectionID: String, forwardedFor: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        // With `tls.server_name` the upstream is addressed by that name (SNI,
        // certificate) and so is its virtual host.
        var named = url
        if url.isTLS, let serverName = route.tls?.serverName { named.host = serverName }
        headers.add(name: "Host", value: named.hostHeader)
        let offered = offeredProtocols(head.headers)
        if !offered.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: offered.joined(separator: ", ")) }
        for name in route.forwardHeaders {
            for value in head.headers[name] { headers.add(name: name, value: value) }
        }
        headers.add(name: "X-Forwarded-For", value: forwardedFor)
        headers.add(name: "X-WSGate-Connection-Id", value: connectionID)
        return headers
    }
}
