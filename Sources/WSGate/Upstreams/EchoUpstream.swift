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

    /// The client leg unmasks the frames while copying them out: they go
    /// back as they are.
    var clientFrameFormat: ClientFrameFormat { .plainFrames }

    func send(_ frame: DataFrame) {
        assertionFailure("the echo upstream takes plain frames")
    }

    func sendFrames(_ bytes: ByteBuffer, messages: Int, payloadBytes: Int) {
        session?.upstreamFrames(bytes, messages: messages, payloadBytes: payloadBytes)
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
