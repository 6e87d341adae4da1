import NIOCore
import NIOWebSocket

/// A frame header as it is on the wire (RFC 6455 §5.2).
///
/// The relay works on raw frames instead of NIO's `WebSocketFrame` values:
/// a `WebSocketFrame` owns a heap-allocated storage box and is boxed again
/// inside `NIOAny` at every pipeline hop, and re-encoding it costs a header
/// buffer and a `writev`. Parsing the header here lets a leg validate a frame
/// and forward its bytes (or re-mask them in one pass) without any of that.
public struct FrameHeader: Sendable, Equatable {
    /// FIN, RSV1-3 and the opcode.
    public var firstByte: UInt8
    /// The masking key in wire order, byte 0 in the low bits; nil if unmasked.
    public var maskKey: UInt32?
    /// Bytes before the payload: 2, 4 or 10, plus 4 when masked.
    public var headerLength: Int
    public var payloadLength: UInt64

    public init(firstByte: UInt8, maskKey: UInt32?, headerLength: Int, payloadLength: UInt64) {
        self.firstByte = firstByte
        self.maskKey = maskKey
        self.headerLength = headerLength
        self.payloadLength = payloadLength
    }

    public var fin: Bool { firstByte & 0x80 != 0 }
    public var hasReservedBits: Bool { firstByte & 0x70 != 0 }
    /// The 4-bit opcode.
    public var opcodeBits: UInt8 { firstByte & 0x0F }
    public var opcode: WebSocketOpcode { WebSocketOpcode(encodedWebSocketOpcode: opcodeBits)! }
    /// Opcodes 0x8-0xF are control frames, including the reserved ones.
    public var isControl: Bool { firstByte & 0x08 != 0 }

    /// The length uses the shortest encoding, as RFC 6455 §5.2 requires of
    /// a sender. Frames that don't are re-encoded before being relayed.
    public var hasMinimalLength: Bool {
        let lengthBytes = headerLength - 2 - (maskKey == nil ? 0 : 4)
        switch lengthBytes {
        case 0: return true
        case 2: return payloadLength >= 126
        default: return payloadLength > 0xFFFF
        }
    }

    /// Parses a header from the start of `bytes`; nil until all of it is there.
    @inlinable
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> FrameHeader? {
        guard bytes.count >= 2 else { return nil }
        let first = bytes[0]
        let second = bytes[1]
        let masked = second & 0x80 != 0
        var length = UInt64(second & 0x7F)
        var offset = 2
        if length == 126 {
            guard bytes.count >= 4 else { return nil }
            length = UInt64(UInt16(bytes[2]) << 8 | UInt16(bytes[3]))
            offset = 4
        } else if length == 127 {
            guard bytes.count >= 10 else { return nil }
            length = UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt64.self))
            offset = 10
        }
        var key: UInt32? = nil
        if masked {
            guard bytes.count >= offset + 4 else { return nil }
            key = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            offset += 4
        }
        return FrameHeader(firstByte: first, maskKey: key, headerLength: offset, payloadLength: length)
    }
}

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
