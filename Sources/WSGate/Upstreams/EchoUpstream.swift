import NIOCore

/// `builtin:echo`: every client message comes straight back, frame by frame.
///
/// It has no socket of its own: "writable" means the client can take the
/// echoed bytes, so a client that sends faster than it reads is paused by
/// the same backpressure path as a real upstream.
final class EchoUpstream: LocalUpstream {
    private(set) weak var delegate: UpstreamLegDelegate?
    var hasEnded = false
    private let eventLoop: EventLoop

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    func connect(delegate: UpstreamLegDelegate) -> EventLoopFuture<String?> {
        self.delegate = delegate
        return eventLoop.makeSucceededFuture(nil)
    }

    func startRelaying() {}

    /// The client leg unmasks the frames while copying them out: they go
    /// back as they are.
    var clientFrameFormat: ClientFrameFormat { .plainFrames }

    func send(_ batch: FrameBatch) {
        delegate?.upstreamSent(batch)
    }

    func flush() {
        delegate?.upstreamReadComplete()
    }

    var isWritable: Bool { delegate?.mayReadUpstream ?? false }

    func clientBecameWritable() {
        delegate?.upstreamBecameWritable()
    }
}
