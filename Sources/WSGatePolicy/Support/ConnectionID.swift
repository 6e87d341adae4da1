/// ULID-style connection ids (`01JD…`): 48 bits of milliseconds then 80 random
/// bits in Crockford base32, so ids sort by start time in logs.
public enum ConnectionID {
    private static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    public static func make(milliseconds: UInt64 = Timestamp.nowMilliseconds()) -> String {
        var rng = SystemRandomNumberGenerator()
        let high = UInt64.random(in: 0...UInt64(UInt16.max), using: &rng)  // 16 random bits
        let low = rng.next()  // 64 random bits
        var out = [UInt8](repeating: 0, count: 26)
        // 10 chars of time (50 bits, top 2 always zero for 48-bit time).
        var t = milliseconds & 0xFFFF_FFFF_FFFF
        for i in stride(from: 9, through: 0, by: -1) {
            out[i] = alphabet[Int(t & 31)]
            t >>= 5
        }
        // 16 chars of randomness (80 bits): high 16 bits then low 64 bits.
        var r = low
        var h = high
        for i in stride(from: 25, through: 10, by: -1) {
            out[i] = alphabet[Int(r & 31)]
            r = (r >> 5) | ((h & 31) << 59)
            h >>= 5
        }
        return String(decoding: out, as: UTF8.self)
    }
}
