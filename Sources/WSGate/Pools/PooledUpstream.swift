import NIOCore
import WSGatePolicy
import WSGateProtocol

/// The upstream leg of a route with a pool: connects to one target after
/// another until one answers, then is that target's leg.
///
/// Only what is safe is retried (the rule Envoy and Pushpin use): a connect
/// that was refused or timed out, a TLS failure, a connection reset or
/// silent before the upstream's 101. Nothing is retried once an upstream has
/// answered (a non-101 answer, and anything after the 101, are that
/// upstream's word). Between attempts: 25 ms × 2ⁿ with jitter, and all of
/// it within `upstream_connect_ms` × attempts.
///
/// Each attempt's leg reports to a delegate of its own (`Attempt`), so that
/// what a failed attempt says after its failure (its `.ended`) does not
/// reach the session. Once connected, the leg hands data straight to the
/// session (`relayData(to:)`), and its events still pass through here.
final class PooledUpstream: UpstreamLeg, @unchecked Sendable {
    /// Builds the leg for one target.
    typealias MakeLeg = (PoolState.Target) -> UpstreamLeg

    private weak var delegate: UpstreamLegDelegate?
    private let pool: UpstreamPool
    private let eventLoop: EventLoop
    /// Dropped once connected (nothing is retried after that): it holds the
    /// client's request head and the route, which an idle connection should
    /// not keep for its whole life.
    private var makeLeg: MakeLeg?
    private let hashKey: String?
    private let connectTimeout: TimeAmount

    private var current: UpstreamLeg?
    private var attempt: Attempt?
    private(set) var currentTarget: PoolState.Target?
    private var tried: Set<String> = []
    private var failures: [String] = []
    private(set) var attempts = 0
    private var promise: EventLoopPromise<String?>?
    private var startedAt = NIODeadline.now()
    private var backoff: Scheduled<Void>?
    private var aborted = false
    private var connected = false
    private var ended = false

    init(
        pool: UpstreamPool, eventLoop: EventLoop, hashKey: String?, connectTimeout: TimeAmount,
        urlFor: @escaping (PoolState.Target) -> URLParts, makeLeg: @escaping MakeLeg
    ) {
        self.urlFor = urlFor
        self.pool = pool
        self.eventLoop = eventLoop
        self.hashKey = hashKey
        self.connectTimeout = connectTimeout
        self.makeLeg = makeLeg
    }

    /// The URL dialled for a target: the route's URL (suffix and query
    /// included) with the target's member's host and port.
    private let urlFor: (PoolState.Target) -> URLParts

    var dialled: DialReport? { DialReport(target: currentTarget?.id, attempts: attempts, url: currentTarget.map(urlFor)) }

    // MARK: Connecting, target after target

    func connect(delegate: UpstreamLegDelegate) -> EventLoopFuture<String?> {
        self.delegate = delegate
        let promise = eventLoop.makePromise(of: String?.self)
        self.promise = promise
        startedAt = .now()
        next(after: nil)
        return promise.futureResult
    }

    private func next(after last: UpstreamFailure?) {
        guard !aborted else { return fail(last ?? UpstreamFailure(.internalError, error: "aborted")) }
        guard attempts < pool.maxAttempts, let makeLeg, let target = pool.choose(hashKey: hashKey, tried: tried) else {
            return fail(last ?? UpstreamFailure(.upstreamUnreachable, error: "no upstream target"))
        }
        tried.insert(target.id)
        attempts += 1
        let leg = makeLeg(target)
        let attempt = Attempt(owner: self, number: attempts)
        self.current = leg
        self.attempt = attempt
        self.currentTarget = target
        leg.connect(delegate: attempt).assumeIsolatedUnsafeUnchecked().whenComplete { [self] result in
            switch result {
            case .success(let chosen):
                self.pool.attemptFinished(target, failure: nil, on: self.eventLoop)
                self.pool.connectionStarted(target.id)
                self.connected = true
                // Nothing is retried from here on: what only retrying needs
                // is not kept for the connection's whole life.
                self.makeLeg = nil
                self.tried = []
                self.failures = []
                // Data now goes from the leg to the session directly; the
                // attempt still hears how the connection ends.
                if let delegate = self.delegate { leg.relayData(to: delegate) }
                self.promise?.succeed(chosen)
                self.promise = nil
            case .failure(let error):
                let failure = error as? UpstreamFailure ?? UpstreamFailure(.internalError, error: "\(error)")
                if self.aborted { return self.fail(failure) }
                self.pool.attemptFinished(target, failure: failure, on: self.eventLoop)
                self.failures.append(failure.error ?? "\(target.id): \(failure.cause.rawValue)")
                guard failure.retryable, self.attempts < self.pool.maxAttempts else { return self.fail(failure) }
                // 25 ms × 2ⁿ, ± half of it, within the overall budget.
                let base = 25.0 * Double(1 << min(self.attempts - 1, 10))
                let delay = TimeAmount.milliseconds(Int64(base * Double.random(in: 0.5...1.5)))
                let budget = self.connectTimeout * Int64(self.pool.maxAttempts)
                guard NIODeadline.now() + delay < self.startedAt + budget else { return self.fail(failure) }
                self.backoff = self.eventLoop.scheduleTask(in: delay) { [self] in
                    self.backoff = nil
                    self.next(after: failure)
                }
            }
        }
    }

    /// Nothing more to try: the session hears the last failure (with every
    /// attempt in `error` when there were several), then `.ended`.
    private func fail(_ last: UpstreamFailure) {
        guard let promise else { return }
        self.promise = nil
        var failure = last
        if failures.count > 1 { failure.error = failures.joined(separator: "; ") }
        promise.fail(failure)
        end()
    }

    private func end() {
        guard !ended else { return }
        ended = true
        if connected, let target = currentTarget { pool.connectionEnded(target.id) }
        delegate?.upstreamEvent(.ended)
    }

    /// From an attempt's leg: passed on once connected; before that only
    /// the current attempt's end matters, and only after a failure that
    /// ends the connection (which `fail` reports itself).
    fileprivate func event(from attempt: Int, _ forward: (UpstreamLegDelegate) -> Void) {
        guard attempt == attempts, connected, !ended, let delegate else { return }
        forward(delegate)
    }

    fileprivate func ended(from attempt: Int) {
        guard attempt == attempts, connected else { return }
        end()
    }

    fileprivate var mayRead: Bool { delegate?.mayReadUpstream ?? false }

    // MARK: UpstreamLeg

    func startRelaying() { current?.startRelaying() }

    var clientFrameFormat: ClientFrameFormat { current?.clientFrameFormat ?? .maskedFrames }

    func send(_ batch: FrameBatch) {
        guard connected else { return }
        current?.send(batch)
    }

    func flush() { current?.flush() }

    var isWritable: Bool { connected && (current?.isWritable ?? false) }

    func clientBecameWritable() { current?.clientBecameWritable() }

    func close(code: UInt16?, reason: String) {
        if connected {
            current?.close(code: code, reason: reason)
        } else {
            abort()
        }
    }

    func abort() {
        if connected {
            current?.abort()
            return
        }
        aborted = true
        if let backoff {
            // Between attempts: nothing is in flight.
            backoff.cancel()
            self.backoff = nil
            fail(UpstreamFailure(.internalError, error: "aborted"))
        } else {
            current?.abort()  // its failure arrives in `next`'s callback
        }
    }

    func connectionFinished(_ event: CloseEvent) { current?.connectionFinished(event) }
}

/// The delegate of one attempt's leg.
private final class Attempt: UpstreamLegDelegate {
    weak var owner: PooledUpstream?
    let number: Int

    init(owner: PooledUpstream, number: Int) {
        self.owner = owner
        self.number = number
    }

    func upstreamSent(_ batch: FrameBatch) { owner?.event(from: number) { $0.upstreamSent(batch) } }

    func upstreamReadComplete() { owner?.event(from: number) { $0.upstreamReadComplete() } }

    var mayReadUpstream: Bool { owner?.mayRead ?? false }

    func upstreamBecameWritable() { owner?.event(from: number) { $0.upstreamBecameWritable() } }

    func upstreamEvent(_ event: UpstreamEvent) {
        if case .ended = event {
            owner?.ended(from: number)
        } else {
            owner?.event(from: number) { $0.upstreamEvent(event) }
        }
    }
}
