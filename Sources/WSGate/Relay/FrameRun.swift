import NIOCore

/// A run of consecutive data frames in one read buffer from a server, sent
/// on to the client as one slice: no copy, no allocation.
struct FrameRun {
    private var start = -1
    private var end = 0
    private var messages = 0
    private var payloadBytes = 0

    @inline(__always)
    mutating func add(start frameStart: Int, end frameEnd: Int, fin: Bool, payloadBytes bytes: Int) {
        if start < 0 { start = frameStart }
        end = frameEnd
        if fin { messages += 1 }
        payloadBytes += bytes
    }

    /// Hands the run (a slice of `source`) to the delegate and starts over.
    mutating func send(from source: ByteBuffer, to delegate: WebSocketLegDelegate) {
        guard start >= 0 else { return }
        delegate.legFrames(FrameBatch(bytes: source.getSlice(at: start, length: end - start)!, messages: messages, payloadBytes: payloadBytes))
        self = FrameRun()
    }
}
