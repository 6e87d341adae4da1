import WSGatePolicy
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
    /// Bounds the request head and what arrives after it before the 101.
    private let limiter: RequestHeadLimiter
    /// Holds the client's reads while its upgrade is under way.
    private let readGate: UpgradeReadGate
    /// Whether this connection still counts toward `max_pending_handshakes`.
    private var pending = true

    init(gateway: GatewayContext, channel: Channel, limiter: RequestHeadLimiter, readGate: UpgradeReadGate) {
        self.gateway = gateway
        self.channel = channel
        self.limiter = limiter
        self.readGate = readGate
        self.clientAddress = channel.remoteAddress?.gatewayDescription ?? "unknown"
        let timeout = TimeAmount.milliseconds(Int64(gateway.config.limits.handshakeTimeoutMs))
        handshakeTimer = channel.eventLoop.scheduleTask(in: timeout) { [self] in
            self.gateway.eventLog.rejected(.init(
                status: 408, reason: "handshake not completed within \(gateway.config.limits.handshakeTimeoutMs) ms",
                method: "", path: "", clientAddress: self.clientAddress))
            self.channel.close(promise: nil)
        }
        channel.closeFuture.assumeIsolatedUnsafeUnchecked().whenComplete { [self] _ in
            self.closed = true
            self.handshakeTimer?.cancel()
            self.leavePending()
            self.session?.clientConnectionClosed()
        }
    }

    /// The request head is complete (or answered): the slowloris timer stops.
    func handshakeFinished() {
        handshakeTimer?.cancel()
        handshakeTimer = nil
    }

    /// Upgraded, answered with an error, or gone: no longer a pending
    /// handshake.
    func leavePending() {
        guard pending else { return }
        pending = false
        gateway.pendingHandshakes.leave()
    }

    /// NIO's `shouldUpgrade`: nil declines (the request then reaches
    /// `RejectHandler`), headers accept.
    func shouldUpgrade(_ head: HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?> {
        handshakeFinished()
        let eventLoop = channel.eventLoop
        guard case .accept(let match) = HandshakeCheck.evaluate(head, routes: gateway.routes) else {
            return eventLoop.makeSucceededFuture(nil)
        }
        // Nothing more is read from the client until its 101 is out.
        readGate.hold()
        guard let verifier = gateway.verifier(for: match.route) else {
            return admit(match, head, auth: nil)
        }
        // The token first: with `on_failure: reject` a failure is an HTTP 401
        // and there is no connection to count.
        let found = TokenExtractor.find(in: head, sources: verifier.settings.tokenFrom)
        // The verifier answers on its own loop: back to this connection's.
        return verifier.verify(found.token).hop(to: eventLoop).flatMap { [self] result -> EventLoopFuture<HTTPHeaders?> in
            guard !self.closed else { return eventLoop.makeSucceededFuture(nil) }  // gone while its token was checked
            switch result {
            case .success(let token):
                return self.admit(match, head, auth: .init(token: token, bearerOffer: found.bearerOffer, failure: nil))
            case .failure(let failure):
                if verifier.settings.onFailure == .reject {
                    self.authRejection = failure
                    self.readGate.release()
                    return eventLoop.makeSucceededFuture(nil)
                }
                return self.admit(match, head, auth: .init(token: nil, bearerOffer: found.bearerOffer, failure: failure))
            }
        }
    }

    /// What the token check found, for `admit`.
    struct AuthOutcome {
        var token: VerifiedToken?
        var bearerOffer: String?
        var failure: ClaimChecks.Failure?
    }

    /// A token refused with `on_failure: reject`: `RejectHandler` answers 401.
    private(set) var authRejection: ClaimChecks.Failure?
    /// The connection closed (its close future ran).
    private var closed = false

    /// Creates the Session and, unless a limit, the drain or the token says
    /// otherwise, connects its upstream; the client gets its 101 either way.
    private func admit(_ match: RouteMatch, _ head: HTTPRequestHead, auth: AuthOutcome?) -> EventLoopFuture<HTTPHeaders?> {
        let eventLoop = channel.eventLoop
        let forwarded = ForwardedFor(
            headerValues: head.headers["x-forwarded-for"], peerIP: channel.remoteAddress?.ipAddress,
            trustedProxies: gateway.config.trustedProxies)
        let session = Session(
            id: "\(gateway.instanceID).\(ConnectionID.make())", route: match.route, upstreamURL: match.upstreamURL,
            clientAddress: forwarded.clientIP ?? clientAddress, eventLoop: eventLoop, environment: gateway.environment)
        self.session = session
        // A client that offered only its token as a subprotocol must get one
        // back, or a browser fails the handshake: it gets its own offer.
        let onlyBearer = auth?.bearerOffer != nil
            && UpstreamFactory.offeredProtocols(head.headers).allSatisfy { $0.hasPrefix(TokenExtractor.bearerPrefix) }
        let refusedHeaders: HTTPHeaders = onlyBearer ? ["Sec-WebSocket-Protocol": auth!.bearerOffer!] : [:]
        if gateway.registry.count >= gateway.config.limits.maxConnections {
            session.startRefused(.overloaded)
            return eventLoop.makeSucceededFuture(refusedHeaders)
        }
        let ip = forwarded.clientIP ?? channel.remoteAddress?.ipAddress ?? "unknown"
        guard session.countIP(ip) else {
            let limit = gateway.config.limits.maxConnectionsPerIP
            session.startRefused(.overloaded, error: "\(ip) has \(limit) connections already (limits.max_connections_per_ip)")
            return eventLoop.makeSucceededFuture(refusedHeaders)
        }
        // Registered before the drain check: a drain starting now either
        // finds this session in the registry or is seen by the check.
        gateway.registry.add(session)
        if gateway.isDraining {
            // Accepted before the drain, upgraded after it began: it is part
            // of the drain, and learns so at once (101, then the shutdown code).
            session.startRefused(.shutdown)
            return eventLoop.makeSucceededFuture(refusedHeaders)
        }
        if let failure = auth?.failure {
            session.startRefused(.unauthorized, reason: "unauthorized: \(failure)", error: "token: \(failure)")
            return eventLoop.makeSucceededFuture(refusedHeaders)
        }
        var claimHeaders: [(String, String)] = []
        if let token = auth?.token, let settings = match.route.auth {
            session.authenticated(subject: token.subject, expiresAt: token.expiresAt, channels: token.channels)
            for (claim, header) in settings.forwardClaims {
                if let value = token.claims[claim], !value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
                    claimHeaders.append((header, value))
                }
            }
        }
        let upstream: UpstreamLeg
        do {
            upstream = try UpstreamFactory(resources: gateway.upstreams).make(
                for: match, request: head, forwardedFor: forwarded.header, clientIP: forwarded.clientIP ?? channel.remoteAddress?.ipAddress ?? "",
                connectionID: session.id, eventLoop: eventLoop, claimHeaders: claimHeaders,
                removedHeaders: Set(match.route.auth?.forwardClaims.map { $0.header.lowercased() } ?? []))
        } catch {
            session.startRefused(.internalError)
            return eventLoop.makeSucceededFuture(refusedHeaders)
        }
        return session.start(upstream: upstream).map { chosen in
            if let chosen { return ["Sec-WebSocket-Protocol": chosen] }
            return refusedHeaders
        }
    }

    /// NIO's `upgradePipelineHandler`: the 101 is out; the leg handler
    /// replaces NIO's frame decoder.
    func upgraded(channel: Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture { [self] in
            guard let session = self.session else { throw ChannelError.inappropriateOperationForState }
            // The rejection handler must go before the first frame arrives.
            let reject = try channel.pipeline.syncOperations.handler(type: RejectHandler.self)
            channel.pipeline.syncOperations.removeHandler(reject, promise: nil)
            // No frame codec from NIO (`FramelessServerUpgrader`): the leg
            // handler frames the stream itself and writes bytes.
            let handler = WebSocketLegHandler(
                role: .server(relayAs: session.clientFrameFormat), delegate: session,
                maxMessageBytes: self.gateway.settings.maxMessageBytes)
            try channel.pipeline.syncOperations.addHandler(handler)
            channel.pipeline.syncOperations.removeHandler(self.limiter, promise: nil)
            self.leavePending()
            session.clientAttached(handler)
            if self.limiter.overflowed {
                // It flooded before its 101: what it sent was not kept, and
                // it is told so now.
                session.legViolation(.messageTooBig(limit: RequestHeadLimiter.maxEarlyBytes), framingBroken: true)
            }
            self.readGate.release()
        }
    }
}
