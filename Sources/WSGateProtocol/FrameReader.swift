import NIOCore
import NIOWebSocket

/// What `FrameReader` found at the front of its bytes.
public enum FrameReadResult {
    /// A complete frame: its header, its payload (as received, still masked
    /// if the header has a key) and the reader index where the frame starts.
    case frame(FrameHeader, payload: ByteBuffer, start: Int)
    /// The rest of the frame has not arrived yet.
    case needMoreBytes
    /// The stream cannot be parsed past this frame (a frame over the size
    /// limit, or a control frame that is fragmented or over 125 bytes):
    /// detected from the header alone, like NIO's decoder does.
    case framingError(FrameViolation)
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

    public init(maxFrameBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
    }

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
        guard let buffer, buffer.readableBytes >= 2,
            let header = buffer.withUnsafeReadableBytes({ FrameHeader.parse($0) })
        else { return nil }
        let arrived = buffer.readableBytes - header.headerLength
        guard arrived > 0, UInt64(arrived) < header.payloadLength else { return nil }
        return (header, buffer.getSlice(at: buffer.readerIndex + header.headerLength, length: arrived)!)
    }

    /// The next complete frame, consumed from the buffer.
    public mutating func next() -> FrameReadResult {
        guard let available = buffer?.readableBytes, available >= 2 else { return .needMoreBytes }
        guard let header = buffer!.withUnsafeReadableBytes({ FrameHeader.parse($0) }) else { return .needMoreBytes }
        if header.isControl {
            if !header.fin { return .framingError(.protocolError("fragmented control frame")) }
            if header.payloadLength > 125 { return .framingError(.protocolError("control frame over 125 bytes")) }
        } else if header.payloadLength > UInt64(maxFrameBytes) {
            return .framingError(.messageTooBig(limit: maxFrameBytes))
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
}
