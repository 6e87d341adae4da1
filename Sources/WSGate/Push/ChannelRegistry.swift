import NIOConcurrencyHelpers

/// Which live connections are subscribed to which channels, for
/// `POST /channels/{name}`. Touched when a connection starts relaying and
/// when it ends, and per publish; never per relayed frame.
final class ChannelRegistry: Sendable {
    private let channels = NIOLockedValueBox<[String: [ObjectIdentifier: Session]]>([:])

    func subscribe(_ session: Session, to names: [String]) {
        guard !names.isEmpty else { return }
        channels.withLockedValue { channels in
            for name in names { channels[name, default: [:]][ObjectIdentifier(session)] = session }
        }
    }

    func unsubscribe(_ session: Session, from names: [String]) {
        guard !names.isEmpty else { return }
        channels.withLockedValue { channels in
            for name in names {
                channels[name]?.removeValue(forKey: ObjectIdentifier(session))
                if channels[name]?.isEmpty == true { channels[name] = nil }
            }
        }
    }

    func subscribers(of name: String) -> [Session] {
        channels.withLockedValue { $0[name].map { Array($0.values) } ?? [] }
    }
}
