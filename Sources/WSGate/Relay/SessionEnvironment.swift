import Logging
import WSGatePolicy

/// What every Session needs from the gateway, and nothing more: the close
/// policy and the timeouts, where close lines and metrics go, and the
/// registry of live sessions. Built once by the server (`GatewayContext`).
final class SessionEnvironment: Sendable {
    let policy: ClosePolicy
    let settings: SessionSettings
    let eventLog: EventLog
    let logger: Logger
    let metrics: GatewayMetrics
    let registry = SessionRegistry()

    init(policy: ClosePolicy, settings: SessionSettings, eventLog: EventLog, logger: Logger, metrics: GatewayMetrics) {
        self.policy = policy
        self.settings = settings
        self.eventLog = eventLog
        self.logger = logger
        self.metrics = metrics
    }
}
