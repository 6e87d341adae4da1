import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

/// Timeouts and limits a Session and its legs use, converted once from config.
struct SessionSettings: Sendable {
    var maxMessageBytes: Int
    var closeHandshake: TimeAmount
    var upstreamConnect: TimeAmount
    var upstreamHandshake: TimeAmount
    var idleTimeout: TimeAmount

    init(config: GatewayConfig) {
        maxMessageBytes = config.limits.maxMessageBytes
        closeHandshake = .milliseconds(Int64(config.timeouts.closeHandshakeMs))
        upstreamConnect = .milliseconds(Int64(config.timeouts.upstreamConnectMs))
        upstreamHandshake = .milliseconds(Int64(config.timeouts.upstreamHandshakeMs))
        idleTimeout = .milliseconds(Int64(config.limits.idleTimeoutMs))
    }
}

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
        self.serverTLS = try config.listen.tls.map(TLSFiles.serverContext)
        var upstreamTLS: [String: NIOSSLContext] = [:]
        for route in config.routes {
            if case .webSocket(let url) = route.upstream, url.isTLS {
                upstreamTLS[route.path] = try TLSFiles.clientContext(route.tls)
            }
        }
        self.upstreamTLS = upstreamTLS
        let needsHTTP = config.routes.contains { if case .http = $0.upstream { return true } else { return false } }
        self.curl = needsHTTP ? CurlWorkers(group: group) : nil
    }
}

/// The live sessions, for the connection limit and the shutdown drain.
///
/// Touched twice per connection (open and close), never per frame, so a
/// lock is cheaper and simpler than per-loop sharding.
final class SessionRegistry: Sendable {
    private let sessions = NIOLockedValueBox<[ObjectIdentifier: Session]>([:])

    /// Registers a session; returns false if it was already registered.
    @discardableResult
    func add(_ session: Session) -> Bool {
        sessions.withLockedValue { $0.updateValue(session, forKey: ObjectIdentifier(session)) == nil }
    }

    func remove(_ session: Session) {
        sessions.withLockedValue { _ = $0.removeValue(forKey: ObjectIdentifier(session)) }
    }

    var count: Int { sessions.withLockedValue { $0.count } }

    var all: [Session] { sessions.withLockedValue { Array($0.values) } }
}
