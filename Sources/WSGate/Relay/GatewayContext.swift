import WSGatePolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// What every Session shares: config-derived policy and settings, the event
/// log, and the registry of live sessions.
final class GatewayContext: Sendable {
    let config: GatewayConfig
    let routes: RouteTable
    let policy: ClosePolicy
    let settings: SessionSettings
    let eventLog: EventLog
    let logger: Logger
    let registry = SessionRegistry()
    /// The libcurl workers, only when a route has an HTTP upstream.
    let curl: CurlWorkers?
    let metrics: GatewayMetrics
    /// `listen.tls`: terminate wss:// here.
    let serverTLS: NIOSSLContext?
    /// One client TLS context per `wss://` route, by route path.
    let upstreamTLS: [String: NIOSSLContext]
    private let draining = NIOLockedValueBox(false)

    /// True once a drain started: `/readyz` answers 503.
    var isDraining: Bool { draining.withLockedValue { $0 } }

    func startDraining() { draining.withLockedValue { $0 = true } }

    init(config: GatewayConfig, eventLog: EventLog, logger: Logger, group: EventLoopGroup) throws {
        self.config = config
        self.routes = RouteTable(routes: config.routes)
        self.policy = ClosePolicy(config: config)
        self.settings = SessionSettings(config: config)
        self.eventLog = eventLog
        self.logger = logger
        self.metrics = GatewayMetrics(routes: config.routes)
        self.serverTLS = try config.listen.tls.map(TLSContexts.serverContext)
        var upstreamTLS: [String: NIOSSLContext] = [:]
        for route in config.routes {
            if case .webSocket(let url) = route.upstream, url.isTLS {
                upstreamTLS[route.path] = try TLSContexts.clientContext(route.tls)
            }
        }
        self.upstreamTLS = upstreamTLS
        let needsHTTP = config.routes.contains { if case .http = $0.upstream { return true } else { return false } }
        self.curl = needsHTTP ? CurlWorkers(group: group) : nil
    }
}
