import NIOConcurrencyHelpers

/// Upgraded connections per client address, against
/// `limits.max_connections_per_ip`. Taken once when a connection is
/// admitted and once when it ends, never per frame.
final class ConnectionsPerIP: Sendable {
    let limit: Int
    private let counts = NIOLockedValueBox<[String: Int]>([:])

    init(limit: Int) {
        self.limit = limit
    }

    /// False when `ip` has `limit` connections already (then nothing is counted).
    func enter(_ ip: String) -> Bool {
        guard limit > 0 else { return true }
        return counts.withLockedValue { counts in
            let n = counts[ip, default: 0]
            guard n < limit else { return false }
            counts[ip] = n + 1
            return true
        }
    }

    func leave(_ ip: String) {
        guard limit > 0 else { return }
        counts.withLockedValue { counts in
            let n = counts[ip, default: 1] - 1
            counts[ip] = n > 0 ? n : nil
        }
    }
}
