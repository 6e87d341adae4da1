import Logging
import WSGatePolicy

/// What every Session needs from the gateway, and nothing more: the close
/// policy and the timeouts, where close lines and metrics go, and the
/// registry of live sessions. Built once by the server (`GatewayContext`).
final class SessionEnvironment: Sendable {
    let policy: ClosePolicy
    /// Each route's policy (its `close_profile` and `close_codes`), by path.
    let routePolicies: [String: ClosePolicy]
    let settings: SessionSettings
    let eventLog: EventLog
    let logger: Logger
    let metrics: GatewayMetrics
    let registry = SessionRegistry()
    let channels = ChannelRegistry()
    let perIP: ConnectionsPerIP

    init(
        policy: ClosePolicy, routePolicies: [String: ClosePolicy] = [:], settings: SessionSettings, eventLog: EventLog,
        logger: Logger, metrics: GatewayMetrics, maxConnectionsPerIP: Int = 0
    ) {
        self.perIP = ConnectionsPerIP(limit: maxConnectionsPerIP)
        self.policy = policy
        self.routePolicies = routePolicies
        self.settings = settings
        self.eventLog = eventLog
        self.logger = logger
        self.metrics = metrics
    }

    /// The close policy of a connection on `route`.
    func policy(for route: Route) -> ClosePolicy { routePolicies[route.path] ?? policy }
}
