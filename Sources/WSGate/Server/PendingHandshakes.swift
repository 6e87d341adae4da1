import NIOConcurrencyHelpers

/// Counts connections between accept and their 101 (or their HTTP error
/// answer), against `limits.max_pending_handshakes`.
///
/// Upgraded connections are bounded by `max_connections`; these are the
/// ones that are not connections yet: slow or idle request heads and
/// upgrades waiting on an upstream. Without a bound, a client that opens
/// sockets and sends nothing holds one file descriptor and one pipeline
/// each until `handshake_timeout_ms`. Taken once per accepted connection,
/// never per frame.
final class PendingHandshakes: Sendable {
    let limit: Int
    private let count = NIOLockedValueBox(0)

    init(limit: Int) {
        self.limit = limit
    }

    var current: Int { count.withLockedValue { $0 } }

    /// False when `limit` handshakes are under way already.
    func enter() -> Bool {
        count.withLockedValue { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
    }

    func leave() {
        count.withLockedValue { $0 -= 1 }
    }
}
