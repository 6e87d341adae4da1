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
