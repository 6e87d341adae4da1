import NIOCore
import NIOWebSocket

#if os(Linux)
/// glibc's `getrandom(2)` wrapper (not exported by the Glibc module).
@_silgen_name("getrandom")
private func systemGetRandom(_ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: UInt32) -> Int
#endif

/// The one masking primitive: `destination[i] = source[i] ^ key[i % 4]`,
/// eight bytes at a time (NIO's `webSocketMask` goes byte by byte).
/// `source` and `destination` may be the same memory (masking in place).
/// `key` holds the four key bytes in wire order, byte 0 in the low bits.
@inline(__always)
func xorWithMask(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int, key: UInt32) {
    let key64 = UInt64(key) | UInt64(key) << 32
    var i = 0
    while i + 8 <= count {
        let word = UInt64(littleEndian: source.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ key64
        destination.storeBytes(of: word.littleEndian, toByteOffset: i, as: UInt64.self)
        i += 8
    }
    while i < count {
        let k = UInt8(truncatingIfNeeded: key >> UInt32((i & 3) * 8))
        destination.storeBytes(of: source.load(fromByteOffset: i, as: UInt8.self) ^ k, toByteOffset: i, as: UInt8.self)
        i += 1
    }
}

extension ByteBuffer {
    /// XORs the readable bytes with a WebSocket masking key in place.
    /// Masking and unmasking are the same operation.
    mutating func applyWebSocketMask(_ key: WebSocketMaskingKey) {
        let word = key.littleEndianWord
        self.withUnsafeMutableReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            xorWithMask(from: base, to: base, count: bytes.count, key: word)
        }
    }

    /// Appends `source`'s readable bytes XORed with `key` in one pass (a plain
    /// copy when `key` is 0).
    mutating func writeMasked(_ source: ByteBuffer, key: UInt32) {
        let length = source.readableBytes
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { destination in
            source.withUnsafeReadableBytes { src in
                guard let s = src.baseAddress, let d = destination.baseAddress else { return 0 }
                xorWithMask(from: s, to: d, count: length, key: key)
                return length
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
        out.writeMasked(payload, key: newKey.littleEndianWord ^ (payloadKey?.littleEndianWord ?? 0))
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
