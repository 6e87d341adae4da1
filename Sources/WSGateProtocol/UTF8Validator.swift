/// Incremental UTF-8 validation for text messages that arrive in fragments.
///
/// A DFA (Björn Höhrmann's "Flexible and Economical UTF-8 Decoder") carries
/// its state from one fragment to the next, so a code point split across
/// frames is accepted and the first invalid byte is rejected at once, without
/// reassembling the message. Runs of ASCII, the common case, are skipped
/// eight bytes at a time.
public struct UTF8Validator: Sendable {
    static let accept: UInt8 = 0
    static let reject: UInt8 = 12

    private var state: UInt8 = UTF8Validator.accept

    public init() {}

    /// True when the bytes seen so far end on a code point boundary.
    public var isComplete: Bool { state == Self.accept }

    public mutating func reset() { state = Self.accept }

    /// Feeds more bytes; returns false as soon as the input can no longer be
    /// valid UTF-8 (the validator then stays failed).
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        feed(bytes, maskKey: 0)
    }

    /// Feeds bytes that are still WebSocket-masked with `maskKey` (the four
    /// key bytes in wire order packed little-endian: byte 0 in the low bits),
    /// unmasking on the fly so the payload never has to be copied to be
    /// checked. The first byte of `bytes` is at key position 0.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, maskKey: UInt32) -> Bool {
        guard state != Self.reject else { return false }
        guard let base = bytes.baseAddress else { return true }
        let count = bytes.count
        let key64 = UInt64(maskKey) | UInt64(maskKey) << 32
        var i = 0
        var state = self.state
        defer { self.state = state }
        return Self.table.withUnsafeBufferPointer { table in
            while i < count {
                if state == Self.accept {
                    // Fast path: skip whole words of ASCII.
                    let shift = UInt64((i & 3) * 8)
                    let rotated = shift == 0 ? key64 : (key64 >> shift) | (key64 << (64 - shift))
                    while i + 8 <= count {
                        let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) ^ rotated
                        if word & 0x8080_8080_8080_8080 != 0 { break }
                        i += 8
                    }
                    if i == count { break }
                }
                let keyByte = UInt8(truncatingIfNeeded: maskKey >> UInt32((i & 3) * 8))
                let byte = base.load(fromByteOffset: i, as: UInt8.self) ^ keyByte
                let type = table[Int(byte)]
                state = table[256 + Int(state) + Int(type)]
                if state == Self.reject { return false }
                i += 1
            }
            return true
        }
    }

    public mutating func feed(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { feed($0) }
    }

    /// Byte classes (first 256 entries) and the state transition table.
    private static let table: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 256)
        for b in 0x80...0x8F { t[b] = 1 }
        for b in 0x90...0x9F { t[b] = 9 }
        for b in 0xA0...0xBF { t[b] = 7 }
        t[0xC0] = 8; t[0xC1] = 8
        for b in 0xC2...0xDF { t[b] = 2 }
        t[0xE0] = 10
        for b in 0xE1...0xEC { t[b] = 3 }
        t[0xED] = 4
        t[0xEE] = 3; t[0xEF] = 3
        t[0xF0] = 11
        for b in 0xF1...0xF3 { t[b] = 6 }
        t[0xF4] = 5
        for b in 0xF5...0xFF { t[b] = 8 }
        let transitions: [UInt8] = [
            0, 12, 24, 36, 60, 96, 84, 12, 12, 12, 48, 72, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
            12, 0, 12, 12, 12, 12, 12, 0, 12, 0, 12, 12, 12, 24, 12, 12, 12, 12, 12, 24, 12, 24, 12, 12,
            12, 12, 12, 12, 12, 12, 12, 24, 12, 12, 12, 12, 12, 24, 12, 12, 12, 12, 12, 12, 12, 24, 12, 12,
            12, 12, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12, 12, 36, 12, 12, 12, 12, 12, 36, 12, 36, 12, 12,
            12, 36, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
        ]
        return t + transitions
    }()
}
