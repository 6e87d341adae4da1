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
        applyWebSocketMask(word: key.littleEndianWord)
    }

    /// Same, with the key packed as `WebSocketMaskingKey.littleEndianWord`.
    mutating func applyWebSocketMask(word: UInt32) {
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

/// Writes WebSocket frames: header and payload into one buffer, in one pass.
///
/// This is the relay's client → upstream hot path. A client's payload arrives
/// masked with the client's key; it is copied out re-masked with a fresh key
/// in the same pass (XOR with `clientKey ^ newKey`), so the gateway never
/// reuses the client's key toward the upstream and never unmasks into a
/// temporary. Toward a client (no new key) the same pass unmasks.
enum FrameWriter {
    /// Header bytes for a payload of `length` bytes.
    @inline(__always)
    static func headerLength(payload length: Int, masked: Bool) -> Int {
        (length < 126 ? 2 : (length <= 0xFFFF ? 4 : 10)) + (masked ? 4 : 0)
    }

    /// Appends one frame to `out`. `payloadKey` is the key the payload is
    /// masked with now (0: plain), `newKey` the key to mask it with on the
    /// wire (nil: unmasked frame). Keys are packed as `littleEndianWord`.
    @inline(__always)
    static func append(to out: inout ByteBuffer, firstByte: UInt8, payload: ByteBuffer, payloadKey: UInt32, newKey: UInt32?) {
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

/// One frame in a buffer of its own (control frames, and tests).
enum MaskedFrameWriter {
    static func serialize(
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

/// Masking keys for frames sent upstream. RFC 6455 §5.3 asks for keys a
/// client cannot predict; the system CSPRNG is read 64 keys per call instead
/// of once per frame, so masking costs no syscall on the hot path.
struct MaskingKeySource {
    /// Allocated on first use: an idle connection holds no pool.
    private var pool: [UInt8] = []
    private var next = 0

    mutating func nextKey() -> WebSocketMaskingKey {
        let word = nextWord()
        return [UInt8(truncatingIfNeeded: word), UInt8(truncatingIfNeeded: word >> 8), UInt8(truncatingIfNeeded: word >> 16), UInt8(truncatingIfNeeded: word >> 24)]
    }

    /// The next key packed as `WebSocketMaskingKey.littleEndianWord`.
    mutating func nextWord() -> UInt32 {
        if next + 4 > pool.count {
            if pool.isEmpty { pool = [UInt8](repeating: 0, count: 256) }
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
        return pool.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: next, as: UInt32.self)) }
    }
}
