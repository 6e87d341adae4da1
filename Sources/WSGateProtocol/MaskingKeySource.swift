import NIOCore
import NIOWebSocket

#if os(Linux)
/// glibc's `getrandom(2)` wrapper (not exported by the Glibc module).
@_silgen_name("getrandom")
private func systemGetRandom(_ buffer: UnsafeMutableRawPointer?, _ count: Int, _ flags: UInt32) -> Int
#endif

/// Masking keys for frames sent upstream. RFC 6455 §5.3 asks for keys a
/// client cannot predict; the system CSPRNG is read 64 keys per call instead
/// of once per frame, so masking costs no syscall on the hot path.
package struct MaskingKeySource {
    package init() {}

    /// Allocated on first use: an idle connection holds no pool.
    private var pool: [UInt8] = []
    private var next = 0

    package mutating func nextKey() -> WebSocketMaskingKey {
        let word = nextWord()
        return [UInt8(truncatingIfNeeded: word), UInt8(truncatingIfNeeded: word >> 8), UInt8(truncatingIfNeeded: word >> 16), UInt8(truncatingIfNeeded: word >> 24)]
    }

    /// The next key packed as `WebSocketMaskingKey.littleEndianWord`.
    package mutating func nextWord() -> UInt32 {
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
