import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import NIOCore
import WSGatePolicy

/// One route's targets at run time: `PoolState` behind a lock (taken once
/// per connection attempt, never per frame), with what it changes made
/// visible: `wsgate_upstream_attempts_total`, `wsgate_upstream_healthy`,
/// one `upstream_health` line per change of a target's health, and the
/// admin listener's `GET /upstreams`.
final class UpstreamPool: Sendable {
    let route: String
    let settings: PoolSettings
    private let state: NIOLockedValueBox<PoolState>
    /// Each target's `result="ok"` counter, made once: the success path of
    /// every connection (and HTTP request) takes no label building.
    private let okCounters = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])
    private let metrics: GatewayMetrics
    private let logger: Logger
    /// Health checks and DNS refreshes (ejection timers are one-shot and
    /// harmless when they fire late).
    private let repeating = NIOLockedValueBox<[RepeatedTask]>([])

    init(route: Route, metrics: GatewayMetrics, logger: Logger) {
        self.route = route.path
        self.settings = route.pool
        self.state = NIOLockedValueBox(PoolState(settings: route.pool))
        self.metrics = metrics
        self.logger = logger
        for target in state.withLockedValue({ $0.targets }) {
            metrics.upstreamHealthy(route: self.route, target: target.id, true)
        }
    }

    /// Milliseconds on a monotonic clock.
    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds / 1_000_000 }

    var targets: [PoolState.Target] { state.withLockedValue { $0.targets } }

    /// How many connect attempts one connection (or request) may make.
    var maxAttempts: Int { settings.attempts(targets: state.withLockedValue { $0.targets.count }) }

    func choose(hashKey: String?, tried: Set<String>) -> PoolState.Target? {
        state.withLockedValue { $0.choose(hashKey: hashKey, tried: tried, now: Self.now()) }
    }

    func connectionStarted(_ id: String) { state.withLockedValue { $0.connectionStarted(id) } }

    func connectionEnded(_ id: String) { state.withLockedValue { $0.connectionEnded(id) } }

    /// Counts one connect attempt and feeds passive ejection.
    func attemptFinished(_ target: PoolState.Target, failure: UpstreamFailure?, on eventLoop: EventLoop) {
        guard let failure else {
            state.withLockedValue { $0.connectSucceeded(target.id) }
            okCounter(target.id).increment()
            return
        }
        metrics.upstreamAttempt(route: route, target: target.id, result: failure.cause.rawValue)
        let now = Self.now()
        guard let until = state.withLockedValue({ $0.connectFailed(target.id, now: now) }) else { return }
        let ms = Int64(until - now)
        healthChanged(target.id, healthy: false, reason: "ejected for \(ms) ms after \(settings.eject.consecutiveFailures) connect failures in a row (last: \(failure.error ?? failure.cause.rawValue))")
        eventLoop.scheduleTask(in: .milliseconds(ms)) { [self] in
            let back = self.state.withLockedValue { s in
                s.index(of: target.id).map { s.targets[$0].isAvailable(at: Self.now()) } ?? false
            }
            if back { self.healthChanged(target.id, healthy: true, reason: "ejection ended") }
        }
    }

    private func okCounter(_ id: String) -> CoreMetrics.Counter {
        if let counter = okCounters.withLockedValue({ $0[id] }) { return counter }
        let counter = metrics.upstreamAttemptCounter(route: route, target: id, result: "ok")
        okCounters.withLockedValue { $0[id] = counter }
        return counter
    }

    /// An HTTP request's end: its target's load drops, and the attempt is
    /// counted (one lock for both).
    func requestFinished(_ target: PoolState.Target, failure: UpstreamFailure?, on eventLoop: EventLoop) {
        guard failure == nil else {
            connectionEnded(target.id)
            attemptFinished(target, failure: failure, on: eventLoop)
            return
        }
        state.withLockedValue {
            $0.connectionEnded(target.id)
            $0.connectSucceeded(target.id)
        }
        okCounter(target.id).increment()
    }

    private func healthChanged(_ id: String, healthy: Bool, reason: String) {
        metrics.upstreamHealthy(route: route, target: id, healthy)
        let level: Logger.Level = healthy ? .notice : .warning
        logger.log(level: level, "upstream_health", metadata: [
            "route": .string(route), "target": .string(id), "healthy": .stringConvertible(healthy), "reason": .string(reason),
        ])
    }

    // MARK: Active health checks

    /// Checks every target every `health.interval_ms`: `GET health.path`
    /// on its address; 2xx counts as healthy.
    func startHealthChecks(curl: CurlClient, eventLoop: EventLoop, tls: Route.UpstreamTLS?) {
        guard let health = settings.health, let first = settings.members.first else { return }
        let inFlight = NIOLockedValueBox(Set<String>())
        let task = eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(Int64(health.intervalMs))) { [self] _ in
            for target in self.targets {
                guard inFlight.withLockedValue({ $0.insert(target.id).inserted }) else { continue }
                let request = Self.healthRequest(target, path: health.path, timeoutMs: health.timeoutMs, tls: tls, scheme: first.url.isTLS ? "https" : "http")
                curl.execute(request, on: eventLoop).whenComplete { result in
                    inFlight.withLockedValue { _ = $0.remove(target.id) }
                    var ok = false
                    var reason = ""
                    switch result {
                    case .success(let response):
                        ok = (200..<300).contains(response.status)
                        reason = "GET \(health.path) answered \(response.status)"
                    case .failure(let error):
                        reason = "GET \(health.path): \((error as? CurlFailure)?.message ?? "\(error)")"
                    }
                    let changed = self.state.withLockedValue { $0.healthResult(target.id, ok: ok) }
                    if let healthy = changed {
                        let count = healthy ? health.healthyAfter : health.unhealthyAfter
                        self.healthChanged(target.id, healthy: healthy, reason: "\(reason) (\(count) in a row)")
                    }
                }
            }
        }
        repeating.withLockedValue { $0.append(task) }
    }

    static func healthRequest(_ target: PoolState.Target, path: String, timeoutMs: Int, tls: Route.UpstreamTLS?, scheme: String) -> CurlRequest {
        // The URL names the member's host (Host, SNI, certificate); the
        // connection goes to the target's address.
        var url = target.member.url
        url.scheme = scheme
        if url.isTLS, let name = tls?.serverName { url.host = name }
        let parts = path.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        url.path = String(parts[0])
        url.query = parts.count > 1 ? String(parts[1]) : nil
        var request = CurlRequest(
            url: url.description, method: "GET", headers: CurlHeaderList([]), body: nil,
            connectTimeoutMs: timeoutMs, totalTimeoutMs: timeoutMs, maxResponseBytes: 65_536)
        request.tls = tls
        let urlHost = url.host.contains(":") ? "[\(url.host)]" : url.host
        let address = target.address.contains(":") ? "[\(target.address)]" : target.address
        if url.host != target.address || url.port != target.port {
            request.connectTo = "\(urlHost):\(url.port):\(address):\(target.port)"
        }
        return request
    }

    // MARK: DNS discovery

    /// Re-resolves every member's host every `dns_refresh_ms`; every
    /// address is a target. Failures keep the last answer (logged).
    func startDiscovery(resolver: HostResolver, eventLoop: EventLoop) {
        guard settings.discovery == .dns else { return }
        let hosts = settings.members.map(\.url.host)
        let task = eventLoop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: .milliseconds(Int64(settings.dnsRefreshMs))) { [self] _ in
            resolver.resolve(hosts, on: eventLoop).map { answers in
                for (host, answer) in zip(hosts, answers) where answer == nil {
                    self.logger.warning("upstream_dns_failed", metadata: ["route": .string(self.route), "host": .string(host)])
                }
                let (added, removed) = self.state.withLockedValue { $0.replaceAddresses(answers) }
                for id in added { self.metrics.upstreamHealthy(route: self.route, target: id, true) }
                for id in removed { self.metrics.upstreamRemoved(route: self.route, target: id) }
                if !added.isEmpty || !removed.isEmpty {
                    self.logger.notice("upstream_targets", metadata: [
                        "route": .string(self.route), "added": .array(added.map { .string($0) }),
                        "removed": .array(removed.map { .string($0) }),
                        "targets": .array(self.targets.map { .string($0.id) }),
                    ])
                }
            }
        }
        repeating.withLockedValue { $0.append(task) }
    }

    /// Stops health checks and DNS refreshes.
    func stop() {
        for task in repeating.withLockedValue({ $0 }) { task.cancel() }
    }

    // MARK: Admin

    /// This route's entry in `GET /upstreams`.
    func snapshot(into w: inout JSONObjectWriter) {
        let now = Self.now()
        let targets = self.targets
        w.field("route", route)
        w.field("balance", settings.balance.rawValue)
        var list: [String] = []
        for t in targets {
            var o = JSONObjectWriter()
            o.field("target", t.id)
            o.field("url", t.member.url.description)
            o.field("weight", t.member.weight)
            o.field("healthy", t.healthy)
            o.field("ejected_for_ms", t.ejectedUntil > now ? Int(t.ejectedUntil - now) : nil)
            o.field("available", t.isAvailable(at: now))
            o.field("active", t.active)
            o.field("consecutive_failures", t.consecutiveFailures)
            list.append(o.finish())
        }
        w.field("targets", rawJSON: "[" + list.joined(separator: ",") + "]")
    }
}
