import NIOConcurrencyHelpers

/// The live sessions, for the connection limit, the shutdown drain and the
/// control API.
///
/// Touched twice per connection (open and close), never per frame, so a
/// lock is cheaper and simpler than per-loop sharding.
final class SessionRegistry: Sendable {
    /// By connection id (also what the control API looks up).
    private let sessions = NIOLockedValueBox<[String: Session]>([:])

    /// Registers a session; returns false if it was already registered.
    @discardableResult
    func add(_ session: Session) -> Bool {
        sessions.withLockedValue { $0.updateValue(session, forKey: session.id) == nil }
    }

    func remove(_ session: Session) {
        sessions.withLockedValue { _ = $0.removeValue(forKey: session.id) }
    }

    var count: Int { sessions.withLockedValue { $0.count } }

    var all: [Session] { sessions.withLockedValue { Array($0.values) } }

    func session(id: String) -> Session? { sessions.withLockedValue { $0[id] } }
}
