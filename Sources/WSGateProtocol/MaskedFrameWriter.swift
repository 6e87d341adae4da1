import NIOCore
import NIOWebSocket

/// One frame in a buffer of its own (control frames, and tests).
package enum MaskedFrameWriter {
    package static func serialize(
        fin: Bool, opcode: WebSocketOpcode, payload: ByteBuffer, payloadMaskedWith payloadKey: WebSocketMaskingKey?,
        newKey: WebSocketMaskingKey?, allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        let length = payload.readableBytes
        var out = allocator.buffer(capacity: FrameWriter.headerLength(payload: length, masked: newKey != nil) + length)
        FrameWriter.append(
            to: &out, firstByte: UInt8(fin ? 0x80 : 0) | UInt8(webSocketOpcode: opcode), payload: payload,
            payloadKey: payloadKey?.littleEndianWord ?? 0, newKey: newKey?.littleEndianWord)
        return out
    }
}
