import NIOCore
import NIOHTTP1
import NIOWebSocket

/// One accepted TCP connection until it is upgraded or rejected: runs the
/// admission checks, creates the Session and connects its upstream *before*
/// the client gets its 101 (so the upstream's subprotocol choice can be
/// returned), and enforces the handshake timeout.
final class ClientConnection: @unchecked Sendable {
    let gateway: GatewayContext
    let channel: Channel
    let clientAddress: String
    private var handshakeTimer: Scheduled<Void>?
    private var session: Session?

    init(gateway: GatewayContext, channel: Channel) {
        self.gateway = gateway
        self.channel = channel
        self.clientAddress = channel.remoteAddress?.gatewayDescription ?? "unknown"
        let timeout = TimeAmount.milliseconds(Int64(gateway.config.limits.handshakeTimeoutMs))
        handshakeTimer = channel.eventLoop.scheduleTask(in: timeout) { [self] in
            self.gateway.eventLog.rejected(.init(
                status: 408, reason: "handshake not completed within \(gateway.config.limits.handshakeTimeoutMs) ms",
                method: "", path: "", clientAddress: self.clientAddress))
            self.channel.close(promise: nil)
        }
        channel.closeFuture.assumeIsolatedUnsafeUnchecked().whenComplete { [self] _ in
            self.handshakeTimer?.cancel()
            self.session?.clientConnectionClosed()
        }
    }

    /// The request head is complete (or answered): the slowloris timer stops.
    func handshakeFinished() {
        handshakeTimer?.cancel()
        handshakeTimer = nil
    }

    /// NIO's `shouldUpgrade`: nil declines (the request then reaches
    /// `RejectHandler`), headers accept.
    func shouldUpgrade(_ head: HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?> {
        handshakeFinished()
        let eventLoop = channel.eventLoop
        guard case .accept(let match) = HandshakeCheck.evaluate(head, routes: gateway.routes) else {
            return eventLoop.makeSucceededFuture(nil)
        }
        let session = Session(
            id: ConnectionID.make(), route: match.route, upstreamURL: match.upstreamURL,
            clientAddress: clientAddress, eventLoop: eventLoop, gateway: gateway)
        self.session = session
        if gateway.registry.count >= gateway.config.limits.maxConnections {
            session.startRefused(.overloaded)
            return eventLoop.makeSucceededFuture(HTTPHeaders())
        }
        let upstream: UpstreamLeg
        switch match.route.upstream {
        case .echo:
            upstream = EchoUpstream(session: session)
        case .webSocket:
            let offered = Self.offeredProtocols(head.headers)
            upstream = WebSocketUpstream(
                session: session, url: match.upstreamURL!,
                requestHeaders: upstreamHeaders(for: head, url: match.upstreamURL!, route: match.route, connectionID: session.id),
                offeredProtocols: offered, settings: gateway.settings,
                tls: gateway.upstreamTLS[match.route.path], serverName: match.route.tls?.serverName)
        case .http:
            guard let curl = gateway.curl?.client(for: eventLoop) else {
                session.startRefused(.internalError)
                return eventLoop.makeSucceededFuture(HTTPHeaders())
            }
            let http = HTTPUpstream(
                session: session, client: curl, url: match.upstreamURL!, route: match.route,
                commonHeaders: httpHeaderLines(for: head, route: match.route, connectionID: session.id),
                config: gateway.config, logger: gateway.logger)
            http.requestTimer = gateway.metrics.httpRequest
            upstream = http
        }
        return session.start(upstream: upstream).map { chosen in
            var headers = HTTPHeaders()
            if let chosen { headers.add(name: "Sec-WebSocket-Protocol", value: chosen) }
            return headers
        }
    }

    /// NIO's `upgradePipelineHandler`: the 101 is out; the leg handler
    /// replaces NIO's frame decoder.
    func upgraded(channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture { [self] in
            guard let session = self.session else { throw ChannelError.inappropriateOperationForState }
            // The rejection handler sits before the frame codec NIO just added;
            // it must go before the first frame arrives.
            let reject = try channel.pipeline.syncOperations.handler(type: RejectHandler.self)
            channel.pipeline.syncOperations.removeHandler(reject, promise: nil)
            // NIO's frame decoder makes way for the leg handler, which frames
            // the stream itself; it goes before NIO's frame encoder (which
            // cannot be removed and stays unused) and writes bytes.
            let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
            channel.pipeline.syncOperations.removeHandler(decoder, promise: nil)
            let encoder = try channel.pipeline.syncOperations.handler(type: WebSocketFrameEncoder.self)
            let handler = ClientLegHandler(session: session, maxMessageBytes: self.gateway.settings.maxMessageBytes)
            try channel.pipeline.syncOperations.addHandler(handler, position: .before(encoder))
            session.clientAttached(handler)
        }
    }

    /// Header lines every HTTP upstream request of this connection carries
    /// (contract §6): connection id, `X-Forwarded-For`, `forward_headers`.
    func httpHeaderLines(for head: HTTPRequestHead, route: Route, connectionID: String) -> [String] {
        var lines = ["X-WSGate-Connection-Id: \(connectionID)", "X-Forwarded-For: \(forwardedFor(head))"]
        for name in route.forwardHeaders {
            for value in head.headers[name] where !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                lines.append("\(name): \(value)")
            }
        }
        return lines
    }

    /// The client's address appended to any `X-Forwarded-For` it sent.
    func forwardedFor(_ head: HTTPRequestHead) -> String {
        let clientIP = channel.remoteAddress?.ipAddress ?? "unknown"
        let prior = head.headers["x-forwarded-for"].joined(separator: ", ")
        return prior.isEmpty ? clientIP : "\(prior), \(clientIP)"
    }

    static func offeredProtocols(_ headers: HTTPHeaders) -> [String] {
        headers[canonicalForm: "sec-websocket-protocol"].map { String($0) }.filter { !$0.isEmpty }
    }

    /// The upstream's handshake headers: Host, the client's subprotocol
    /// offer, the route's `forward_headers`, `X-Forwarded-For` (appended to
    /// any the client sent) and the connection id for correlation.
    func upstreamHeaders(for head: HTTPRequestHead, url: URLParts, route: Route, connectionID: String) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: url.hostHeader)
        let offered = Self.offeredProtocols(head.headers)
        if !offered.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: offered.joined(separator: ", ")) }
        for name in route.forwardHeaders {
            for value in head.headers[name] { headers.add(name: name, value: value) }
        }
        headers.add(name: "X-Forwarded-For", value: forwardedFor(head))
        headers.add(name: "X-WSGate-Connection-Id", value: connectionID)
        return headers
    }
}
