import WSGateProtocol
import NIOCore

/// A client's data frames of one read batch, serialized into one buffer for
/// the other leg as they are copied out of the read buffer (re-masked with
/// fresh keys, or unmasked): one allocation and one write per batch instead
/// of per frame.
struct RelayBatch {
    private(set) var bytes: ByteBuffer?
    private(set) var messages = 0
    private(set) var payloadBytes = 0

    /// Appends a client frame re-masked with `newKey` (nil: unmasked).
    /// `remaining` is what the reader still holds, so that one allocation
    /// fits every frame of the batch.
    @inline(__always)
    mutating func append(_ header: FrameHeader, _ payload: ByteBuffer, newKey: UInt32?, remaining: Int, allocator: ByteBufferAllocator) {
        let length = payload.readableBytes
        if bytes == nil {
            // Room for the frames still held too, unless that is a large
            // partial frame (which would only be slack in the pending write).
            bytes = allocator.buffer(capacity: header.headerLength + length + (remaining < 1 << 16 ? remaining : 0))
        }
        FrameWriter.append(to: &bytes!, firstByte: header.firstByte, payload: payload, payloadKey: header.maskKey ?? 0, newKey: newKey)
        if header.fin { messages += 1 }
        payloadBytes += length
    }

    /// Hands what was collected to the delegate and starts over.
    mutating func send(to delegate: WebSocketLegDelegate) {
        guard let out = bytes else { return }
        delegate.legFrames(FrameBatch(bytes: out, messages: messages, payloadBytes: payloadBytes))
        self = RelayBatch()
    }
}
