import NIOCore
import NIOWebSocket

#if os(Linux)
/// glibc's `getrandom(2)` wrapper (not exported by the Glibc module).
@_silgen_name("getrandom")
private func systemGetRandom(_ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: UInt32) -> Int
#endif

extension ByteBuffer {
    /// XORs the readable bytes with a WebSocket masking key in place, a word
    /// at a time (NIO's `webSocketUnmask` goes byte by byte). Masking and
    /// unmasking are the same operation.
    ///
    /// `keyOffset` is the position in the key of the first readable byte.
    @inlinable
    mutating func applyWebSocketMask(_ key: WebSocketMaskingKey, keyOffset: Int = 0) {
        let k0 = key[keyOffset & 3], k1 = key[(keyOffset + 1) & 3]
        let k2 = key[(keyOffset + 2) & 3], k3 = key[(keyOffset + 3) & 3]
        let key32 = UInt32(k0) | UInt32(k1) << 8 | UInt32(k2) << 16 | UInt32(k3) << 24
        let key64 = UInt64(key32) | UInt64(key32) << 32
        self.withUnsafeMutableReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            let count = bytes.count
            var i = 0
            while i + 8 <= count {
                let word = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                base.storeBytes(of: word ^ UInt64(littleEndian: key64), toByteOffset: i, as: UInt64.self)
                i += 8
            }
            let keyBytes = (k0, k1, k2, k3)
            while i < count {
                let k: UInt8
                switch i & 3 {
                case 0: k = keyBytes.0
                case 1: k = keyBytes.1
                case 2: k = keyBytes.2
                default: k = keyBytes.3
                }
                base.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) ^ k, toByteOffset: i, as: UInt8.self)
                i += 1
            }
        }
    }
}

extension WebSocketMaskingKey {
    /// The key as four bytes in wire order, packed little-endian (byte 0 in
    /// the low bits), the layout word-wise XOR loops want.
    var littleEndianWord: UInt32 {
        UInt32(self[0]) | UInt32(self[1]) << 8 | UInt32(self[2]) << 16 | UInt32(self[3]) << 24
    }
}

/// Serializes frames the way a WebSocket *client* must send them (masked),
/// writing header and payload into one buffer in a single pass.
///
/// This is the relay's client → upstream hot path. A client's payload arrives
/// masked with the client's key; it is copied out re-masked with a fresh key
/// in the same pass (XOR with `clientKey ^ newKey`), so the gateway never
/// reuses the client's key toward the upstream, never unmasks into a
/// temporary, and allocates exactly one buffer per frame. (NIO's encoder
/// would unmask-copy, mask-copy and add a header buffer.)
enum MaskedFrameWriter {
    static func serialize(
        fin: Bool, opcode: WebSocketOpcode, payload: ByteBuffer, payloadMaskedWith payloadKey: WebSocketMaskingKey?,
        newKey: WebSocketMaskingKey, allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        let length = payload.readableBytes
        let lengthBytes = length < 126 ? 0 : (length <= 0xFFFF ? 2 : 8)
        var out = allocator.buffer(capacity: 2 + lengthBytes + 4 + length)
        out.writeInteger(UInt8(fin ? 0x80 : 0) | UInt8(webSocketOpcode: opcode))
        switch lengthBytes {
        case 0: out.writeInteger(UInt8(0x80) | UInt8(length))
        case 2:
            out.writeInteger(UInt8(0x80 | 126))
            out.writeInteger(UInt16(length))
        default:
            out.writeInteger(UInt8(0x80 | 127))
            out.writeInteger(UInt64(length))
        }
        out.writeBytes(newKey)
        let combined = newKey.littleEndianWord ^ (payloadKey?.littleEndianWord ?? 0)
        let key64 = UInt64(combined) | UInt64(combined) << 32
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { destination in
            payload.withUnsafeReadableBytes { source in
                guard let src = source.baseAddress, let dst = destination.baseAddress else { return 0 }
                var i = 0
                while i + 8 <= length {
                    let word = UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ key64
                    dst.storeBytes(of: word.littleEndian, toByteOffset: i, as: UInt64.self)
                    i += 8
                }
                while i < length {
                    let k = UInt8(truncatingIfNeeded: combined >> UInt32((i & 3) * 8))
                    dst.storeBytes(of: src.load(fromByteOffset: i, as: UInt8.self) ^ k, toByteOffset: i, as: UInt8.self)
                    i += 1
                }
                return length
            }
        }
        return out
    }
}

/// Masking keys for frames sent upstream. RFC 6455 §5.3 asks for keys a
/// client cannot predict; the system CSPRNG is read 64 keys per call instead
/// of once per frame, so masking costs no syscall on the hot path.
struct MaskingKeySource {
    private var pool = [UInt8](repeating: 0, count: 256)
    private var next = 256

    mutating func nextKey() -> WebSocketMaskingKey {
        if next + 4 > pool.count {
            pool.withUnsafeMutableBytes { raw in
                #if os(Linux)
                if systemGetRandom(raw.baseAddress, raw.count, 0) == raw.count { return }
                #endif
                var rng = SystemRandomNumberGenerator()
                let words = raw.bindMemory(to: UInt64.self)
                for i in words.indices { words[i] = rng.next() }
            }
            next = 0
        }
        defer { next += 4 }
        return WebSocketMaskingKey(pool[next..<next + 4])!
    }
}
