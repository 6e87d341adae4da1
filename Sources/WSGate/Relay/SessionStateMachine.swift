import WSGatePolicy
import WSGateProtocol
import NIOCore

/// The life of one client connection as a pure value: events in, actions out.
///
/// It holds no channel, no timer and no clock. The `Session` feeds it what
/// happened on either leg (and when a timer fired) and carries out the
/// actions it returns, in the style of SwiftNIO's
/// `NIOTypedHTTPServerUpgraderStateMachine`. Everything that decides how a
/// connection ends lives here, so it is tested on its own, over every
/// (state, event) pair (`SessionStateMachineTests`):
///
/// - the first cause wins; later ones change nothing (but may still complete
///   a leg's handshake);
/// - the client gets what `ClosePolicy.decide` says, the upstream what
///   `ClosePolicy.upstreamAction` says;
/// - exactly one `.finish` action per connection, once both legs have ended.
///
/// The state is two legs, each with its own small state, plus the decision.
/// The connection's phase (`connecting → relaying → closing → closed`) is
/// derived from them, so the two can never disagree.
struct SessionStateMachine {
    /// The connection's phase, derived from the legs and the decision.
    enum Phase: Equatable {
        /// The upstream is being connected (and hooks run); the client has no 101 yet.
        case connecting
        /// Frames flow both ways.
        case relaying
        /// A cause has been decided; the legs finish their close handshakes.
        case closing
        /// Both legs ended; the connection's end has been reported.
        case closed
    }

    /// The client leg.
    enum ClientLeg: Equatable {
        /// The HTTP upgrade is under way: no 101 yet, no frames.
        case awaitingUpgrade
        /// Upgraded and relaying.
        case open
        /// We echo the client's close frame; TCP closes once it is written.
        case echoingClose
        /// Our close frame is out (or going); we wait for the client's reply or
        /// FIN, until the close timer fires. `halfCloseWhenWritten`: the
        /// client's stream can no longer be parsed, so we send FIN after it.
        case closeSent(halfCloseWhenWritten: Bool)
        /// TCP close or abort requested, no close handshake to wait for.
        case closingTCP
        /// The TCP connection is closed.
        case ended
    }

    /// The upstream leg.
    enum UpstreamLeg: Equatable {
        /// Connecting (TCP, TLS, the upgrade or the `connect_url` hook).
        case connecting
        /// Connected and relaying.
        case open
        /// Told to close or abort; waiting for it to report that it ended.
        case closing
        /// Ended (or there never was one: a refused connection).
        case ended
    }

    /// The recorded first cause.
    struct Decision: Equatable {
        var cause: CloseCause
        var details: CloseDetails
        var client: CloseDecision
        /// Low-level detail for the log's `error`.
        var error: String?
    }

    // MARK: Actions

    /// What to do to the client's connection.
    enum ClientAction: Equatable {
        /// Write a close frame (`code` nil: empty payload) and report
        /// `clientCloseWritten` when the write completes.
        case sendClose(code: UInt16?, reason: String)
        /// Orderly TCP close (FIN).
        case closeTCP
        /// FIN after what was written; keep reading until the client closes.
        case closeOutput
        /// TCP RST without a close frame: the client sees 1006.
        case abort
    }

    enum TimerAction: Equatable {
        case schedule(after: TimeAmount)
        case cancel
    }

    /// How a connection's life ended, reported once.
    enum Ending: Equatable {
        /// Upgraded: the `websocket_close` line and its metrics.
        case closed(Outcome)
        /// The client left before its 101: a `websocket_reject` line (499).
        case abandonedBeforeUpgrade(error: String?)
    }

    /// What the close line reports, besides the counters the Session keeps.
    struct Outcome: Equatable {
        var cause: CloseCause
        var code: UInt16
        var reason: String
        var wasClean: Bool
        var upstreamCode: UInt16?
        var upstreamReason: String?
        var upstreamStatus: Int?
        var error: String?
    }

    /// The actions one event asks for. The Session carries them out in this
    /// order: timers, client, relaying start, upstream, ending.
    struct Actions: Equatable {
        var client: ClientAction?
        var upstream: UpstreamCloseAction?
        /// The client's close-handshake timer (`close_handshake_ms`).
        var closeTimer: TimerAction?
        /// The idle timer (`idle_timeout_ms`).
        var idleTimer: TimerAction?
        /// The client is upgraded and the upstream connected: deliver frames
        /// the upstream sent early, let the upstream leg start reading.
        var startRelaying = false
        /// The drain period is over: after the actions above, drop both legs
        /// (TCP RST to the client, the upstream at once).
        var dropBothLegs = false
        /// Set once per connection.
        var ending: Ending?
        /// The cause just decided (for a debug log line).
        var decided: CloseCause?

        static let none = Actions()
        var isNone: Bool { self == .none }
    }

    /// What to do with upstream data for the client.
    enum DataDisposition: Equatable {
        case forward
        /// The client's 101 is not out yet: keep it until it is.
        case hold
        case drop
    }

    // MARK: State

    private(set) var client = ClientLeg.awaitingUpgrade { didSet { updatePhase() } }
    private(set) var upstream = UpstreamLeg.connecting { didSet { updatePhase() } }
    private(set) var decision: Decision? { didSet { updatePhase() } }
    /// The client got its 101 (so the end is a `websocket_close` line).
    private(set) var upgraded = false
    private(set) var wasClean = false
    /// The client's frame stream can no longer be parsed (after a framing error).
    private(set) var clientFramingBroken = false
    /// A close frame to the client has been asked for (ours or the echo); it
    /// stays true whatever the client leg does next.
    private(set) var clientCloseFrameSent = false
    /// The close the upstream sent or was sent, for the log.
    private(set) var upstreamCode: UInt16?
    private(set) var upstreamReason: String?
    private(set) var ended = false { didSet { updatePhase() } }

    /// Where the connection is, derived from `client`, `upstream`,
    /// `decision` and `ended` and kept in step by their observers. The relay
    /// asks for it several times per frame: a stored enum is read in place,
    /// where computing it made the Session copy the whole machine (and
    /// retain and release every string in it) on each call.
    private(set) var phase = Phase.connecting

    let policy: ClosePolicy
    /// `idle_timeout_ms`; zero: none.
    let idleTimeout: TimeAmount
    /// `close_handshake_ms`: how long the client has to answer our close frame.
    let closeHandshake: TimeAmount

    init(policy: ClosePolicy, idleTimeout: TimeAmount = .zero, closeHandshake: TimeAmount = .seconds(2)) {
        self.policy = policy
        self.idleTimeout = idleTimeout
        self.closeHandshake = closeHandshake
    }

    private mutating func updatePhase() {
        if ended {
            phase = .closed
        } else if decision != nil {
            phase = .closing
        } else if case .open = client, case .open = upstream {
            phase = .relaying
        } else {
            phase = .connecting
        }
    }

    /// Client data is relayed only while relaying; after a decision it is dropped.
    @inline(__always)
    var relaysClientData: Bool { phase == .relaying }

    @inline(__always)
    var upstreamDataDisposition: DataDisposition {
        switch phase {
        case .relaying: return .forward
        case .connecting: return .hold
        case .closing, .closed: return .drop
        }
    }

    /// Whether the client leg may read: while relaying, only when the
    /// upstream can take more; while closing always (the client's close reply
    /// must be read).
    @inline(__always)
    func mayReadClient(upstreamWritable: Bool) -> Bool {
        switch phase {
        case .relaying: return upstreamWritable
        case .closing: return true
        case .connecting, .closed: return false
        }
    }

    /// Whether the upstream leg may read: while relaying only when the client
    /// can take more; while connecting not yet (its frames would wait in memory).
    @inline(__always)
    func mayReadUpstream(clientWritable: Bool) -> Bool {
        switch phase {
        case .relaying: return clientWritable
        case .connecting: return false
        case .closing, .closed: return true
        }
    }

    // MARK: Events: setting up

    /// The upstream is connected (and its hooks succeeded).
    mutating func upstreamConnected() -> Actions {
        guard upstream == .connecting, decision == nil else { return .none }
        upstream = .open
        return startRelayingIfReady()
    }

    /// The connection is refused after the upgrade (over the connection limit,
    /// no upstream to be had): there is no upstream leg at all.
    mutating func refused(_ cause: CloseCause, reason: String? = nil, error: String? = nil) -> Actions {
        upstream = .ended
        return decide(cause, CloseDetails(reasonOverride: reason), error: error)
    }

    /// The gateway ends a relayed connection by its own policy (a client
    /// over its rate limit).
    mutating func policyClose(_ cause: CloseCause, error: String?) -> Actions {
        decide(cause, CloseDetails(), error: error)
    }

    /// The backend closed the connection through the control API.
    mutating func kicked(code: UInt16, reason: String) -> Actions {
        decide(.kicked, CloseDetails(peerCode: code, peerReason: reason), error: nil)
    }

    /// The client's 101 went out and its frame handler is in place.
    mutating func clientAttached() -> Actions {
        guard client == .awaitingUpgrade else { return .none }  // gone before its 101
        upgraded = true
        client = .open
        if decision != nil {
            var actions = Actions.none
            applyDecisionToClient(&actions)
            finishIfBothEnded(&actions)
            return actions
        }
        return startRelayingIfReady()
    }

    private mutating func startRelayingIfReady() -> Actions {
        guard phase == .relaying else { return .none }
        var actions = Actions.none
        actions.startRelaying = true
        if idleTimeout > .zero { actions.idleTimer = .schedule(after: idleTimeout) }
        return actions
    }

    // MARK: Events from the client leg

    /// The client sent a close frame (`code` nil: it had no payload).
    mutating func clientCloseReceived(code: UInt16?, reason: String) -> Actions {
        if decision == nil {
            return decide(.clientClosed, CloseDetails(peerCode: code, peerReason: reason), error: nil)
        }
        guard clientCloseFrameSent, client != .ended else { return .none }
        // The reply to our close: the handshake is complete, and the server
        // side closes the TCP connection (RFC 6455 §7.1.1).
        wasClean = true
        client = .closingTCP
        var actions = Actions.none
        actions.client = .closeTCP
        actions.closeTimer = .cancel
        return actions
    }

    /// The client broke RFC 6455; `framingBroken` when its stream can no
    /// longer be parsed at all.
    mutating func clientViolation(_ violation: FrameViolation, framingBroken: Bool) -> Actions {
        if framingBroken { clientFramingBroken = true }
        let (cause, details, error) = ViolationPolicy.clientCause(violation)
        return decide(cause, details, error: error)
    }

    /// Our close frame to the client was written (`ok`) or could not be.
    mutating func clientCloseWritten(ok: Bool) -> Actions {
        var actions = Actions.none
        switch client {
        case .echoingClose:
            // Echo of the client's close: the handshake is complete.
            if ok { wasClean = true }
            client = .closingTCP
            actions.client = .closeTCP
        case .closeSent(halfCloseWhenWritten: true) where ok:
            // We can't parse the reply: half-close and wait for the client's FIN.
            actions.client = .closeOutput
        default:
            break
        }
        return actions
    }

    /// The client did not answer our close frame within `close_handshake_ms`
    /// (or our echo of its close could not be written in that time).
    mutating func clientCloseTimerFired() -> Actions {
        switch client {
        case .closeSent, .echoingClose: break
        default: return .none
        }
        client = .closingTCP
        var actions = Actions.none
        actions.client = .closeTCP
        return actions
    }

    /// The client's TCP connection is closed, whoever closed it; `error` is
    /// the I/O error that closed it, if any.
    mutating func clientConnectionClosed(error: String?) -> Actions {
        guard client != .ended, !ended else { return .none }
        client = .ended
        var actions = Actions.none
        actions.closeTimer = .cancel
        if !upgraded {
            // Gone before its 101: no close event, just a rejection record.
            ended = true
            actions.idleTimer = .cancel
            if upstream != .ended {
                upstream = .closing
                actions.upstream = .abort
            }
            actions.ending = .abandonedBeforeUpgrade(error: error)
            return actions
        }
        if decision == nil {
            actions = decide(.clientGone, CloseDetails(), error: error ?? "client closed TCP without a close frame")
            actions.closeTimer = .cancel
            return actions
        }
        if clientFramingBroken, clientCloseFrameSent, error == nil {
            // After a framing error the reply can't be parsed; an orderly end
            // of TCP after our close frame is the best evidence of a clean
            // close (the client did get a close frame, then a FIN).
            wasClean = true
        }
        finishIfBothEnded(&actions)
        return actions
    }

    // MARK: Events from the upstream leg

    /// The upstream sent a close frame (the leg has answered it).
    mutating func upstreamCloseReceived(code: UInt16?, reason: String) -> Actions {
        guard !ended else { return .none }
        upstreamCode = code ?? CloseCode.noStatus
        upstreamReason = reason
        if upstream == .open { upstream = .closing }
        return decide(.upstreamClosed, CloseDetails(peerCode: code, peerReason: reason), error: nil)
    }

    /// The upstream leg sent a close frame of its own (recorded for the log
    /// unless the upstream's own close is already there).
    mutating func upstreamCloseSent(code: UInt16?, reason: String) -> Actions {
        if upstreamCode == nil {
            upstreamCode = code ?? CloseCode.noStatus
            upstreamReason = reason
        }
        return .none
    }

    /// The upstream failed: it could not be connected, or broke mid-session.
    mutating func upstreamFailed(_ cause: CloseCause, _ details: CloseDetails, error: String?) -> Actions {
        decide(cause, details, error: error)
    }

    /// The upstream leg has ended (its connection is closed).
    mutating func upstreamEnded() -> Actions {
        guard upstream != .ended, !ended else { return .none }
        upstream = .ended
        if decision == nil {
            // Legs report a failure before they end; one that just ended
            // dropped its connection without a close frame.
            return decide(.upstreamReset, CloseDetails(), error: "upstream ended without a close frame")
        }
        var actions = Actions.none
        finishIfBothEnded(&actions)
        return actions
    }

    // MARK: Events: timers and the gateway

    /// The idle timer fired; `sinceActivity` is how long ago a frame last
    /// passed either way. Closes when that is the whole idle timeout, else
    /// re-arms for the rest.
    mutating func idleTimerFired(sinceActivity: TimeAmount) -> Actions {
        guard phase == .relaying, idleTimeout > .zero else { return .none }
        if sinceActivity >= idleTimeout {
            return decide(.idleTimeout, CloseDetails(), error: nil)
        }
        var actions = Actions.none
        actions.idleTimer = .schedule(after: idleTimeout - sinceActivity)
        return actions
    }

    /// Graceful drain: the client gets `shutdown.close_code`.
    mutating func shutdown() -> Actions {
        decide(.shutdown, CloseDetails(), error: nil)
    }

    /// The drain period is over: the shutdown is decided if it was not yet
    /// (so the client still gets its close frame first), then whatever is
    /// still open is dropped.
    mutating func drainTimedOut() -> Actions {
        guard !ended else { return .none }
        var actions = decide(.shutdown, CloseDetails(), error: "drain timeout")
        // Decided earlier (the shutdown close frame went out, unanswered):
        // the cause stays, and the log's `error` says why the legs were dropped.
        if decision?.error == nil { decision?.error = "drain timeout" }
        if upstream != .ended { upstream = .closing }
        if client != .ended && client != .awaitingUpgrade {
            client = .closingTCP
            actions.closeTimer = .cancel
        }
        actions.dropBothLegs = true
        return actions
    }

    // MARK: The decision

    /// Records the first cause and acts on it; later causes are ignored.
    private mutating func decide(_ cause: CloseCause, _ details: CloseDetails, error: String?) -> Actions {
        guard decision == nil, !ended else { return .none }
        decision = Decision(cause: cause, details: details, client: policy.decide(cause, details), error: error)
        var actions = Actions.none
        actions.decided = cause
        actions.idleTimer = .cancel
        applyDecisionToClient(&actions)
        if upstream == .open || upstream == .connecting {
            upstream = .closing
            actions.upstream = policy.upstreamAction(cause, details)
        }
        finishIfBothEnded(&actions)
        return actions
    }

    /// What the client gets, once it is upgraded and still connected.
    private mutating func applyDecisionToClient(_ actions: inout Actions) {
        guard let decision, client == .open else { return }
        let frameCode = decision.client.action == .sendEmpty ? nil : decision.client.code
        switch (decision.cause, decision.client.action) {
        case (_, .none):
            client = .closingTCP
            actions.client = .closeTCP
        case (.clientClosed, _):
            // Echo the client's close, then close TCP: the handshake is complete.
            client = .echoingClose
            clientCloseFrameSent = true
            actions.client = .sendClose(code: frameCode, reason: decision.client.reason)
            // A client that stopped reading may never let the echo be
            // written: the close timer bounds that wait too.
            actions.closeTimer = .schedule(after: closeHandshake)
        case (_, .abort):
            client = .closingTCP
            actions.client = .abort
        case (_, .sendCode), (_, .sendEmpty):
            client = .closeSent(halfCloseWhenWritten: clientFramingBroken)
            clientCloseFrameSent = true
            actions.client = .sendClose(code: frameCode, reason: decision.client.reason)
            actions.closeTimer = .schedule(after: closeHandshake)
        }
    }

    private mutating func finishIfBothEnded(_ actions: inout Actions) {
        guard !ended, let decision, client == .ended, upstream == .ended else { return }
        ended = true
        actions.closeTimer = .cancel
        guard upgraded else {
            // Cannot happen today (a client gone before its 101 ends in
            // `clientConnectionClosed`), but if it did, it would be a rejection.
            actions.ending = .abandonedBeforeUpgrade(error: decision.error)
            return
        }
        let dropped = decision.client.action == .abort || decision.client.action == .none
        actions.ending = .closed(Outcome(
            cause: decision.cause, code: decision.client.code, reason: decision.client.reason,
            wasClean: dropped ? false : wasClean, upstreamCode: upstreamCode, upstreamReason: upstreamReason,
            upstreamStatus: decision.details.httpStatus, error: decision.error))
    }
}
