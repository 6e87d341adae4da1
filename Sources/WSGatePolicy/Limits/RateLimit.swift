/// A route's `rate_limit`: how fast one client may send.
public struct RateLimit: Sendable, Equatable {
    public enum Action: String, Sendable, Equatable, CaseIterable {
        /// Stop reading the client until it is back under the rate: TCP
        /// backpressure, nothing is lost.
        case throttle
        /// Close it: 1008 `rate limit exceeded` (cause `rate_limited`).
        case close
    }

    public var messagesPerSecond: Int? = nil
    public var bytesPerSecond: Int? = nil
    /// Messages a client may send at once after being quiet (default: one
    /// second's worth).
    public var burstMessages: Int? = nil
    public var action = Action.throttle

    public init() {}
}

/// A token bucket, refilled lazily from the clock it is given (no timer
/// while a client is under its rate). It may go into debt: a read batch is
/// taken whole, and the debt says how long the client must wait.
public struct TokenBucket: Sendable, Equatable {
    public let capacity: Double
    public let perSecond: Double
    public private(set) var tokens: Double
    private var last: UInt64  // nanoseconds

    public init(perSecond: Int, capacity: Int, now: UInt64) {
        self.perSecond = Double(perSecond)
        self.capacity = Double(capacity)
        self.tokens = Double(capacity)
        self.last = now
    }

    /// Takes `amount`; returns how many nanoseconds until the bucket is out
    /// of debt (0: within the rate).
    public mutating func take(_ amount: Int, now: UInt64) -> UInt64 {
        if now > last {
            tokens = min(capacity, tokens + perSecond * Double(now - last) / 1e9)
            last = now
        }
        tokens -= Double(amount)
        guard tokens < 0 else { return 0 }
        return UInt64((-tokens / perSecond * 1e9).rounded(.up))
    }
}

/// One connection's limiter: a message bucket and a byte bucket.
public struct RateLimiter: Sendable, Equatable {
    public let settings: RateLimit
    private var messages: TokenBucket?
    private var bytes: TokenBucket?

    public init(_ settings: RateLimit, now: UInt64) {
        self.settings = settings
        if let rate = settings.messagesPerSecond {
            messages = TokenBucket(perSecond: rate, capacity: settings.burstMessages ?? rate, now: now)
        }
        if let rate = settings.bytesPerSecond {
            bytes = TokenBucket(perSecond: rate, capacity: rate, now: now)
        }
    }

    /// Counts a read batch; returns the nanoseconds the client is over its
    /// rate by (0: it is not).
    public mutating func take(messages m: Int, bytes b: Int, now: UInt64) -> UInt64 {
        var wait: UInt64 = 0
        if m > 0, var bucket = messages {
            wait = max(wait, bucket.take(m, now: now))
            messages = bucket
        }
        if b > 0, var bucket = bytes {
            wait = max(wait, bucket.take(b, now: now))
            bytes = bucket
        }
        return wait
    }

    /// How many nanoseconds until both buckets are out of debt (0: now).
    /// A throttled client's release waits for this, not for the debt of
    /// the batch that put it over alone: what it sent meanwhile counts too.
    public mutating func debt(now: UInt64) -> UInt64 {
        var wait: UInt64 = 0
        if var bucket = messages {
            wait = max(wait, bucket.take(0, now: now))
            messages = bucket
        }
        if var bucket = bytes {
            wait = max(wait, bucket.take(0, now: now))
            bytes = bucket
        }
        return wait
    }

    /// What the client went over, for the log's `error`.
    public var description: String {
        var parts: [String] = []
        if let m = settings.messagesPerSecond { parts.append("\(m) messages/s") }
        if let b = settings.bytesPerSecond { parts.append("\(b) bytes/s") }
        return "over its rate limit (" + parts.joined(separator: ", ") + ")"
    }
}
