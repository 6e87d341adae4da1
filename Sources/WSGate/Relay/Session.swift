import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// One client connection, from its upgrade request to its close-event line.
///
/// The Session is the single owner of the connection's end. Events from both
/// legs (client frames and close, client EOF, upstream frames, close, errors,
/// timers, shutdown) arrive here; the first one that ends the connection
/// becomes *the* cause, later ones are ignored. The `ClosePolicy` turns the
/// cause into what the client gets, and once both legs have ended the Session
/// writes exactly one `websocket_close` line. No other code path sends a close
/// frame to the client or writes a close line.
///
/// Thread-safety: a Session and both of its legs live on the client channel's
/// event loop (the upstream channel is created on the same loop); every
/// method must be called there. That is why it can be `@unchecked Sendable`
/// without locks: NIO closures that hop nowhere may capture it.
final class Session: @unchecked Sendable {
    enum Phase {
        /// Waiting for the upstream to connect; the client has no 101 yet.
        case connectingUpstream
        /// Frames flow both ways.
        case relaying
        /// A cause has been decided; legs are finishing their close handshakes.
        case closing
        /// Both legs ended; the close line is written.
        case closed
    }

    let id: String
    let route: Route
    let upstreamLabel: String
    let clientAddress: String
    let eventLoop: EventLoop
    let gateway: GatewayContext
    private let startedAt = NIODeadline.now()

    private(set) var phase = Phase.connectingUpstream
    private var client: ClientLegHandler?
    private(set) var upstream: UpstreamLeg?

    /// Upgraded: the client got (or is getting) its 101, so this connection
    /// will be logged as a `websocket_close`.
    private var upgraded = false
    private var clientDone = false
    private var upstreamDone = false

    // The decision.
    private var cause: CloseCause?
    private var details = CloseDetails()
    private var decision: CloseDecision?
    private var errorText: String?
    private var upstreamCode: UInt16?
    private var upstreamReason: String?
    private var wasClean = false
    private var closeTimer: Scheduled<Void>?
    /// NIO's frame decoder stopped after a framing error: the client's close
    /// reply can no longer be parsed.
    private var clientFramingBroken = false
    private var clientErrorText: String?

    /// Frames the upstream sent before the client leg was attached (with
    /// the 101 that upgraded the upstream connection).
    private var earlyUpstreamFrames: [(bytes: ByteBuffer, messages: Int, payloadBytes: Int)] = []

    // Counters for the log line.
    private var messagesIn: UInt64 = 0
    private var messagesOut: UInt64 = 0
    private var bytesIn: UInt64 = 0
    private var bytesOut: UInt64 = 0

    /// What the metrics have been told so far (deltas are added per read
    /// batch, not per frame).
    private var reported = (messagesIn: UInt64(0), messagesOut: UInt64(0), bytesIn: UInt64(0), bytesOut: UInt64(0))
    private let connectStarted = NIODeadline.now()

    // Idle timeout bookkeeping: the clock is read per read batch, not per frame.
    private var lastActivity = NIODeadline.now()
    private var idleTimer: Scheduled<Void>?

    init(id: String, route: Route, upstreamURL: URLParts?, clientAddress: String, eventLoop: EventLoop, gateway: GatewayContext) {
        self.id = id
        self.route = route
        self.upstreamLabel = upstreamURL?.description ?? route.upstream.description
        self.clientAddress = clientAddress
        self.eventLoop = eventLoop
        self.gateway = gateway
    }

    // MARK: - Setting up

    /// Connects the upstream leg. The returned future never fails: on failure
    /// the cause is recorded and the client is still upgraded, so that it can
    /// be told what went wrong with a close code instead of a bare 1006.
    func start(upstream: UpstreamLeg) -> EventLoopFuture<String?> {
        eventLoop.preconditionInEventLoop()
        self.upstream = upstream
        gateway.registry.add(self)
        return upstream.connect().map { chosen in
            if self.route.upstream != .echo {  // the built-in echo has nothing to connect to
                self.gateway.metrics.upstreamConnect.recordNanoseconds((NIODeadline.now() - self.connectStarted).nanoseconds)
            }
            return chosen
        }.flatMapError { error in
            let failure = error as? UpstreamFailure
                ?? UpstreamFailure(.internalError, error: "\(error)")
            self.finish(failure.cause, failure.details, error: failure.error)
            return self.eventLoop.makeSucceededFuture(nil)
        }
    }

    /// Starts a session that is refused after the upgrade (over the
    /// connection limit): the client gets a close code it can act on.
    func startRefused(_ cause: CloseCause) {
        gateway.registry.add(self)
        upstreamDone = true
        finish(cause, CloseDetails(), error: nil)
    }

    /// The client's 101 went out and its frame handlers are in place.
    func clientAttached(_ handler: ClientLegHandler) {
        eventLoop.preconditionInEventLoop()
        client = handler
        upgraded = true
        gateway.metrics.connectionOpened(route: route.path)
        if clientDone {
            // The client vanished between the 101 and now.
            return
        }
        if decision != nil {
            applyDecisionToClient()
            return
        }
        phase = .relaying
        for early in earlyUpstreamFrames { upstreamFrames(early.bytes, messages: early.messages, payloadBytes: early.payloadBytes) }
        earlyUpstreamFrames = []
        client?.flush()
        upstream?.startRelaying()
        scheduleIdleCheck()
    }

    // MARK: - Events from the client leg

    var isClientWritable: Bool { client?.isWritable ?? false }

    /// Whether the client leg may read more: only while the upstream can take
    /// it, except once closing, when the client's close reply must be read.
    var mayReadClient: Bool {
        switch phase {
        case .relaying: return upstream?.isWritable ?? false
        case .closing: return true
        case .connectingUpstream, .closed: return false
        }
    }

    var mayReadUpstream: Bool {
        switch phase {
        case .relaying: return client?.isWritable ?? false
        case .closing: return true
        case .connectingUpstream: return false
        case .closed: return true
        }
    }

    /// How the client leg hands data frames over: what the upstream takes.
    var clientFrameFormat: ClientFrameFormat { upstream?.clientFrameFormat ?? .messages }

    /// One client data frame, for upstreams that take messages.
    func clientData(_ frame: DataFrame) {
        guard phase == .relaying else { return }  // after a decision, data is dropped
        bytesIn &+= UInt64(frame.payload.readableBytes)
        if frame.fin { messagesIn &+= 1 }
        upstream?.send(frame)
    }

    /// Client data frames of one read, serialized in `clientFrameFormat`.
    func clientFrames(_ bytes: ByteBuffer, messages: Int, payloadBytes: Int) {
        guard phase == .relaying else { return }  // after a decision, data is dropped
        bytesIn &+= UInt64(payloadBytes)
        messagesIn &+= UInt64(messages)
        upstream?.sendFrames(bytes, messages: messages, payloadBytes: payloadBytes)
    }

    func clientReadComplete() {
        if phase == .relaying {
            upstream?.flush()
            lastActivity = .now()
            reportTraffic()
        }
    }

    /// Adds this connection's new traffic to the gateway-wide counters.
    private func reportTraffic() {
        let metrics = gateway.metrics
        if messagesIn != reported.messagesIn {
            metrics.messagesIn.increment(by: Int64(messagesIn - reported.messagesIn))
            metrics.bytesIn.increment(by: Int64(bytesIn - reported.bytesIn))
            reported.messagesIn = messagesIn
            reported.bytesIn = bytesIn
        }
        if messagesOut != reported.messagesOut {
            metrics.messagesOut.increment(by: Int64(messagesOut - reported.messagesOut))
            metrics.bytesOut.increment(by: Int64(bytesOut - reported.bytesOut))
            reported.messagesOut = messagesOut
            reported.bytesOut = bytesOut
        }
    }

    func clientClose(code: UInt16?, reason: String) {
        if decision == nil {
            finish(.clientClosed, CloseDetails(peerCode: code, peerReason: reason), error: nil)
        } else if client?.closeFrameSent == true {
            // The reply to our close: the handshake is complete, and the server
            // side closes the TCP connection (RFC 6455 §7.1.1).
            wasClean = true
            client?.closeConnection()
        }
    }

    func clientViolation(_ violation: FrameViolation, framingBroken: Bool) {
        if framingBroken { clientFramingBroken = true }
        switch violation {
        case .protocolError(let detail):
            finish(.clientProtocolError, CloseDetails(reasonOverride: "protocol error: \(detail)"), error: detail)
        case .invalidUTF8:
            finish(.clientInvalidUTF8, CloseDetails(), error: "invalid UTF-8 in a text message or close reason")
        case .messageTooBig(let limit):
            finish(.clientMessageTooBig, CloseDetails(), error: "message over \(limit) bytes")
        }
    }

    func clientWritabilityChanged() {
        if isClientWritable { upstream?.clientBecameWritable() }
    }

    /// An I/O error on the client connection (it is being closed).
    func noteClientError(_ error: Error) {
        if clientErrorText == nil { clientErrorText = "client connection: \(error)" }
    }

    /// The client's TCP connection is closed (whoever closed it).
    func clientConnectionClosed() {
        guard !clientDone else { return }
        let error = clientErrorText
        clientDone = true
        closeTimer?.cancel()
        closeTimer = nil
        if !upgraded {
            // Gone before its 101: no close event, just a rejection record.
            gateway.eventLog.rejected(.init(
                status: 499, reason: "client closed the connection during the upstream handshake",
                method: "GET", path: route.path, clientAddress: clientAddress, route: route.path, error: error))
            upstream?.abort()
            if !upstreamDone { upstreamDone = true }
            gateway.registry.remove(self)
            phase = .closed
            return
        }
        if decision == nil {
            finish(.clientGone, CloseDetails(), error: error ?? "client closed TCP without a close frame")
        } else if clientFramingBroken && client?.closeFrameSent == true && error == nil {
            // After a framing error the reply can't be parsed; an orderly FIN
            // after our close frame is the best evidence of a clean close.
            wasClean = true
        }
        maybeEmit()
    }

    // MARK: - Events from the upstream leg

    /// Upstream data frames of one read, already serialized for the client.
    func upstreamFrames(_ bytes: ByteBuffer, messages: Int, payloadBytes: Int) {
        switch phase {
        case .connectingUpstream:
            earlyUpstreamFrames.append((bytes, messages, payloadBytes))
        case .relaying:
            bytesOut &+= UInt64(payloadBytes)
            messagesOut &+= UInt64(messages)
            client?.writeFrames(bytes)
        case .closing, .closed:
            break
        }
    }

    /// One message from an upstream that produces messages (HTTP).
    func upstreamReceived(_ frame: WebSocketFrame) {
        switch phase {
        case .connectingUpstream:
            break  // such upstreams answer only what the client sent
        case .relaying:
            bytesOut &+= UInt64(frame.data.readableBytes)
            if frame.fin { messagesOut &+= 1 }
            client?.write(frame)
        case .closing, .closed:
            break
        }
    }

    func upstreamReadComplete() {
        if phase == .relaying {
            client?.flush()
            lastActivity = .now()
            reportTraffic()
        }
    }

    func upstreamBecameWritable() {
        client?.resumeReading()
    }

    /// The upstream sent a close frame (the leg has already answered it).
    func upstreamClosed(code: UInt16?, reason: String) {
        upstreamCode = code ?? 1005
        upstreamReason = reason
        finish(.upstreamClosed, CloseDetails(peerCode: code, peerReason: reason), error: nil)
    }

    func upstreamFailed(_ failure: UpstreamFailure) {
        finish(failure.cause, failure.details, error: failure.error)
    }

    /// The leg sent a close frame of its own to the upstream (for the log).
    func upstreamCloseSent(code: UInt16?, reason: String) {
        if upstreamCode == nil {
            upstreamCode = code ?? 1005
            upstreamReason = reason
        }
    }

    func upstreamEnded() {
        guard !upstreamDone else { return }
        upstreamDone = true
        if decision == nil && upgraded {
            finish(.upstreamReset, CloseDetails(), error: "upstream ended without a close frame")
        }
        maybeEmit()
    }

    // MARK: - Gateway events

    /// Graceful drain: the client gets `shutdown.close_code`.
    func shutdown() {
        finish(.shutdown, CloseDetails(), error: nil)
    }

    /// End of the drain period: drop whatever is still open.
    func forceClose() {
        finish(.shutdown, CloseDetails(), error: "drain timeout")
        upstream?.abort()
        client?.abortConnection()
    }

    // MARK: - The decision

    /// Records the first cause and acts on it; later causes are ignored.
    func finish(_ cause: CloseCause, _ details: CloseDetails, error: String?) {
        eventLoop.preconditionInEventLoop()
        guard self.cause == nil else { return }
        self.cause = cause
        self.details = details
        self.errorText = error
        let decision = gateway.policy.decide(cause, details)
        self.decision = decision
        if phase != .closed { phase = .closing }
        idleTimer?.cancel()
        idleTimer = nil
        if gateway.logger.logLevel <= .debug {
            gateway.logger.debug("close_decided", metadata: [
                "connection_id": .string(id), "cause": .string(cause.rawValue), "code": .stringConvertible(Int(decision.code)),
            ])
        }
        if client != nil && !clientDone { applyDecisionToClient() }
        closeUpstream(for: cause)
        maybeEmit()
    }

    private func applyDecisionToClient() {
        guard let client, let decision, let cause, !clientDone else { return }
        let closeWait = gateway.settings.closeHandshake
        switch (cause, decision.action) {
        case (_, .none):
            client.closeConnection()
        case (.clientClosed, _):
            // Echo the client's close, then close TCP: the handshake is complete.
            client.sendClose(code: decision.action == .sendEmpty ? nil : decision.code, reason: decision.reason) { [self] ok in
                if ok { self.wasClean = true }
                self.client?.closeConnection()
            }
        case (_, .abort):
            client.abortConnection()
        case (_, .sendCode), (_, .sendEmpty):
            let code = decision.action == .sendEmpty ? nil : decision.code
            let broken = clientFramingBroken
            client.sendClose(code: code, reason: decision.reason) { [self] ok in
                // Our close is out; with a broken decoder we can't read the
                // reply, so we half-close and wait for the client's FIN.
                if ok && broken { self.client?.closeOutput() }
            }
            closeTimer = eventLoop.scheduleTask(in: closeWait) { [self] in
                // The client did not answer our close in time.
                self.client?.closeConnection()
            }
        }
    }

    private func closeUpstream(for cause: CloseCause) {
        guard let upstream else { return }
        switch cause {
        case .clientClosed:
            upstream.close(code: details.peerCode, reason: details.peerReason)
        case .clientGone:
            upstream.close(code: 1001, reason: "client gone")
        case .clientProtocolError:
            upstream.close(code: 1001, reason: "client protocol error")
        case .clientInvalidUTF8:
            upstream.close(code: 1001, reason: "client sent invalid UTF-8")
        case .clientMessageTooBig:
            upstream.close(code: 1001, reason: "client message too big")
        case .idleTimeout:
            upstream.close(code: 1001, reason: "idle timeout")
        case .shutdown:
            upstream.close(code: gateway.policy.shutdownCode, reason: gateway.policy.defaultReason(.shutdown, details))
        case .overloaded:
            upstream.close(code: 1013, reason: "gateway overloaded")
        case .internalError:
            upstream.close(code: 1011, reason: "gateway internal error")
        case .upstreamClosed, .upstreamProtocolError:
            upstream.close(code: 1000, reason: "")  // the leg is already closing; no-op
        case .upstreamUnreachable, .upstreamTLSError, .upstreamTimeout, .upstreamHandshakeRejected,
            .upstreamReset, .upstreamHTTPError:
            upstream.abort()
        }
    }

    private func maybeEmit() {
        guard phase != .closed, let decision, let cause, clientDone, upstreamDone else { return }
        phase = .closed
        closeTimer?.cancel()
        gateway.registry.remove(self)
        guard upgraded else { return }
        let duration = (NIODeadline.now() - startedAt).nanoseconds / 1_000_000
        let event = CloseEvent(
            timestamp: Timestamp.nowMilliseconds(), connectionID: id, route: route.path, upstream: upstreamLabel,
            clientAddress: clientAddress, code: decision.code, reason: decision.reason,
            wasClean: decision.action == .abort || decision.action == .none ? false : wasClean,
            initiator: cause.initiator, cause: cause, upstreamCode: upstreamCode, upstreamReason: upstreamReason,
            upstreamStatus: details.httpStatus, error: errorText, durationMs: duration,
            messagesIn: messagesIn, messagesOut: messagesOut, bytesIn: bytesIn, bytesOut: bytesOut)
        gateway.eventLog.closed(event)
        reportTraffic()
        gateway.metrics.connectionClosed(event)
        upstream?.connectionFinished(event)
        // Break the session ↔ leg reference cycles.
        client = nil
        upstream = nil
    }

    // MARK: - Idle timeout

    private func scheduleIdleCheck() {
        let idle = gateway.settings.idleTimeout
        guard idle > .zero, phase == .relaying else { return }
        let due = lastActivity + idle
        idleTimer = eventLoop.scheduleTask(deadline: due) { [self] in
            guard self.phase == .relaying else { return }
            if self.lastActivity + idle <= .now() {
                self.finish(.idleTimeout, CloseDetails(), error: nil)
            } else {
                self.scheduleIdleCheck()
            }
        }
    }

    /// Control frames count as traffic for the idle timer.
    func noteActivity() {
        lastActivity = .now()
    }
}
