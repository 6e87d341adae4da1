import NIOCore

/// Writes WebSocket frames: header and payload into one buffer, in one pass.
///
/// This is the relay's client → upstream hot path. A client's payload arrives
/// masked with the client's key; it is copied out re-masked with a fresh key
/// in the same pass (XOR with `clientKey ^ newKey`), so the gateway never
/// reuses the client's key toward the upstream and never unmasks into a
/// temporary. Toward a client (no new key) the same pass unmasks.
package enum FrameWriter {
    /// Header bytes for a payload of `length` bytes.
    @inlinable @inline(__always)
    package static func headerLength(payload length: Int, masked: Bool) -> Int {
        (length < 126 ? 2 : (length <= 0xFFFF ? 4 : 10)) + (masked ? 4 : 0)
    }

    /// Appends one frame to `out`. `payloadKey` is the key the payload is
    /// masked with now (0: plain), `newKey` the key to mask it with on the
    /// wire (nil: unmasked frame). Keys are packed as `littleEndianWord`.
    @inlinable @inline(__always)
    package static func append(to out: inout ByteBuffer, firstByte: UInt8, payload: ByteBuffer, payloadKey: UInt32, newKey: UInt32?) {
        let length = payload.readableBytes
        let maskBit: UInt8 = newKey == nil ? 0 : 0x80
        out.writeInteger(firstByte)
        if length < 126 {
            out.writeInteger(maskBit | UInt8(length))
        } else if length <= 0xFFFF {
            out.writeInteger(maskBit | 126)
            out.writeInteger(UInt16(length))
        } else {
            out.writeInteger(maskBit | 127)
            out.writeInteger(UInt64(length))
        }
        if let newKey { out.writeInteger(newKey, endianness: .little) }
        out.writeMasked(payload, key: payloadKey ^ (newKey ?? 0))
    }
}
