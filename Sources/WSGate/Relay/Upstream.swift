import NIOCore
import NIOWebSocket

/// What a `Session` needs from the upstream side of a connection, whatever
/// the upstream is (a second WebSocket, an HTTP service, the built-in echo).
///
/// All methods are called on the session's event loop, and implementations
/// report back to the session on that loop too, so neither side needs locks.
protocol UpstreamLeg: AnyObject {
    /// Connects. The future succeeds with the subprotocol the upstream chose
    /// (nil for none) and fails with an `UpstreamFailure`.
    func connect() -> EventLoopFuture<String?>

    /// Called once the client's 101 has gone out: the leg may start reading.
    func startRelaying()

    /// How this upstream wants the client's data frames.
    var clientFrameFormat: ClientFrameFormat { get }

    /// Relays one validated client data frame (`.messages`). Not flushed.
    func send(_ frame: DataFrame)

    /// Relays validated client data frames already serialized in
    /// `clientFrameFormat` (`.maskedFrames`, `.plainFrames`): `messages`
    /// complete messages, `payloadBytes` bytes of payload. Not flushed.
    func sendFrames(_ bytes: ByteBuffer, messages: Int, payloadBytes: Int)

    /// Flushes what `send` wrote (once per client read batch).
    func flush()

    /// False while the upstream cannot take more data; the session then
    /// stops reading from the client (backpressure).
    var isWritable: Bool { get }

    /// The client side became writable again: the leg may resume reading
    /// if it paused because of it.
    func clientBecameWritable()

    /// Starts an orderly close (close frame, bounded wait, TCP close).
    /// `code` nil sends an empty close frame. Idempotent; reports
    /// `upstreamEnded` when done.
    func close(code: UInt16?, reason: String)

    /// Drops the upstream at once. Idempotent; reports `upstreamEnded`.
    func abort()

    /// The connection's close event has been logged (hooks, e.g. `disconnect_url`).
    func connectionFinished(_ event: CloseEvent)
}

extension UpstreamLeg {
    func connectionFinished(_ event: CloseEvent) {}
}

/// The form in which the client leg hands over the client's data frames.
enum ClientFrameFormat {
    /// Frames masked with fresh keys, ready for a WebSocket upstream.
    case maskedFrames
    /// Unmasked frames, ready to go back to the client (the built-in echo).
    case plainFrames
    /// One `DataFrame` per frame, for upstreams that build messages (HTTP).
    case messages
}

/// A validated data frame from the client, as received: the payload is
/// still masked with `maskKey` (0: not masked).
struct DataFrame {
    var fin: Bool
    /// 0x0 continuation, 0x1 text, 0x2 binary.
    var opcodeBits: UInt8
    var payload: ByteBuffer
    var maskKey: UInt32

    init(header: FrameHeader, payload: ByteBuffer) {
        self.fin = header.fin
        self.opcodeBits = header.opcodeBits
        self.payload = payload
        self.maskKey = header.maskKey ?? 0
    }
}

/// Why an upstream could not be used or stopped working, already classified
/// into a close cause.
struct UpstreamFailure: Error {
    var cause: CloseCause
    var details: CloseDetails
    /// Low-level detail for the log's `error` field.
    var error: String?

    init(_ cause: CloseCause, httpStatus: Int? = nil, error: String?) {
        self.cause = cause
        self.details = CloseDetails(httpStatus: httpStatus)
        self.error = error
    }
}
