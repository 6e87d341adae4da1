import WSGatePolicy
import Logging

/// Writes the gateway's structured event lines (`websocket_close`,
/// `websocket_reject`) in the configured format. They bypass swift-log's
/// metadata dictionary because their fields have a fixed order and JSON
/// types (numbers, booleans, nulls) that operators' parsers rely on.
public struct EventLog: Sendable {
    public let format: GatewayConfig.LogFormat
    public let sink: LogSink
    /// `log.redact_query`: applied by whoever builds an event (a close
    /// event's fields are redacted once, for the line and the
    /// `disconnect_url` body alike), and here to reject lines.
    public let redaction: QueryRedaction

    public init(format: GatewayConfig.LogFormat, sink: LogSink = .standardOutput, redaction: QueryRedaction = QueryRedaction()) {
        self.format = format
        self.sink = sink
        self.redaction = redaction
    }

    public func closed(_ event: CloseEvent) {
        switch format {
        case .json:
            sink.writeLine(event.jsonLine())
        case .text:
            var m: Logger.Metadata = [
                "connection_id": .string(event.connectionID), "route": .string(event.route),
                "upstream": .string(event.upstream), "client_addr": .string(event.clientAddress),
                "code": .stringConvertible(Int(event.code)), "reason": .string(event.reason),
                "was_clean": .stringConvertible(event.wasClean), "initiator": .string(event.initiator.rawValue),
                "cause": .string(event.cause.rawValue), "duration_ms": .stringConvertible(Int(event.durationMs)),
                "messages_in": .stringConvertible(Int(event.messagesIn)), "messages_out": .stringConvertible(Int(event.messagesOut)),
                "bytes_in": .stringConvertible(Int(event.bytesIn)), "bytes_out": .stringConvertible(Int(event.bytesOut)),
            ]
            if let c = event.upstreamCode { m["upstream_code"] = .stringConvertible(Int(c)) }
            if let r = event.upstreamReason { m["upstream_reason"] = .string(r) }
            if let s = event.upstreamStatus { m["upstream_status"] = .stringConvertible(s) }
            if let e = event.error { m["error"] = .string(e) }
            if let t = event.target { m["target"] = .string(t) }
            if let a = event.attempts { m["attempts"] = .stringConvertible(a) }
            if let s = event.subject { m["subject"] = .string(s) }
            sink.writeLine(GatewayLogHandler.textLine(level: .info, message: "websocket_close", metadata: m, timestamp: event.timestamp))
        }
    }

    /// A request refused before the upgrade (no route, not a WebSocket
    /// request, bad origin, …).
    public struct Rejection: Sendable {
        public var status: Int
        public var reason: String
        public var method: String
        public var path: String
        public var clientAddress: String
        public var route: String?
        public var origin: String?
        public var error: String?

        public init(status: Int, reason: String, method: String, path: String, clientAddress: String, route: String? = nil, origin: String? = nil, error: String? = nil) {
            self.status = status
            self.reason = reason
            self.method = method
            self.path = path
            self.clientAddress = clientAddress
            self.route = route
            self.origin = origin
            self.error = error
        }
    }

    public func rejected(_ r: Rejection) {
        let level = "info"
        var r = r
        r.path = redaction.redact(r.path)
        r.error = r.error.map(redaction.redact)
        switch format {
        case .json:
            var w = JSONObjectWriter()
            w.field("ts", Timestamp.iso8601(millisecondsSinceEpoch: Timestamp.nowMilliseconds()))
            w.field("level", level)
            w.field("event", "websocket_reject")
            w.field("status", r.status)
            w.field("reason", r.reason)
            w.field("method", r.method)
            w.field("path", r.path)
            w.field("route", r.route)
            w.field("origin", r.origin)
            w.field("client_addr", r.clientAddress)
            w.field("error", r.error)
            sink.writeLine(w.finish())
        case .text:
            var m: Logger.Metadata = [
                "status": .stringConvertible(r.status), "reason": .string(r.reason), "method": .string(r.method),
                "path": .string(r.path), "client_addr": .string(r.clientAddress),
            ]
            if let route = r.route { m["route"] = .string(route) }
            if let origin = r.origin { m["origin"] = .string(origin) }
            if let error = r.error { m["error"] = .string(error) }
            sink.writeLine(GatewayLogHandler.textLine(level: .info, message: "websocket_reject", metadata: m))
        }
    }
}

extension EventLog {
    /// A config problem at start-up, as a JSON line on stdout (the log
    /// stream) so a container's logs say why it did not start.
    public static func startupError(path: String, problem: ConfigProblem, sink: LogSink = .standardOutput) {
        var w = JSONObjectWriter()
        w.field("ts", Timestamp.iso8601(millisecondsSinceEpoch: Timestamp.nowMilliseconds()))
        w.field("level", "error")
        w.field("event", "config_error")
        w.field("file", path)
        w.field("key", problem.path)
        w.field("message", problem.message)
        sink.writeLine(w.finish())
    }
}
