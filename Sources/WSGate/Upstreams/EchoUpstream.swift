import NIOCore
import NIOWebSocket

/// `builtin:echo`: every client message comes straight back, frame by frame.
///
/// It has no socket of its own: "writable" means the client can take the
/// echoed bytes, so a client that sends faster than it reads is paused by
/// the same backpressure path as a real upstream.
final class EchoUpstream: UpstreamLeg {
    private weak var session: Session?
    private var ended = false

    init(session: Session) {
        self.session = session
    }

    func connect() -> EventLoopFuture<String?> {
        session!.eventLoop.makeSucceededFuture(nil)
    }

    func startRelaying() {}

    func send(_ frame: WebSocketFrame) {
        var frame = frame
        if let key = frame.maskKey {
            // Toward the client frames must not be masked: unmask (one copy).
            frame.data.applyWebSocketMask(key)
            frame.maskKey = nil
        }
        session?.upstreamReceived(frame)
    }

    func flush() {
        session?.upstreamReadComplete()
    }

    var isWritable: Bool { session?.isClientWritable ?? false }

    func clientBecameWritable() {
        session?.upstreamBecameWritable()
    }

    func close(code: UInt16?, reason: String) { end() }

    func abort() { end() }

    private func end() {
        guard !ended else { return }
        ended = true
        session?.upstreamEnded()
    }
}
