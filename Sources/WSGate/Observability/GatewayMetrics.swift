import WSGateProtocol
import WSGatePolicy
import CoreMetrics

import NIOConcurrencyHelpers
import Prometheus

/// The gateway's Prometheus metrics, through swift-metrics with a registry of
/// its own (not the process-global one, so several gateways can live in one
/// process, as in tests).
///
/// Label values are bounded by construction: route names come from the
/// config, codes and causes from the close policy, directions are `in`/`out`.
/// Nothing a client sends becomes a label.
final class GatewayMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory

    let connectionsActive: CoreMetrics.Meter
    private let connectionsTotal: [String: CoreMetrics.Counter]  // by route
    let messagesIn: CoreMetrics.Counter
    let messagesOut: CoreMetrics.Counter
    let bytesIn: CoreMetrics.Counter
    let bytesOut: CoreMetrics.Counter
    let upstreamConnect: CoreMetrics.Timer
    let httpRequest: CoreMetrics.Timer
    /// Connections closed unread because `limits.max_pending_handshakes`
    /// were under way.
    let handshakesRefused: CoreMetrics.Counter
    /// Log lines the log buffer had no room for (stdout stalled).
    let logLinesDropped: CoreMetrics.Counter
    /// `wsgate_close_events_total` counters, created on first use per
    /// (code, cause, route): a bounded set.
    private let closeEvents = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])

    init(routes: [Route]) {
        var factory = PrometheusMetricsFactory(registry: registry)
        let latencyBuckets: [Duration] = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
            .milliseconds(2500), .seconds(5), .seconds(10),
        ]
        factory.defaultDurationHistogramBuckets = latencyBuckets
        self.factory = factory
        connectionsActive = CoreMetrics.Meter(label: "wsgate_connections_active", dimensions: [], factory: factory)
        var perRoute: [String: CoreMetrics.Counter] = [:]
        for route in routes {
            perRoute[route.path] = CoreMetrics.Counter(label: "wsgate_connections_total", dimensions: [("route", route.path)], factory: factory)
        }
        connectionsTotal = perRoute
        messagesIn = CoreMetrics.Counter(label: "wsgate_messages_total", dimensions: [("direction", "in")], factory: factory)
        messagesOut = CoreMetrics.Counter(label: "wsgate_messages_total", dimensions: [("direction", "out")], factory: factory)
        bytesIn = CoreMetrics.Counter(label: "wsgate_bytes_total", dimensions: [("direction", "in")], factory: factory)
        bytesOut = CoreMetrics.Counter(label: "wsgate_bytes_total", dimensions: [("direction", "out")], factory: factory)
        upstreamConnect = CoreMetrics.Timer(label: "wsgate_upstream_connect_seconds", dimensions: [], factory: factory)
        httpRequest = CoreMetrics.Timer(label: "wsgate_http_upstream_request_seconds", dimensions: [], factory: factory)
        handshakesRefused = CoreMetrics.Counter(label: "wsgate_handshakes_refused_total", dimensions: [], factory: factory)
        logLinesDropped = CoreMetrics.Counter(label: "wsgate_log_lines_dropped_total", dimensions: [], factory: factory)
        pushSent = CoreMetrics.Counter(label: "wsgate_push_total", dimensions: [("result", "sent")], factory: factory)
        pushBusy = CoreMetrics.Counter(label: "wsgate_push_total", dimensions: [("result", "busy")], factory: factory)
        pushGone = CoreMetrics.Counter(label: "wsgate_push_total", dimensions: [("result", "gone")], factory: factory)
        // Present from the start, so dashboards see 0 rather than no series.
        connectionsActive.set(0)
        handshakesRefused.increment(by: 0)
        logLinesDropped.increment(by: 0)
        for c in [pushSent, pushBusy, pushGone] { c.increment(by: 0) }
    }

    func connectionOpened(route: String) {
        connectionsTotal[route]?.increment()
        connectionsActive.increment()
    }

    func connectionClosed(_ event: CloseEvent) {
        connectionsActive.decrement()
        let code = Self.codeLabel(event)
        let key = "\(code)|\(event.cause.rawValue)|\(event.route)"
        let counter = closeEvents.withLockedValue { counters -> CoreMetrics.Counter in
            if let c = counters[key] { return c }
            let c = CoreMetrics.Counter(
                label: "wsgate_close_events_total",
                dimensions: [("code", code), ("cause", event.cause.rawValue), ("route", event.route)],
                factory: factory)
            counters[key] = c
            return c
        }
        counter.increment()
    }

    /// The `code` label of `wsgate_close_events_total`. Codes the gateway
    /// chooses are few and kept exact. A code a peer chose (`client_closed`,
    /// `upstream_closed`) in the application ranges 3000–4999 is bucketed as
    /// `3xxx` or `4xxx`: otherwise every client could add up to 2,000 series
    /// per route to what Prometheus stores.
    static func codeLabel(_ event: CloseEvent) -> String {
        guard event.cause == .clientClosed || event.cause == .upstreamClosed || event.cause == .kicked else { return String(event.code) }
        if CloseCode.registeredRange.contains(event.code) { return "3xxx" }
        if CloseCode.privateRange.contains(event.code) { return "4xxx" }
        return String(event.code)
    }

    // MARK: Pools (labels from the config and DNS answers, never from clients)

    private let poolCounters = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])
    private let poolGauges = NIOLockedValueBox<[String: CoreMetrics.Meter]>([:])

    /// `wsgate_upstream_attempts_total{route,target,result}`: `result` is
    /// `ok` or the failure's cause.
    func upstreamAttempt(route: String, target: String, result: String) {
        upstreamAttemptCounter(route: route, target: target, result: result).increment()
    }

    /// The counter itself, for callers that keep it (the pool keeps each
    /// target's `ok` counter: a request must not build a label string).
    func upstreamAttemptCounter(route: String, target: String, result: String) -> CoreMetrics.Counter {
        let key = "\(route)|\(target)|\(result)"
        return poolCounters.withLockedValue { counters -> CoreMetrics.Counter in
            if let c = counters[key] { return c }
            let c = CoreMetrics.Counter(
                label: "wsgate_upstream_attempts_total",
                dimensions: [("route", route), ("target", target), ("result", result)], factory: factory)
            counters[key] = c
            return c
        }
    }

    /// `wsgate_upstream_healthy{route,target}`: 1 while the target takes new
    /// connections (healthy and not ejected), else 0.
    func upstreamHealthy(route: String, target: String, _ healthy: Bool) {
        let key = "\(route)|\(target)"
        let gauge = poolGauges.withLockedValue { gauges -> CoreMetrics.Meter in
            if let g = gauges[key] { return g }
            let g = CoreMetrics.Meter(label: "wsgate_upstream_healthy", dimensions: [("route", route), ("target", target)], factory: factory)
            gauges[key] = g
            return g
        }
        gauge.set(healthy ? 1 : 0)
    }

    private let rateCounters = NIOLockedValueBox<[String: CoreMetrics.Counter]>([:])

    /// `wsgate_push_total{result}`: control-API messages `sent` to clients,
    /// or refused because the client was `busy` (not reading: 429) or `gone`
    /// (410). One series per result, made at start.
    let pushSent: CoreMetrics.Counter
    let pushBusy: CoreMetrics.Counter
    let pushGone: CoreMetrics.Counter

    /// `wsgate_rate_limited_total{route,action}`: read batches over a
    /// client's rate (throttled), or connections closed for it.
    func rateLimited(route: String, action: String) {
        let key = "\(route)|\(action)"
        rateCounters.withLockedValue { counters -> CoreMetrics.Counter in
            if let c = counters[key] { return c }
            let c = CoreMetrics.Counter(label: "wsgate_rate_limited_total", dimensions: [("route", route), ("action", action)], factory: factory)
            counters[key] = c
            return c
        }.increment()
    }

    /// A target DNS no longer lists: its gauge goes (its counters stay, as
    /// counters do).
    func upstreamRemoved(route: String, target: String) {
        poolGauges.withLockedValue { $0.removeValue(forKey: "\(route)|\(target)") }?.destroy()
    }

    /// The Prometheus text exposition of every metric.
    func render() -> String {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}
