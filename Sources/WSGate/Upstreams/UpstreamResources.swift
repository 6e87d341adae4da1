import CoreMetrics
import Logging
import NIOCore
import NIOSSL
import WSGatePolicy

/// What building upstream legs takes, shared by every session: the config's
/// limits and timeouts, the libcurl workers (only when a route is HTTP), one
/// TLS client context per `wss://` route, and the request-latency histogram.
final class UpstreamResources: Sendable {
    let config: GatewayConfig
    let settings: SessionSettings
    let logger: Logger
    /// The libcurl workers, only when a route has an HTTP upstream or
    /// active health checks.
    let curl: CurlWorkers?
    /// One client TLS context per `wss://` route, by route path.
    let tls: [String: NIOSSLContext]
    /// `wsgate_http_upstream_request_seconds`.
    let httpRequestTimer: CoreMetrics.Timer
    /// One pool per `ws://` and `http://` route, by route path.
    let pools: [String: UpstreamPool]
    /// For `discovery: dns`, when a route uses it.
    let resolver: HostResolver?

    /// Throws when a route's CA file cannot be loaded.
    init(config: GatewayConfig, settings: SessionSettings, logger: Logger, metrics: GatewayMetrics, group: EventLoopGroup) throws {
        self.config = config
        self.settings = settings
        self.logger = logger
        self.httpRequestTimer = metrics.httpRequest
        var pools: [String: UpstreamPool] = [:]
        for route in config.routes where !route.pool.members.isEmpty {
            pools[route.path] = UpstreamPool(route: route, metrics: metrics, logger: logger)
        }
        self.pools = pools
        if config.routes.contains(where: { $0.pool.discovery == .dns }) || config.cluster.peersDNS != nil {
            self.resolver = config.resolver.isEmpty
                ? SystemResolver() : DNSResolver(servers: config.resolver.map { ($0.host, $0.port) })
        } else {
            self.resolver = nil
        }
        var tls: [String: NIOSSLContext] = [:]
        for route in config.routes {
            if case .webSocket(let url) = route.upstream, url.isTLS {
                tls[route.path] = try UpstreamTLSContext.clientContext(route.tls, shutdownTimeout: settings.closeHandshake)
            }
        }
        self.tls = tls
        let needsHTTP = config.routes.contains { if case .http = $0.upstream { return true } else { return false } }
        // libcurl also runs the active health checks.
        let needsCurl = needsHTTP || config.routes.contains { route in
            if route.pool.health != nil { return true }
            if case .jwksURL? = route.auth?.keys { return true }
            return false
        } || !config.cluster.peers.isEmpty || config.cluster.peersDNS != nil
        self.curl = needsCurl ? CurlWorkers(group: group) : nil
    }

    /// Starts active health checks and DNS discovery, where routes ask for them.
    func startPools(group: EventLoopGroup) {
        for route in config.routes {
            guard let pool = pools[route.path] else { continue }
            let loop = group.next()
            if let curl = curl?.client(for: loop) {
                pool.startHealthChecks(curl: curl, eventLoop: loop, tls: route.tls)
            }
            if let resolver { pool.startDiscovery(resolver: resolver, eventLoop: loop) }
        }
    }

    /// Stops them (at the drain).
    func stopPools() async {
        for pool in pools.values { pool.stop() }
        await resolver?.shutdown()
    }
}
