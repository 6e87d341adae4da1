import WSGatePolicy
import WSGateProtocol
import Logging
import NIOCore

/// One client connection, from its upgrade request to its close-event line:
/// the thin part that carries out what its `SessionStateMachine` decides.
///
/// Events from both legs (client frames and close, client EOF, upstream
/// frames, close, errors, timers, shutdown) arrive here and go to the state
/// machine, which records the first cause and returns the actions: what the
/// client and the upstream are sent, which timers run, and, once both legs
/// have ended, the one `websocket_close` line. The Session owns the channels'
/// handlers, the timers, the traffic counters and the frames the upstream
/// sent before the client's 101; it decides nothing about how a connection
/// ends. No other code path sends a close frame to the client or writes a
/// close line.
///
/// Thread-safety: a Session and both of its legs live on the client channel's
/// event loop (the upstream channel is created on the same loop); every
/// method must be called there. That is why it can be `@unchecked Sendable`
/// without locks: NIO closures that hop nowhere may capture it.
final class Session: UpstreamLegDelegate, WebSocketLegDelegate, @unchecked Sendable {
    let id: String
    /// The route's `path` as configured (metrics and log lines). Only this is
    /// kept, not the `Route` (about 500 bytes inline) that every one of
    /// thousands of idle sessions would carry.
    let routePath: String
    /// The built-in echo has nothing to connect to.
    private let isBuiltinEcho: Bool
    let upstreamLabel: String
    let clientAddress: String
    let eventLoop: EventLoop
    let environment: SessionEnvironment
    private let startedAt = NIODeadline.now()

    private var machine: SessionStateMachine
    private var client: WebSocketLegHandler?
    private(set) var upstream: UpstreamLeg?
    private var closeTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    /// The I/O error that closed the client connection, if one did.
    private var clientErrorText: String?

    /// Frames the upstream sent before the client leg was attached (with
    /// the 101 that upgraded the upstream connection).
    private var earlyUpstreamFrames: [FrameBatch] = []

    // Counters for the log line.
    private var messagesIn: UInt64 = 0
    private var messagesOut: UInt64 = 0
    private var bytesIn: UInt64 = 0
    private var bytesOut: UInt64 = 0

    /// What the metrics have been told so far (deltas are added per read
    /// batch, not per frame).
    private var reported = (messagesIn: UInt64(0), messagesOut: UInt64(0), bytesIn: UInt64(0), bytesOut: UInt64(0))
    private let connectStarted = NIODeadline.now()

    /// When a frame last passed either way; read per read batch, not per frame.
    private var lastActivity = NIODeadline.now()
    /// When the message and byte counters are next brought up to date.
    private var nextTrafficReport = NIODeadline.uptimeNanoseconds(0)

    /// The upstream's `host:port` (nil for the built-in echo), and how many
    /// times it was dialled: the log line's `target` and `attempts`.
    private let upstreamTarget: String?
    private var connectAttempts = 0
    /// The address this connection counts against (`max_connections_per_ip`).
    private var countedIP: String?
    /// `rate_limit`: the client's buckets, and the timer that resumes a
    /// throttled client.
    private var rateLimiter: RateLimiter?
    private var throttleTimer: Scheduled<Void>?
    /// When the connection started (ms since the epoch), for the control API.
    let connectedAt = Timestamp.nowMilliseconds()
    /// Channels this connection is subscribed to (from `connect_url`'s
    /// `X-WSGate-Channels` or the token's `channels` claim).
    private(set) var channels: [String] = []
    private var subscribed = false
    /// The token's `sub` (the log's `subject`), and the timer at its `exp`.
    private(set) var subject: String?
    private var expiryTimer: Scheduled<Void>?
    /// What a throttled client sent in the read that put it over: held until
    /// it is back under (at most one read cycle: it is not read meanwhile).
    private var heldBatches: [FrameBatch] = []

    init(id: String, route: Route, upstreamURL: URLParts?, clientAddress: String, eventLoop: EventLoop, environment: SessionEnvironment) {
        self.id = id
        self.routePath = route.path
        self.isBuiltinEcho = route.upstream == .echo
        // Redacted once (log.redact_query): the close line and the
        // disconnect_url body both carry it.
        self.upstreamLabel = environment.eventLog.redaction.redact(upstreamURL?.description ?? route.upstream.description)
        self.upstreamTarget = upstreamURL.map { url in
            url.host.contains(":") ? "[\(url.host)]:\(url.port)" : "\(url.host):\(url.port)"
        }
        self.clientAddress = clientAddress
        self.eventLoop = eventLoop
        self.environment = environment
        self.machine = SessionStateMachine(
            policy: environment.policy(for: route), idleTimeout: environment.settings.idleTimeout,
            closeHandshake: environment.settings.closeHandshake)
        self.rateLimiter = route.rateLimit.map { RateLimiter($0, now: NIODeadline.now().uptimeNanoseconds) }
    }

    /// The connection's phase (for tests and debugging).
    var phase: SessionStateMachine.Phase { machine.phase }

    // MARK: - Setting up

    /// Connects the upstream leg. The returned future never fails: on failure
    /// the cause is recorded and the client is still upgraded, so that it can
    /// be told what went wrong with a close code instead of a bare 1006.
    func start(upstream: UpstreamLeg) -> EventLoopFuture<String?> {
        eventLoop.preconditionInEventLoop()
        self.upstream = upstream
        environment.registry.add(self)
        if upstreamTarget != nil { connectAttempts += 1 }
        return upstream.connect(delegate: self).map { chosen in
            if !self.isBuiltinEcho {
                self.environment.metrics.upstreamConnect.recordNanoseconds((NIODeadline.now() - self.connectStarted).nanoseconds)
            }
            self.perform(self.machine.upstreamConnected())
            return chosen
        }.flatMapError { error in
            let failure = error as? UpstreamFailure
                ?? UpstreamFailure(.internalError, error: "\(error)")
            self.perform(self.machine.upstreamFailed(failure.cause, failure.details, error: failure.error))
            return self.eventLoop.makeSucceededFuture(nil)
        }
    }

    /// Starts a session that is refused after the upgrade (over the
    /// connection limit): the client gets a close code it can act on.
    func startRefused(_ cause: CloseCause, reason: String? = nil, error: String? = nil) {
        environment.registry.add(self)
        perform(machine.refused(cause, reason: reason, error: error))
    }

    /// The client's token passed: its subject is logged, and the connection
    /// is closed 1008 `token expired` when its `exp` passes (a timer, not a
    /// poll).
    func authenticated(subject: String?, expiresAt: Double?, channels: [String] = []) {
        self.subject = subject
        self.channels += channels
        guard let expiresAt else { return }
        let left = expiresAt - Double(Timestamp.nowMilliseconds()) / 1000
        expiryTimer = eventLoop.scheduleTask(in: .milliseconds(Int64(max(0, left) * 1000))) { [self] in
            self.expiryTimer = nil
            self.perform(self.machine.policyClose(.tokenExpired, error: "the token's exp passed"))
        }
    }

    // MARK: The control API (called on this session's event loop)

    enum PushResult {
        case sent
        /// Ended, or not relaying (yet or any more).
        case gone
        /// The client is not taking what it is sent (its channel is over its
        /// high-water mark): the pusher is told 429 rather than queueing more.
        case busy
    }

    /// One message to the client, as one frame, between relayed ones.
    func push(_ payload: ByteBuffer, binary: Bool) -> PushResult {
        push(frame: Self.frame(payload, binary: binary), payloadBytes: payload.readableBytes)
    }

    /// One unmasked frame as it goes to clients; a broadcast makes it once
    /// and every subscriber's write shares its bytes.
    static func frame(_ payload: ByteBuffer, binary: Bool) -> ByteBuffer {
        MaskedFrameWriter.serialize(
            fin: true, opcode: binary ? .binary : .text, payload: payload, payloadMaskedWith: nil, newKey: nil,
            allocator: ByteBufferAllocator())
    }

    func push(frame: ByteBuffer, payloadBytes: Int) -> PushResult {
        eventLoop.preconditionInEventLoop()
        guard machine.phase == .relaying, let client else {
            environment.metrics.pushGone.increment()
            return .gone
        }
        guard client.isWritable else {
            environment.metrics.pushBusy.increment()
            return .busy
        }
        environment.metrics.pushSent.increment()
        messagesOut &+= 1
        bytesOut &+= UInt64(payloadBytes)
        client.writeFrames(frame)
        client.flush()
        lastActivity = .now()
        return .sent
    }

    /// Closes the connection with the backend's code (cause `kicked`).
    func kick(code: UInt16, reason: String) -> Bool {
        eventLoop.preconditionInEventLoop()
        guard machine.phase == .relaying || machine.phase == .connecting else { return false }
        perform(machine.kicked(code: code, reason: reason))
        return true
    }

    /// When a frame last passed either way (ms since the epoch).
    var lastActiveAt: UInt64 {
        let idle = (NIODeadline.now() - lastActivity).nanoseconds / 1_000_000
        return Timestamp.nowMilliseconds() - UInt64(max(0, idle))
    }

    /// Counts this connection against `max_connections_per_ip`; false when
    /// the address is at the limit.
    func countIP(_ ip: String) -> Bool {
        guard environment.perIP.enter(ip) else { return false }
        countedIP = ip
        return true
    }

    /// The client's frame format: what the upstream takes (echo without an
    /// upstream: frames that can go back to the client).
    var clientFrameFormat: ClientFrameFormat { upstream?.clientFrameFormat ?? .plainFrames }

    /// The client's 101 went out and its frame handler is in place.
    func clientAttached(_ handler: WebSocketLegHandler) {
        eventLoop.preconditionInEventLoop()
        let wasAwaiting = machine.client == .awaitingUpgrade
        let actions = machine.clientAttached()
        // A client gone before its 101 has already ended the session: keeping
        // its handler would hold the session ↔ handler cycle forever.
        guard wasAwaiting else { return }
        client = handler
        lastActivity = .now()
        environment.metrics.connectionOpened(route: routePath)
        perform(actions)
    }

    // MARK: - Events from the client leg (WebSocketLegDelegate)

    var isClientWritable: Bool { client?.isWritable ?? false }

    /// Whether the client leg may read more: only while the upstream can take
    /// it, except once closing, when the client's close reply must be read.
    ///
    /// The leg is asked first and the state machine after: an argument that
    /// calls out to other code, evaluated after `machine` was loaded, makes
    /// Swift copy the whole machine to protect it (callgrind: a copy and a
    /// destroy of it on every call, several calls per message).
    var legMayRead: Bool {
        guard throttleTimer == nil else { return false }
        let upstreamWritable = upstream?.isWritable ?? false
        return machine.mayReadClient(upstreamWritable: upstreamWritable)
    }

    /// Client data frames of one read, serialized in `clientFrameFormat`.
    func legFrames(_ batch: FrameBatch) {
        guard machine.relaysClientData else { return }  // after a decision, data is dropped
        bytesIn &+= UInt64(batch.payloadBytes)
        messagesIn &+= UInt64(batch.messages)
        if rateLimiter != nil {
            if throttleTimer != nil {
                // The rest of the read cycle that went over: held, and
                // charged now, so that the release waits for it too.
                _ = rateLimiter!.take(messages: batch.messages, bytes: batch.payloadBytes, now: NIODeadline.now().uptimeNanoseconds)
                heldBatches.append(batch)
                return
            }
            guard admitUnderRateLimit(batch) else { return }
        }
        upstream?.send(batch)
    }

    /// `rate_limit`: counts a read batch. Over the rate with `throttle`, the
    /// batch is held and the client is not read until it is back under (its
    /// TCP window fills: backpressure), then the batch goes on; with `close`
    /// the batch is dropped and the connection closed 1008.
    private func admitUnderRateLimit(_ batch: FrameBatch) -> Bool {
        let over = rateLimiter!.take(messages: batch.messages, bytes: batch.payloadBytes, now: NIODeadline.now().uptimeNanoseconds)
        guard over > 0 else { return true }
        let action = rateLimiter!.settings.action
        environment.metrics.rateLimited(route: routePath, action: action.rawValue)
        switch action {
        case .close:
            perform(machine.policyClose(.rateLimited, error: "client \(rateLimiter!.description)"))
            return false
        case .throttle:
            heldBatches.append(batch)
            releaseHeld(after: over)
            return false
        }
    }

    /// A throttled client's held batches go on once the buckets are out of
    /// debt (batches held after the first were charged when they arrived);
    /// then the client is read again.
    private func releaseHeld(after wait: UInt64) {
        throttleTimer = eventLoop.scheduleTask(in: .nanoseconds(Int64(wait))) { [self] in
            self.throttleTimer = nil
            guard self.machine.relaysClientData else { return }
            let left = self.rateLimiter!.debt(now: NIODeadline.now().uptimeNanoseconds)
            guard left == 0 else { return self.releaseHeld(after: left) }
            let held = self.heldBatches
            self.heldBatches = []
            for batch in held { self.upstream?.send(batch) }
            self.upstream?.flush()
            self.client?.resumeReading()
        }
    }

    func legReadComplete() {
        if machine.phase == .relaying {
            upstream?.flush()
            trafficRelayed()
        }
    }

    func legClose(code: UInt16?, reason: String) {
        perform(machine.clientCloseReceived(code: code, reason: reason))
    }

    func legViolation(_ violation: FrameViolation, framingBroken: Bool) {
        perform(machine.clientViolation(violation, framingBroken: framingBroken))
    }

    func legWritabilityChanged(_ writable: Bool) {
        if writable { upstream?.clientBecameWritable() }
    }

    /// An error on the client connection: I/O errors close it next, and the
    /// first is kept for the log's `error`.
    func legError(_ error: Error) {
        if error is IOError, clientErrorText == nil { clientErrorText = "client connection: \(error)" }
    }

    /// Control frames count as traffic for the idle timer.
    func legActivity() {
        lastActivity = .now()
    }

    /// The client's TCP connection is closed (whoever closed it).
    func clientConnectionClosed() {
        perform(machine.clientConnectionClosed(error: clientErrorText))
    }

    // MARK: - UpstreamLegDelegate

    func upstreamSent(_ batch: FrameBatch) {
        switch machine.upstreamDataDisposition {
        case .forward:
            bytesOut &+= UInt64(batch.payloadBytes)
            messagesOut &+= UInt64(batch.messages)
            client?.writeFrames(batch.bytes)
        case .hold:
            earlyUpstreamFrames.append(batch)
        case .drop:
            break
        }
    }

    func upstreamReadComplete() {
        if machine.phase == .relaying {
            client?.flush()
            trafficRelayed()
        }
    }

    /// (Writability first, then the machine: see `legMayRead`.)
    var mayReadUpstream: Bool {
        let clientWritable = isClientWritable
        return machine.mayReadUpstream(clientWritable: clientWritable)
    }

    func upstreamBecameWritable() {
        client?.resumeReading()
    }

    func upstreamEvent(_ event: UpstreamEvent) {
        switch event {
        case .closeReceived(let code, let reason):
            perform(machine.upstreamCloseReceived(code: code, reason: reason))
        case .closeSent(let code, let reason):
            perform(machine.upstreamCloseSent(code: code, reason: reason))
        case .failed(let failure):
            perform(machine.upstreamFailed(failure.cause, failure.details, error: failure.error))
        case .ended:
            perform(machine.upstreamEnded())
        }
    }

    // MARK: - Gateway events

    /// Graceful drain: the client gets `shutdown.close_code`.
    func shutdown() {
        perform(machine.shutdown())
    }

    /// End of the drain period: drop whatever is still open.
    func forceClose() {
        perform(machine.drainTimedOut())
    }

    // MARK: - Carrying out the actions

    private func perform(_ actions: SessionStateMachine.Actions) {
        eventLoop.preconditionInEventLoop()
        if actions.isNone { return }
        if let cause = actions.decided, environment.logger.logLevel <= .debug, let decision = machine.decision {
            environment.logger.debug("close_decided", metadata: [
                "connection_id": .string(id), "cause": .string(cause.rawValue), "code": .stringConvertible(Int(decision.client.code)),
            ])
        }
        if let timer = actions.idleTimer { setIdleTimer(timer) }
        if let timer = actions.closeTimer { setCloseTimer(timer) }
        if let action = actions.client { apply(action) }
        if actions.startRelaying { startRelaying() }
        if let action = actions.upstream { upstream?.apply(action) }
        if actions.dropBothLegs {
            upstream?.abort()
            client?.abortConnection()
        }
        if let ending = actions.ending { end(ending) }
    }

    private func apply(_ action: SessionStateMachine.ClientAction) {
        guard let client else { return }
        switch action {
        case .sendClose(let code, let reason):
            client.sendClose(code: code, reason: reason) { [self] ok in
                self.perform(self.machine.clientCloseWritten(ok: ok))
            }
        case .closeTCP:
            client.closeConnection()
        case .closeOutput:
            client.closeOutput()
        case .abort:
            client.abortConnection()
        }
    }

    private func startRelaying() {
        channels += upstream?.subscribedChannels ?? []
        if !channels.isEmpty {
            channels = Array(Set(channels)).sorted()
            environment.channels.subscribe(self, to: channels)
            subscribed = true
        }
        for early in earlyUpstreamFrames { upstreamSent(early) }
        earlyUpstreamFrames = []
        client?.flush()
        upstream?.startRelaying()
    }

    private func setCloseTimer(_ action: SessionStateMachine.TimerAction) {
        closeTimer?.cancel()
        closeTimer = nil
        if case .schedule(let delay) = action {
            closeTimer = eventLoop.scheduleTask(in: delay) { [self] in
                self.perform(self.machine.clientCloseTimerFired())
            }
        }
    }

    private func setIdleTimer(_ action: SessionStateMachine.TimerAction) {
        idleTimer?.cancel()
        idleTimer = nil
        if case .schedule(let delay) = action {
            idleTimer = eventLoop.scheduleTask(in: delay) { [self] in
                self.perform(self.machine.idleTimerFired(sinceActivity: .now() - self.lastActivity))
            }
        }
    }

    private func end(_ ending: SessionStateMachine.Ending) {
        closeTimer?.cancel()
        idleTimer?.cancel()
        throttleTimer?.cancel()
        expiryTimer?.cancel()
        if subscribed {
            environment.channels.unsubscribe(self, from: channels)
            subscribed = false
        }
        heldBatches = []
        if let ip = countedIP {
            environment.perIP.leave(ip)
            countedIP = nil
        }
        environment.registry.remove(self)
        switch ending {
        case .abandonedBeforeUpgrade(let error):
            environment.eventLog.rejected(.init(
                status: 499, reason: "client closed the connection during the upstream handshake",
                method: "GET", path: routePath, clientAddress: clientAddress, route: routePath, error: error))
        case .closed(let outcome):
            let duration = (NIODeadline.now() - startedAt).nanoseconds / 1_000_000
            var event = CloseEvent(
                timestamp: Timestamp.nowMilliseconds(), connectionID: id, route: routePath, upstream: upstreamLabel,
                clientAddress: clientAddress, code: outcome.code, reason: outcome.reason, wasClean: outcome.wasClean,
                initiator: outcome.cause.initiator, cause: outcome.cause, upstreamCode: outcome.upstreamCode,
                upstreamReason: outcome.upstreamReason, upstreamStatus: outcome.upstreamStatus,
                error: outcome.error.map(environment.eventLog.redaction.redact),
                durationMs: duration, messagesIn: messagesIn, messagesOut: messagesOut, bytesIn: bytesIn, bytesOut: bytesOut,
                target: connectAttempts > 0 ? upstreamTarget : nil, attempts: upstreamTarget == nil ? nil : connectAttempts,
                subject: subject)
            if let report = upstream?.dialled {
                // A pool: the target chosen last and every attempt.
                event.target = report.target
                event.attempts = report.attempts
                if let url = report.url { event.upstream = environment.eventLog.redaction.redact(url.description) }
            }
            environment.eventLog.closed(event)
            reportTraffic()
            environment.metrics.connectionClosed(event)
            upstream?.connectionFinished(event)
        }
        // Break the session ↔ leg reference cycles.
        client = nil
        upstream = nil
        earlyUpstreamFrames = []
    }

    /// After a read batch was relayed: the idle timer's activity, and the
    /// traffic counters at most once a second (atomics shared by every
    /// event loop, so not written per batch; `end` brings them up to date).
    private func trafficRelayed() {
        let now = NIODeadline.now()
        lastActivity = now
        if now >= nextTrafficReport {
            nextTrafficReport = now + .seconds(1)
            reportTraffic()
        }
    }

    /// Adds this connection's new traffic to the gateway-wide counters.
    private func reportTraffic() {
        let metrics = environment.metrics
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
}
