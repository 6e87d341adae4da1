import WSGatePolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The gateway's composition root, built once from the config: routing,
/// what sessions share (`SessionEnvironment`), what upstream legs are built
/// from (`UpstreamResources`), the listener's TLS, and the drain flag the
/// admin listener reports.
final class GatewayContext: AdminStatus {
    let config: GatewayConfig
    let routes: RouteTable
    let environment: SessionEnvironment
    let upstreams: UpstreamResources
    /// `listen.tls`: terminate wss:// here.
    let serverTLS: NIOSSLContext?
    private let draining = NIOLockedValueBox(false)
    /// This instance's name: the prefix of its connection ids
    /// (`<instance>.<random>`), so that any instance of a cluster knows
    /// which one holds a connection.
    let instanceID: String

    /// Each `auth` route's token verifier, by route path (made at start).
    let verifiers = NIOLockedValueBox<[String: JWTVerifier]>([:])

    func verifier(for route: Route) -> JWTVerifier? {
        route.auth == nil ? nil : verifiers.withLockedValue { $0[route.path] }
    }

    /// Ready for traffic: not draining, and every JWKS a route needs has
    /// loaded (`/readyz`).
    var notReadyReason: String? {
        if isDraining { return "draining" }
        let waiting = verifiers.withLockedValue { $0.values.filter { !$0.isReady }.map(\.route) }
        return waiting.isEmpty ? nil : "signing keys not loaded for \(waiting.sorted().joined(separator: ", "))"
    }

    /// Connections accepted and not yet upgraded or answered.
    let pendingHandshakes: PendingHandshakes

    var settings: SessionSettings { environment.settings }
    var eventLog: EventLog { environment.eventLog }
    var logger: Logger { environment.logger }
    var metrics: GatewayMetrics { environment.metrics }
    var registry: SessionRegistry { environment.registry }

    /// True once a drain started: `/readyz` answers 503.
    var isDraining: Bool { draining.withLockedValue { $0 } }

    func startDraining() { draining.withLockedValue { $0 = true } }

    /// The host name's first label, in the characters an instance id may use.
    static func hostInstanceID() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count - 1)
        let name = String(cString: buffer).split(separator: ".").first.map(String.init) ?? ""
        let cleaned = String(name.filter { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }.prefix(63))
        return cleaned.isEmpty ? "wsgate" : cleaned
    }

    func upstreamsJSON() -> String {
        var routes: [String] = []
        for route in config.routes {
            guard let pool = upstreams.pools[route.path] else { continue }
            var w = JSONObjectWriter()
            pool.snapshot(into: &w)
            routes.append(w.finish())
        }
        var w = JSONObjectWriter()
        w.field("routes", rawJSON: "[" + routes.joined(separator: ",") + "]")
        return w.finish()
    }

    func metricsText() -> String {
        let dropped = eventLog.sink.takeDroppedCount()
        if dropped > 0 { metrics.logLinesDropped.increment(by: Int64(dropped)) }
        return metrics.render()
    }

    init(config: GatewayConfig, eventLog: EventLog, logger: Logger, group: EventLoopGroup) throws {
        self.config = config
        self.routes = RouteTable(routes: config.routes)
        self.instanceID = config.cluster.instanceID ?? Self.hostInstanceID()
        self.pendingHandshakes = PendingHandshakes(limit: config.limits.maxPendingHandshakes)
        let settings = SessionSettings(config: config)
        let metrics = GatewayMetrics(routes: config.routes)
        self.environment = SessionEnvironment(
            policy: ClosePolicy(config: config),
            routePolicies: Dictionary(uniqueKeysWithValues: config.routes.map { ($0.path, ClosePolicy(config: config, route: $0)) }),
            settings: settings, eventLog: eventLog, logger: logger, metrics: metrics,
            maxConnectionsPerIP: config.limits.maxConnectionsPerIP)
        self.serverTLS = try config.listen.tls.map { try ServerTLS.context($0, shutdownTimeout: settings.closeHandshake) }
        self.upstreams = try UpstreamResources(
            config: config, settings: settings, logger: logger, metrics: metrics, group: group)
    }
}
