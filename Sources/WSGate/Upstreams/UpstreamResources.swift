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
    /// The libcurl workers, only when a route has an HTTP upstream.
    let curl: CurlWorkers?
    /// One client TLS context per `wss://` route, by route path.
    let tls: [String: NIOSSLContext]
    /// `wsgate_http_upstream_request_seconds`.
    let httpRequestTimer: CoreMetrics.Timer

    /// Throws when a route's CA file cannot be loaded.
    init(config: GatewayConfig, settings: SessionSettings, logger: Logger, httpRequestTimer: CoreMetrics.Timer, group: EventLoopGroup) throws {
        self.config = config
        self.settings = settings
        self.logger = logger
        self.httpRequestTimer = httpRequestTimer
        var tls: [String: NIOSSLContext] = [:]
        for route in config.routes {
            if case .webSocket(let url) = route.upstream, url.isTLS {
                tls[route.path] = try UpstreamTLSContext.clientContext(route.tls, shutdownTimeout: settings.closeHandshake)
            }
        }
        self.tls = tls
        let needsHTTP = config.routes.contains { if case .http = $0.upstream { return true } else { return false } }
        self.curl = needsHTTP ? CurlWorkers(group: group) : nil
    }
}
