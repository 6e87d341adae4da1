/// What an upstream leg reports to its session: the one output toward the
/// client (`upstreamSent`), backpressure both ways, and the events that can
/// end a connection. Upstreams know nothing else of the Session.
protocol UpstreamLegDelegate: AnyObject {
    /// Data frames for the client, serialized as they go to it (unmasked).
    /// Not flushed.
    func upstreamSent(_ batch: FrameBatch)

    /// The end of an upstream read batch: flush toward the client.
    func upstreamReadComplete()

    /// Whether the upstream leg may read more now (the client can take it).
    var mayReadUpstream: Bool { get }

    /// The upstream can take client data again: resume reading the client.
    func upstreamBecameWritable()

    /// Something that decides or completes the connection's end.
    func upstreamEvent(_ event: UpstreamEvent)
}

/// Events from an upstream leg that matter to how the connection ends.
enum UpstreamEvent {
    /// The upstream sent a close frame (the leg has answered it).
    case closeReceived(code: UInt16?, reason: String)
    /// The leg sent a close frame of its own (recorded for the log).
    case closeSent(code: UInt16?, reason: String)
    /// The upstream broke mid-session (reset, protocol error, HTTP error).
    case failed(UpstreamFailure)
    /// The leg has ended: its connection is closed, nothing more will come.
    case ended
}
