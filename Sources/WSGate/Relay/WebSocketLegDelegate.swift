import WSGateProtocol

/// What a `WebSocketLegHandler` reports: the Session for the client's
/// connection, `WebSocketUpstream` for an upstream's. Called on the leg's
/// event loop.
protocol WebSocketLegDelegate: AnyObject {
    /// Validated data frames of one read, serialized as the other leg takes them.
    func legFrames(_ batch: FrameBatch)
    /// The peer sent a close frame (`code` nil: no payload). Nothing is read after it.
    func legClose(code: UInt16?, reason: String)
    /// The peer broke RFC 6455; `framingBroken` when its stream cannot be
    /// parsed past this point (nothing more will be read).
    func legViolation(_ violation: FrameViolation, framingBroken: Bool)
    /// The end of a read batch.
    func legReadComplete()
    func legWritabilityChanged(_ writable: Bool)
    /// An error on the channel (NIO closes it next for I/O errors).
    func legError(_ error: Error)
    /// Whether the leg may read now (backpressure from the other leg).
    var legMayRead: Bool { get }
    /// A ping or pong passed: traffic for the idle timer.
    func legActivity()
}

extension WebSocketLegDelegate {
    func legActivity() {}
}
