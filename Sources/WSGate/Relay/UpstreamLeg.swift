import WSGatePolicy
import NIOCore

/// What a `Session` needs from the upstream side of a connection, whatever
/// the upstream is (a second WebSocket, an HTTP service, the built-in echo).
///
/// All methods are called on the session's event loop, and implementations
/// report back to their `UpstreamLegDelegate` on that loop too, so neither
/// side needs locks.
protocol UpstreamLeg: AnyObject {
    /// Connects, reporting to `delegate` from now on (held weakly). The
    /// future succeeds with the subprotocol the upstream chose (nil for none)
    /// and fails with an `UpstreamFailure`.
    func connect(delegate: UpstreamLegDelegate) -> EventLoopFuture<String?>

    /// Called once the client's 101 has gone out: the leg may start reading.
    func startRelaying()

    /// How this upstream wants the client's data frames; asked once, when
    /// the client leg is attached.
    var clientFrameFormat: ClientFrameFormat { get }

    /// The one input from the client: validated data frames of one client
    /// read, already serialized in `clientFrameFormat`. Not flushed.
    func send(_ batch: FrameBatch)

    /// Flushes what `send` wrote (once per client read batch).
    func flush()

    /// False while the upstream cannot take more data; the session then
    /// stops reading from the client (backpressure).
    var isWritable: Bool { get }

    /// The client side became writable again: the leg may resume reading
    /// if it paused because of it.
    func clientBecameWritable()

    /// Starts an orderly close (close frame, bounded wait, TCP close).
    /// `code` nil sends an empty close frame. Idempotent; reports `.ended`
    /// when done.
    func close(code: UInt16?, reason: String)

    /// Drops the upstream at once. Idempotent; reports `.ended`.
    func abort()

    /// The connection's close event has been logged (hooks, e.g. `disconnect_url`).
    func connectionFinished(_ event: CloseEvent)

    /// Which pool target was dialled and how many connect attempts were
    /// made (the log line's `target`, `attempts`, `upstream`); nil for legs
    /// that dial nothing.
    var dialled: DialReport? { get }

    /// Channels the upstream subscribed this connection to while connecting
    /// (`connect_url`'s `X-WSGate-Channels`).
    var subscribedChannels: [String] { get }

    /// From now on, hand data (`upstreamSent`, `upstreamReadComplete`,
    /// `mayReadUpstream`, `upstreamBecameWritable`) straight to `relay`
    /// (held weakly); events still go to the connect delegate. A pool calls
    /// it once its leg is connected, so that frames skip the pool's layers.
    func relayData(to relay: UpstreamLegDelegate)
}

extension UpstreamLeg {
    func relayData(to relay: UpstreamLegDelegate) {}
}

/// What a leg reports of its connect attempts for the log line.
struct DialReport {
    /// `host:port` of the last target tried.
    var target: String?
    var attempts: Int
    /// The URL of that target (suffix and query included).
    var url: URLParts?
}

extension UpstreamLeg {
    func connectionFinished(_ event: CloseEvent) {}

    var dialled: DialReport? { nil }

    var subscribedChannels: [String] { [] }

    /// Carries out the upstream half of the close table.
    func apply(_ action: UpstreamCloseAction) {
        switch action {
        case .close(let code, let reason): close(code: code, reason: reason)
        case .abort: abort()
        }
    }
}
