/// Everything known about one finished client connection: the record behind
/// the `websocket_close` log line (and, later, metrics and disconnect hooks).
public struct CloseEvent: Sendable, Equatable {
    public var timestamp: UInt64  // ms since the epoch
    public var connectionID: String
    public var route: String
    public var upstream: String
    public var clientAddress: String
    public var code: UInt16
    public var reason: String
    public var wasClean: Bool
    public var initiator: Initiator
    public var cause: CloseCause
    public var upstreamCode: UInt16?
    public var upstreamReason: String?
    public var upstreamStatus: Int?
    public var error: String?
    public var durationMs: Int64
    public var messagesIn: UInt64
    public var messagesOut: UInt64
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    /// Contract §8: the upstream member dialled (`host:port`), the number of
    /// connect attempts, and the token's `sub`; nil when not used.
    public var target: String?
    public var attempts: Int?
    public var subject: String?

    public init(
        timestamp: UInt64, connectionID: String, route: String, upstream: String, clientAddress: String, code: UInt16, reason: String, wasClean: Bool, initiator: Initiator, cause: CloseCause, upstreamCode: UInt16? = nil, upstreamReason: String? = nil, upstreamStatus: Int? = nil, error: String? = nil, durationMs: Int64, messagesIn: UInt64, messagesOut: UInt64, bytesIn: UInt64, bytesOut: UInt64,
        target: String? = nil, attempts: Int? = nil, subject: String? = nil
    ) {
        self.timestamp = timestamp
        self.connectionID = connectionID
        self.route = route
        self.upstream = upstream
        self.clientAddress = clientAddress
        self.code = code
        self.reason = reason
        self.wasClean = wasClean
        self.initiator = initiator
        self.cause = cause
        self.upstreamCode = upstreamCode
        self.upstreamReason = upstreamReason
        self.upstreamStatus = upstreamStatus
        self.error = error
        self.durationMs = durationMs
        self.messagesIn = messagesIn
        self.messagesOut = messagesOut
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.target = target
        self.attempts = attempts
        self.subject = subject
    }

    /// The JSON object of the README's log format, in its field order, on
    /// one line.
    public func jsonLine(level: String = "info") -> String {
        var w = JSONObjectWriter()
        w.field("ts", rawJSON: JSONText.quoted(Timestamp.iso8601(millisecondsSinceEpoch: timestamp)))
        w.field("level", level)
        w.field("event", "websocket_close")
        w.field("connection_id", connectionID)
        w.field("route", route)
        w.field("upstream", upstream)
        w.field("target", target)
        w.field("attempts", attempts)
        w.field("client_addr", clientAddress)
        w.field("subject", subject)
        w.field("code", Int(code))
        w.field("reason", reason)
        w.field("was_clean", wasClean)
        w.field("initiator", initiator.rawValue)
        w.field("cause", cause.rawValue)
        w.field("upstream_code", upstreamCode.map(Int.init))
        w.field("upstream_reason", upstreamReason)
        w.field("upstream_status", upstreamStatus)
        w.field("error", error)
        w.field("duration_ms", Int(durationMs))
        w.field("messages_in", Int(messagesIn))
        w.field("messages_out", Int(messagesOut))
        w.field("bytes_in", Int(bytesIn))
        w.field("bytes_out", Int(bytesOut))
        return w.finish()
    }
}
