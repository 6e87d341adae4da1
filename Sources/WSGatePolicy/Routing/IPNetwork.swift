#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fd00::/8`, or a single address),
/// as named in `trusted_proxies`.
///
/// Addresses are compared as 16 bytes: IPv4 as its IPv4-mapped IPv6 form
/// (`::ffff:a.b.c.d`), so `10.0.0.0/8` also matches a peer that a dual-stack
/// listener reports as `::ffff:10.1.2.3`.
public struct IPNetwork: Sendable, Equatable, CustomStringConvertible {
    public let description: String
    private let address: [UInt8]  // 16 bytes
    private let prefixLength: Int  // 0...128, on the 16-byte form

    /// Parses `address` or `address/prefix`; nil when it is neither.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let (bytes, isV4) = Self.parseAddress(String(parts[0])) else { return nil }
        var prefix = 128
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= (isV4 ? 32 : 128), !parts[1].hasPrefix("+") else { return nil }
            prefix = isV4 ? 96 + p : p
        }
        self.description = text
        self.prefixLength = prefix
        self.address = Self.masked(bytes, prefix)
    }

    /// Whether `ip` (an address in text form, no port) is in this network.
    public func contains(_ ip: String) -> Bool {
        guard let (bytes, _) = Self.parseAddress(ip) else { return false }
        return Self.masked(bytes, prefixLength) == address
    }

    /// 16 bytes and whether the text was IPv4; accepts `[v6]` too.
    static func parseAddress(_ text: String) -> ([UInt8], Bool)? {
        var text = text
        if text.hasPrefix("["), text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        if let zone = text.firstIndex(of: "%") { text = String(text[..<zone]) }
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            var bytes = [UInt8](repeating: 0, count: 16)
            bytes[10] = 0xFF
            bytes[11] = 0xFF
            withUnsafeBytes(of: &v4) { raw in
                for i in 0..<4 { bytes[12 + i] = raw[i] }
            }
            return (bytes, true)
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0.prefix(16)) }
            return (bytes, false)
        }
        return nil
    }

    private static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        var out = bytes
        for i in 0..<16 {
            let bits = max(0, min(8, prefix - i * 8))
            out[i] &= bits == 8 ? 0xFF : UInt8(truncatingIfNeeded: 0xFF00 >> bits)
        }
        return out
    }
}
