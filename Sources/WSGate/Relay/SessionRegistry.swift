import NIOConcurrencyHelpers

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
