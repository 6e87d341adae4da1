import NIOCore

/// Data frames of one read, serialized into one buffer for the other leg:
/// one write per read batch instead of per frame. `messages` counts the
/// complete messages in it and `payloadBytes` their payload, for the log
/// line and the metrics.
struct FrameBatch {
    var bytes: ByteBuffer
    var messages: Int
    var payloadBytes: Int
}

/// The form in which the client leg hands over the client's data frames.
enum ClientFrameFormat {
    /// Frames masked with fresh keys, ready for a WebSocket upstream.
    case maskedFrames
    /// Unmasked frames, ready to go back to the client (the built-in echo)
    /// or to be read as messages (HTTP).
    case plainFrames
}
