import NIOCore
import NIOWebSocket

/// What `FrameReader` found at the front of its bytes.
public enum FrameReadResult {
    /// A complete frame: its header, its payload (as received, still masked
    /// if the header has a key) and the reader index where the frame starts.
    case frame(FrameHeader, payload: ByteBuffer, start: Int)
    /// The rest of the frame has not arrived yet.
    case needMoreBytes
    /// The stream cannot be parsed past this frame (a frame declaring far
    /// more than the size limit, or a control frame that is fragmented or
    /// over 125 bytes): detected from the header alone, like NIO's decoder does.
    case framingError(FrameViolation)
    /// A data frame over the size limit whose length is still within
    /// `FrameReader.skippableBytes`: its bytes are dropped as they arrive
    /// (never held), and parsing goes on after it, so the peer's close
    /// frame that follows is still read.
    case oversized(FrameViolation)
}

/// Splits a byte stream into WebSocket frames without copying.
///
/// Bytes from the socket are kept as they arrive; a frame is returned only
/// once all of it is buffered, as a slice. A frame split across reads is the
/// only case that copies (its bytes are appended to the held remainder).
public struct FrameReader {
    /// Largest payload a single frame may declare.
    public let maxFrameBytes: Int
    private var buffer: ByteBuffer?
    /// Bytes of an `.oversized` frame still to drop.
    private var skipping = 0

    public init(maxFrameBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
    }

    /// The largest oversized frame that is skipped rather than ending the
    /// parse: a client that sends a message a little over the limit (a
    /// browser, say) gets its close frame read after it, so the close
    /// handshake completes; a header that declares terabytes does not make
    /// the gateway read them. Bounded in time as well by `close_handshake_ms`.
    public var skippableBytes: Int { max(4 * maxFrameBytes, 16 << 20) }

    /// Bytes held that are not a complete frame yet.
    public var bufferedBytes: Int { buffer?.readableBytes ?? 0 }

    /// The held bytes. Reader indices returned by `next()` refer to this
    /// buffer until the next `append`, so a caller can take one slice for a
    /// run of consecutive frames.
    public var bytes: ByteBuffer? { buffer }

    public mutating func append(_ incoming: ByteBuffer) {
        if buffer == nil || buffer!.readableBytes == 0 {
            buffer = incoming
        } else {
            // Drop the frames already returned first, or a stream that always
            // ends a read mid-frame would grow the buffer without bound.
            buffer!.discardReadBytes()
            var incoming = incoming
            buffer!.writeBuffer(&incoming)
        }
    }

    /// The frame at the front when only part of it has arrived: its header
    /// and the payload bytes so far (as received). Nil when no header is
    /// complete yet, or when the front frame is complete.
    public func partialFrame() -> (header: FrameHeader, arrived: ByteBuffer)? {
        guard skipping == 0, let buffer, buffer.readableBytes >= 2,
            let header = buffer.withUnsafeReadableBytes({ FrameHeader.parse($0) })
        else { return nil }
        let arrived = buffer.readableBytes - header.headerLength
        guard arrived > 0, UInt64(arrived) < header.payloadLength else { return nil }
        return (header, buffer.getSlice(at: buffer.readerIndex + header.headerLength, length: arrived)!)
    }

    /// The next complete frame, consumed from the buffer.
    public mutating func next() -> FrameReadResult {
        if skipping > 0 {
            dropSkipped()
            if skipping > 0 { return .needMoreBytes }
        }
        guard let available = buffer?.readableBytes, available >= 2 else { return .needMoreBytes }
        guard let header = buffer!.withUnsafeReadableBytes({ FrameHeader.parse($0) }) else { return .needMoreBytes }
        if header.isControl {
            if !header.fin { return .framingError(.protocolError("fragmented control frame")) }
            if header.payloadLength > 125 { return .framingError(.protocolError("control frame over 125 bytes")) }
        } else if header.payloadLength > UInt64(maxFrameBytes) {
            guard header.payloadLength <= UInt64(skippableBytes) else {
                return .framingError(.messageTooBig(limit: maxFrameBytes))
            }
            skipping = header.headerLength + Int(header.payloadLength)
            dropSkipped()
            return .oversized(.messageTooBig(limit: maxFrameBytes))
        }
        let payloadLength = Int(header.payloadLength)
        let frameLength = header.headerLength + payloadLength
        guard available >= frameLength else {
            // The rest of this frame will be appended: make room ahead, so
            // its bytes are not moved again by every doubling of the buffer.
            // Never more than twice what has arrived (at least 64 KiB): a
            // peer must not make the gateway allocate a whole declared
            // `max_message_bytes` by sending a 14-byte header.
            let target = min(frameLength, max(2 * available, 1 << 16))
            if buffer!.capacity - buffer!.readerIndex < target {
                buffer!.discardReadBytes()
                buffer!.reserveCapacity(minimumWritableBytes: target - available)
            }
            return .needMoreBytes
        }
        let start = buffer!.readerIndex
        let payload = buffer!.getSlice(at: start + header.headerLength, length: payloadLength)!
        buffer!.moveReaderIndex(forwardBy: frameLength)
        if buffer!.readableBytes == 0 { buffer = nil }
        return .frame(header, payload: payload, start: start)
    }

    /// Drops what has arrived of the frame being skipped.
    private mutating func dropSkipped() {
        guard let readable = buffer?.readableBytes else { return }
        let n = min(skipping, readable)
        buffer!.moveReaderIndex(forwardBy: n)
        skipping -= n
        if buffer!.readableBytes == 0 { buffer = nil }
    }
}
