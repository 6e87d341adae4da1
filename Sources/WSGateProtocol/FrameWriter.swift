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
    ///
    /// Header and payload are stored through one `writeWithUnsafeMutableBytes`:
    /// each `ByteBuffer.writeInteger` is a bounds check, a uniqueness check and
    /// NIOCore's exclusivity check, about 185 instructions, and a header took
    /// three or four of them (callgrind, scenario b).
    @inlinable @inline(__always)
    package static func append(to out: inout ByteBuffer, firstByte: UInt8, payload: ByteBuffer, payloadKey: UInt32, newKey: UInt32?) {
        let length = payload.readableBytes
        let header = headerLength(payload: length, masked: newKey != nil)
        let maskBit: UInt8 = newKey == nil ? 0 : 0x80
        let key = payloadKey ^ (newKey ?? 0)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: header + length) { destination in
            let d = destination.baseAddress!  // at least two header bytes were asked for
            d.storeBytes(of: firstByte, as: UInt8.self)
            if length < 126 {
                d.storeBytes(of: maskBit | UInt8(length), toByteOffset: 1, as: UInt8.self)
            } else if length <= 0xFFFF {
                d.storeBytes(of: maskBit | 126, toByteOffset: 1, as: UInt8.self)
                d.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
            } else {
                d.storeBytes(of: maskBit | 127, toByteOffset: 1, as: UInt8.self)
                d.storeBytes(of: UInt64(length).bigEndian, toByteOffset: 2, as: UInt64.self)
            }
            // The key is the header's last four bytes.
            if let newKey { d.storeBytes(of: newKey.littleEndian, toByteOffset: header - 4, as: UInt32.self) }
            payload.copyMasked(to: d + header, key: key)
            return header + length
        }
    }
}
