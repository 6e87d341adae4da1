import NIOCore
import NIOWebSocket

/// The one masking primitive: `destination[i] = source[i] ^ key[i % 4]`,
/// 64 bytes per step in 16-byte vectors, then eight, then one at a time
/// (NIO's `webSocketMask` goes byte by byte). `source` and `destination` may
/// be the same memory (masking in place). `key` holds the four key bytes in
/// wire order, byte 0 in the low bits.
@inlinable @inline(__always)
package func xorWithMask(from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, count: Int, key: UInt32) {
    let key64 = UInt64(key) | UInt64(key) << 32
    var i = 0
    // Raw words XORed with the key's bytes in memory order (`littleEndian`
    // swaps them back on a big-endian machine).
    let vectorKey = SIMD2<UInt64>(repeating: key64.littleEndian)
    while i + 64 <= count {
        let a = source.loadUnaligned(fromByteOffset: i, as: SIMD2<UInt64>.self) ^ vectorKey
        let b = source.loadUnaligned(fromByteOffset: i + 16, as: SIMD2<UInt64>.self) ^ vectorKey
        let c = source.loadUnaligned(fromByteOffset: i + 32, as: SIMD2<UInt64>.self) ^ vectorKey
        let d = source.loadUnaligned(fromByteOffset: i + 48, as: SIMD2<UInt64>.self) ^ vectorKey
        destination.storeBytes(of: a, toByteOffset: i, as: SIMD2<UInt64>.self)
        destination.storeBytes(of: b, toByteOffset: i + 16, as: SIMD2<UInt64>.self)
        destination.storeBytes(of: c, toByteOffset: i + 32, as: SIMD2<UInt64>.self)
        destination.storeBytes(of: d, toByteOffset: i + 48, as: SIMD2<UInt64>.self)
        i += 64
    }
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
    package mutating func applyWebSocketMask(_ key: WebSocketMaskingKey) {
        applyWebSocketMask(word: key.littleEndianWord)
    }

    /// Same, with the key packed as `WebSocketMaskingKey.littleEndianWord`.
    @inlinable
    package mutating func applyWebSocketMask(word: UInt32) {
        self.withUnsafeMutableReadableBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            xorWithMask(from: base, to: base, count: bytes.count, key: word)
        }
    }

    /// Appends `source`'s readable bytes XORed with `key` in one pass (a plain
    /// copy when `key` is 0).
    @inlinable
    package mutating func writeMasked(_ source: ByteBuffer, key: UInt32) {
        let length = source.readableBytes
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { destination in
            guard let d = destination.baseAddress else { return 0 }
            source.copyMasked(to: d, key: key)
            return length
        }
    }

    /// Stores the readable bytes XORed with `key` (a plain copy when `key` is
    /// 0) at `destination`, which has room for `readableBytes`: for writers
    /// that fill a buffer's memory in one pass (`FrameWriter`).
    @inlinable @inline(__always)
    package func copyMasked(to destination: UnsafeMutableRawPointer, key: UInt32) {
        self.withUnsafeReadableBytes { source in
            guard let s = source.baseAddress, !source.isEmpty else { return }
            xorWithMask(from: s, to: destination, count: source.count, key: key)
        }
    }
}

extension WebSocketMaskingKey {
    /// The key as four bytes in wire order, packed little-endian (byte 0 in
    /// the low bits), the layout word-wise XOR loops want.
    @inlinable
    package var littleEndianWord: UInt32 {
        UInt32(self[0]) | UInt32(self[1]) << 8 | UInt32(self[2]) << 16 | UInt32(self[3]) << 24
    }
}
