import NIOCore
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// The connection's life without any I/O: every event in every state, the
/// first cause winning, exactly one ending, and what each leg is told.
@Suite("SessionStateMachine: events in, actions out")
struct SessionStateMachineTests {
    typealias Machine = SessionStateMachine
    typealias Actions = SessionStateMachine.Actions

    static let closeWait = TimeAmount.milliseconds(2000)
    static let idle = TimeAmount.seconds(10)

    static func machine(_ policy: ClosePolicy = ClosePolicy(), idle: TimeAmount = .zero) -> Machine {
        Machine(policy: policy, idleTimeout: idle, closeHandshake: closeWait)
    }

    // MARK: The events, by name

    enum Event: String, CaseIterable, CustomTestStringConvertible {
        case upstreamConnected, clientAttached
        case clientClose, clientCloseNoCode, clientViolation, clientFramingError
        case clientCloseWritten, clientCloseWriteFailed, clientCloseTimer, clientFIN, clientIOError
        case upstreamClose, upstreamCloseSent, upstreamFailed, upstreamEnded
        case idleElapsed, idleNotYet, shutdown, drainTimeout

        var testDescription: String { rawValue }

        func apply(to m: inout Machine) -> Actions {
            switch self {
            case .upstreamConnected: return m.upstreamConnected()
            case .clientAttached: return m.clientAttached()
            case .clientClose: return m.clientCloseReceived(code: 4001, reason: "bye")
            case .clientCloseNoCode: return m.clientCloseReceived(code: nil, reason: "")
            case .clientViolation: return m.clientViolation(.invalidUTF8, framingBroken: false)
            case .clientFramingError: return m.clientViolation(.messageTooBig(limit: 10), framingBroken: true)
            case .clientCloseWritten: return m.clientCloseWritten(ok: true)
            case .clientCloseWriteFailed: return m.clientCloseWritten(ok: false)
            case .clientCloseTimer: return m.clientCloseTimerFired()
            case .clientFIN: return m.clientConnectionClosed(error: nil)
            case .clientIOError: return m.clientConnectionClosed(error: "client connection: reset")
            case .upstreamClose: return m.upstreamCloseReceived(code: 4000, reason: "upstream bye")
            case .upstreamCloseSent: return m.upstreamCloseSent(code: CloseCode.goingAway, reason: "client gone")
            case .upstreamFailed: return m.upstreamFailed(.upstreamUnreachable, CloseDetails(), error: "connect: refused")
            case .upstreamEnded: return m.upstreamEnded()
            case .idleElapsed: return m.idleTimerFired(sinceActivity: SessionStateMachineTests.idle)
            case .idleNotYet: return m.idleTimerFired(sinceActivity: .seconds(3))
            case .shutdown: return m.shutdown()
            case .drainTimeout: return m.drainTimedOut()
            }
        }
    }

    /// Named states, each reached from a new machine by a list of events.
    static let states: [(name: String, path: [Event])] = [
        ("connecting", []),
        ("connected, awaiting 101", [.upstreamConnected]),
        ("relaying", [.upstreamConnected, .clientAttached]),
        ("failed before the 101", [.upstreamFailed]),
        ("failed, then upgraded", [.upstreamFailed, .clientAttached]),
        ("failed, upgraded, upstream ended", [.upstreamFailed, .clientAttached, .upstreamEnded]),
        ("echoing the client's close", [.upstreamConnected, .clientAttached, .clientClose]),
        ("echo written", [.upstreamConnected, .clientAttached, .clientClose, .clientCloseWritten]),
        ("gateway close sent", [.upstreamConnected, .clientAttached, .shutdown]),
        ("close sent after a framing error", [.upstreamConnected, .clientAttached, .clientFramingError]),
        ("upstream closed", [.upstreamConnected, .clientAttached, .upstreamClose]),
        ("client gone", [.upstreamConnected, .clientAttached, .clientFIN]),
        ("upstream reset", [.upstreamConnected, .clientAttached, .upstreamEnded]),
        ("closed", [.upstreamConnected, .clientAttached, .shutdown, .clientClose, .clientFIN, .upstreamEnded]),
        ("abandoned before the 101", [.clientFIN]),
    ]

    struct Run {
        var machine: Machine
        var endings: [Machine.Ending] = []
        var decided: [CloseCause] = []

        init(_ machine: Machine) { self.machine = machine }

        @discardableResult
        mutating func send(_ event: Event) -> Actions {
            let actions = event.apply(to: &machine)
            if let ending = actions.ending { endings.append(ending) }
            if let cause = actions.decided { decided.append(cause) }
            return actions
        }

        /// What the I/O side would report next until nothing is left open:
        /// the upgrade completes, close frames are written, and both legs end.
        mutating func runToEnd() {
            for event in [Event.upstreamConnected, .clientAttached, .clientCloseWritten, .clientFIN, .upstreamEnded] {
                send(event)
            }
        }
    }

    static func run(_ path: [Event], policy: ClosePolicy = ClosePolicy()) -> Run {
        var run = Run(machine(policy, idle: idle))
        for event in path { run.send(event) }
        return run
    }

    // MARK: Every (state, event) pair

    @Test("every event in every state: first cause wins, at most one ending, none after closed",
          arguments: states.map(\.name), Event.allCases)
    func everyPair(stateName: String, event: Event) {
        let path = Self.states.first { $0.name == stateName }!.path
        var run = Self.run(path)
        let before = run.machine
        let actions = run.send(event)

        // A decided cause never changes, nor what the client is told. Only
        // the drain timeout may add its `error` to a decision that had none.
        if let first = before.decision {
            #expect(run.machine.decision?.cause == first.cause)
            #expect(run.machine.decision?.details == first.details)
            #expect(run.machine.decision?.client == first.client)
            if event == .drainTimeout && first.error == nil && before.phase != .closed {
                #expect(run.machine.decision?.error == "drain timeout")
            } else {
                #expect(run.machine.decision?.error == first.error)
            }
            #expect(actions.decided == nil)
        }
        // Nothing happens to a finished connection.
        if before.phase == .closed {
            #expect(actions == .none)
            #expect(run.machine.phase == .closed)
        }
        // A cause is decided at most once; its ending at most once.
        #expect(run.decided.count <= 1)
        #expect(run.endings.count <= 1)
        // An ending needs both legs over (or a client gone before its 101).
        if actions.ending != nil {
            #expect(run.machine.phase == .closed)
            #expect(run.machine.client == .ended)
        }

        // Whatever happened, the connection still ends exactly once, with
        // the first cause it decided.
        run.runToEnd()
        #expect(run.machine.phase == .closed, "still \(run.machine.phase) after running to the end")
        #expect(run.endings.count == 1)
        if case .closed(let outcome) = run.endings.first {
            #expect(run.decided.first == outcome.cause)
            #expect(run.machine.upgraded)
        } else {
            #expect(!run.machine.upgraded)
        }
    }

    // MARK: What each leg is told

    @Test func clientCloseIsEchoedAndRelayed() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.clientClose)
        #expect(actions.decided == .clientClosed)
        #expect(actions.client == .sendClose(code: 4001, reason: "bye"))
        #expect(actions.upstream == .close(code: 4001, reason: "bye"))
        #expect(actions.closeTimer == .schedule(after: Self.closeWait), "even the echo's write is bounded")
        #expect(run.send(.clientCloseWritten).client == .closeTCP)
        run.send(.clientFIN)
        let last = run.send(.upstreamEnded)
        #expect(last.ending == .closed(.init(
            cause: .clientClosed, code: 4001, reason: "bye", wasClean: true, upstreamCode: nil, upstreamReason: nil,
            upstreamStatus: nil, error: nil)))
    }

    @Test func echoThatCannotBeWrittenInTimeIsCutOffUnclean() {
        // The client sent its close but reads nothing: the echo never leaves.
        var run = Self.run([.upstreamConnected, .clientAttached, .clientClose])
        #expect(run.send(.clientCloseTimer).client == .closeTCP)
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientIOError).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.cause == .clientClosed)
        #expect(!outcome.wasClean)
    }

    @Test func emptyClientCloseIsEchoedEmpty() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.clientCloseNoCode)
        #expect(actions.client == .sendClose(code: nil, reason: ""))
        #expect(actions.upstream == .close(code: nil, reason: ""))
    }

    @Test func echoThatCannotBeWrittenIsNotClean() {
        var run = Self.run([.upstreamConnected, .clientAttached, .clientClose])
        #expect(run.send(.clientCloseWriteFailed).client == .closeTCP)
        run.send(.clientFIN)
        guard case .closed(let outcome) = run.send(.upstreamEnded).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.wasClean == false)
    }

    @Test func gatewayCloseWaitsForTheReplyThenClosesTCP() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.shutdown)
        #expect(actions.decided == .shutdown)
        #expect(actions.client == .sendClose(code: CloseCode.goingAway, reason: "gateway shutting down"))
        #expect(actions.closeTimer == .schedule(after: Self.closeWait))
        #expect(actions.upstream == .close(code: CloseCode.goingAway, reason: "gateway shutting down"))
        #expect(run.send(.clientCloseWritten) == .none, "no half-close while the reply can be parsed")
        let reply = run.send(.clientClose)
        #expect(reply.client == .closeTCP)
        #expect(reply.closeTimer == .cancel)
        #expect(reply.decided == nil)
        run.send(.clientFIN)
        guard case .closed(let outcome) = run.send(.upstreamEnded).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.cause == .shutdown)
        #expect(outcome.wasClean)
    }

    @Test func unansweredCloseTimesOutUnclean() {
        var run = Self.run([.upstreamConnected, .clientAttached, .shutdown, .clientCloseWritten])
        #expect(run.send(.clientCloseTimer).client == .closeTCP)
        #expect(run.send(.clientCloseTimer) == .none, "a late second firing does nothing")
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientFIN).ending else {
            Issue.record("no ending")
            return
        }
        #expect(!outcome.wasClean)
    }

    @Test func framingErrorHalfClosesAndAFinIsClean() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.clientFramingError)
        #expect(actions.decided == .clientMessageTooBig)
        #expect(actions.client == .sendClose(code: CloseCode.messageTooBig, reason: "message too big (limit 1048576 bytes)"))
        #expect(actions.upstream == .close(code: CloseCode.goingAway, reason: "client message too big"))
        #expect(run.send(.clientCloseWritten).client == .closeOutput)
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientFIN).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.wasClean)
        #expect(outcome.error == "message over 10 bytes")
    }

    @Test func framingErrorEndedByAnIOErrorIsNotClean() {
        var run = Self.run([.upstreamConnected, .clientAttached, .clientFramingError, .clientCloseWritten, .upstreamEnded])
        guard case .closed(let outcome) = run.send(.clientIOError).ending else {
            Issue.record("no ending")
            return
        }
        #expect(!outcome.wasClean)
    }

    @Test func violationWithoutFramingErrorDoesNotHalfClose() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.clientViolation)
        #expect(actions.client == .sendClose(code: CloseCode.invalidPayload, reason: "invalid UTF-8 in text message"))
        #expect(run.send(.clientCloseWritten) == .none)
    }

    @Test func upstreamCloseIsRelayedAndLogged() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.upstreamClose)
        #expect(actions.decided == .upstreamClosed)
        #expect(actions.client == .sendClose(code: 4000, reason: "upstream bye"))
        #expect(actions.upstream == nil, "the upstream leg answered the close itself")
        run.send(.clientClose)
        run.send(.clientFIN)
        guard case .closed(let outcome) = run.send(.upstreamEnded).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.upstreamCode == 4000)
        #expect(outcome.upstreamReason == "upstream bye")
        #expect(outcome.initiatorIsUpstream)
    }

    @Test func upstreamEndingMidSessionIsAReset() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.upstreamEnded)
        #expect(actions.decided == .upstreamReset)
        #expect(actions.client == .abort, "1006 by default: the client's TCP is dropped")
        #expect(actions.upstream == nil)
        guard case .closed(let outcome) = run.send(.clientIOError).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.code == CloseCode.abnormal)
        #expect(!outcome.wasClean)
        #expect(outcome.error == "upstream ended without a close frame")
    }

    @Test func clientGoneClosesTheUpstreamGoingAway() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.clientIOError)
        #expect(actions.decided == .clientGone)
        #expect(actions.client == nil)
        #expect(actions.upstream == .close(code: CloseCode.goingAway, reason: "client gone"))
        guard case .closed(let outcome) = run.send(.upstreamEnded).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.code == CloseCode.abnormal)
        #expect(outcome.error == "client connection: reset")
    }

    @Test func failureBeforeTheUpgradeIsToldAfterIt() {
        var run = Self.run([])
        let failed = run.send(.upstreamFailed)
        #expect(failed.decided == .upstreamUnreachable)
        #expect(failed.client == nil, "no 101 yet: nothing can be sent")
        #expect(failed.upstream == .abort)
        let attached = run.send(.clientAttached)
        #expect(attached.client == .sendClose(code: CloseCode.badGateway, reason: "upstream unreachable"))
        #expect(attached.closeTimer == .schedule(after: Self.closeWait))
        #expect(!attached.startRelaying)
    }

    @Test func overrideTo1006DropsTheClient() {
        var run = Self.run([.upstreamFailed], policy: ClosePolicy(overrides: [.upstreamUnreachable: CloseCode.abnormal]))
        #expect(run.send(.clientAttached).client == .abort)
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientFIN).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.code == CloseCode.abnormal)
        #expect(!outcome.wasClean, "no close frame reached the client")
    }

    @Test func refusedConnectionHasNoUpstreamToClose() {
        var run = Run(Self.machine())
        let refused = run.machine.refused(.overloaded)
        #expect(refused.upstream == nil)
        #expect(refused.client == nil)
        let attached = run.send(.clientAttached)
        #expect(attached.client == .sendClose(code: CloseCode.tryAgainLater, reason: "gateway overloaded, try again later"))
        run.send(.clientClose)
        guard case .closed(let outcome) = run.send(.clientFIN).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.cause == .overloaded)
        #expect(outcome.wasClean)
    }

    @Test func clientGoneBeforeItsUpgradeIsARejectionNotAClose() {
        var run = Self.run([.upstreamConnected])
        let actions = run.send(.clientIOError)
        #expect(actions.ending == .abandonedBeforeUpgrade(error: "client connection: reset"))
        #expect(actions.upstream == .abort)
        #expect(run.send(.clientAttached) == .none)
        #expect(run.send(.upstreamEnded) == .none)
    }

    @Test func relayingStartsOnlyWithBothLegs() {
        var run = Run(Self.machine(idle: Self.idle))
        #expect(!run.send(.clientAttached).startRelaying)
        #expect(run.machine.phase == .connecting)
        #expect(run.machine.upstreamDataDisposition == .hold)
        let connected = run.send(.upstreamConnected)
        #expect(connected.startRelaying)
        #expect(connected.idleTimer == .schedule(after: Self.idle))
        #expect(run.machine.phase == .relaying)
        #expect(run.machine.upstreamDataDisposition == .forward)
        #expect(run.machine.relaysClientData)
    }

    @Test func idleTimerRearmsForTheRestThenCloses() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        #expect(run.send(.idleNotYet) == Actions(idleTimer: .schedule(after: .seconds(7))))
        let idle = run.send(.idleElapsed)
        #expect(idle.decided == .idleTimeout)
        #expect(idle.client == .sendClose(code: CloseCode.goingAway, reason: "idle timeout"))
        #expect(idle.upstream == .close(code: CloseCode.goingAway, reason: "idle timeout"))
        #expect(idle.idleTimer == .cancel)
    }

    @Test func noIdleTimerWithoutAnIdleTimeout() {
        var run = Run(Self.machine(idle: .zero))
        run.send(.upstreamConnected)
        #expect(run.send(.clientAttached) == Actions(startRelaying: true))
        #expect(run.send(.idleElapsed) == .none)
    }

    @Test func drainTimeoutClosesThenDropsBothLegs() {
        var run = Self.run([.upstreamConnected, .clientAttached])
        let actions = run.send(.drainTimeout)
        #expect(actions.decided == .shutdown)
        #expect(actions.client == .sendClose(code: CloseCode.goingAway, reason: "gateway shutting down"),
                "the client still gets its close frame before the drop")
        #expect(actions.upstream == .close(code: CloseCode.goingAway, reason: "gateway shutting down"))
        #expect(actions.dropBothLegs)
        #expect(actions.closeTimer == .cancel, "nothing to wait for once dropped")
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientIOError).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.error == "drain timeout")
        #expect(outcome.cause == .shutdown)
    }

    @Test func drainTimeoutAfterShutdownKeepsTheShutdownAndDrops() {
        var run = Self.run([.upstreamConnected, .clientAttached, .shutdown])
        let actions = run.send(.drainTimeout)
        #expect(actions.decided == nil)
        #expect(actions.client == nil)
        #expect(actions.upstream == nil)
        #expect(actions.dropBothLegs, "its close handshakes are cut short")
        #expect(run.machine.decision?.cause == .shutdown)
        #expect(run.machine.decision?.error == "drain timeout", "the log says why the legs were dropped")
    }

    @Test func framingErrorThenCloseTimerStillCountsAsClean() {
        // The client got our close frame and then a FIN; we cannot parse its
        // reply, so the timer closes TCP: its CloseEvent is clean.
        var run = Self.run([.upstreamConnected, .clientAttached, .clientFramingError, .clientCloseWritten])
        #expect(run.send(.clientCloseTimer).client == .closeTCP)
        run.send(.upstreamEnded)
        guard case .closed(let outcome) = run.send(.clientFIN).ending else {
            Issue.record("no ending")
            return
        }
        #expect(outcome.wasClean)
    }

    @Test func lateAndDuplicateEventsChangeNothing() {
        var run = Self.run([.upstreamConnected, .clientAttached, .shutdown])
        for event in [Event.upstreamFailed, .clientViolation, .idleElapsed, .shutdown, .upstreamClose] {
            #expect(run.send(event).decided == nil, "\(event) after the decision")
        }
        run.runToEnd()
        #expect(run.decided == [.shutdown])
        #expect(run.endings.count == 1)
    }

    @Test func backpressureFollowsThePhase() {
        var run = Run(Self.machine())
        #expect(!run.machine.mayReadClient(upstreamWritable: true), "no frames before the 101")
        #expect(!run.machine.mayReadUpstream(clientWritable: true), "upstream frames would wait in memory")
        run.send(.upstreamConnected)
        run.send(.clientAttached)
        #expect(run.machine.mayReadClient(upstreamWritable: true))
        #expect(!run.machine.mayReadClient(upstreamWritable: false))
        #expect(run.machine.mayReadUpstream(clientWritable: true))
        #expect(!run.machine.mayReadUpstream(clientWritable: false))
        run.send(.shutdown)
        #expect(run.machine.mayReadClient(upstreamWritable: false), "the client's close reply must be read")
        #expect(run.machine.mayReadUpstream(clientWritable: false), "the upstream's close reply must be read")
        #expect(!run.machine.relaysClientData)
        #expect(run.machine.upstreamDataDisposition == .drop)
    }

    @Test("random event sequences end exactly once, with the first cause")
    func randomSequences() {
        var rng = SeededRandom(test: "SessionStateMachineTests.randomSequences")
        let seed = rng.seed
        for _ in 0..<2000 {
            var run = Run(Self.machine(idle: Self.idle))
            let count = Int.random(in: 0...12, using: &rng)
            for _ in 0..<count { run.send(Event.allCases.randomElement(using: &rng)!) }
            #expect(run.endings.count <= 1)
            run.runToEnd()
            #expect(run.endings.count == 1, "seed \(seed)")
            #expect(run.decided.count <= 1, "seed \(seed)")
            if case .closed(let outcome) = run.endings.first {
                #expect(run.decided.first == outcome.cause, "seed \(seed)")
            }
        }
    }
}

extension SessionStateMachine.Outcome {
    var initiatorIsUpstream: Bool { cause.initiator == .upstream }
}
