#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// JSON string escaping. Everything below U+0020, the quote, the backslash,
/// DEL and the Unicode line/paragraph separators are escaped, so a value
/// can never break a log line or forge a field, whatever a client or
/// upstream sends.
public enum JSONText {
    public static func quoted(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count + 2)
        appendQuoted(s, to: &out)
        return out
    }

    public static func appendQuoted(_ s: String, to out: inout String) {
        out.append("\"")
        var plainStart = s.unicodeScalars.startIndex
        var index = plainStart
        let scalars = s.unicodeScalars
        while index != scalars.endIndex {
            let c = scalars[index]
            let escape: String?
            switch c.value {
            case 0x22: escape = "\\\""
            case 0x5C: escape = "\\\\"
            case 0x0A: escape = "\\n"
            case 0x0D: escape = "\\r"
            case 0x09: escape = "\\t"
            case 0x08: escape = "\\b"
            case 0x0C: escape = "\\f"
            case 0x00..<0x20, 0x7F, 0x2028, 0x2029: escape = hexEscape(c.value)
            default: escape = nil
            }
            if let escape {
                out.unicodeScalars.append(contentsOf: scalars[plainStart..<index])
                out.append(escape)
                index = scalars.index(after: index)
                plainStart = index
            } else {
                index = scalars.index(after: index)
            }
        }
        out.unicodeScalars.append(contentsOf: scalars[plainStart..<index])
        out.append("\"")
    }

    private static func hexEscape(_ v: UInt32) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var bytes: [UInt8] = Array("\\u".utf8)
        for shift in stride(from: 12, through: 0, by: -4) {
            bytes.append(hex[Int((v >> UInt32(shift)) & 0xF)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Builds one JSON object in insertion order (log lines keep a stable,
/// documented field order, which `JSONSerialization` would not).
public struct JSONObjectWriter {
    private var out = "{"
    private var first = true

    public init() {}

    private mutating func key(_ name: String) {
        if !first { out.append(",") }
        first = false
        JSONText.appendQuoted(name, to: &out)
        out.append(":")
    }

    public mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { JSONText.appendQuoted(value, to: &out) } else { out.append("null") }
    }

    public mutating func field(_ name: String, _ value: Int?) {
        key(name)
        out.append(value.map { String($0) } ?? "null")
    }

    public mutating func field(_ name: String, _ value: Bool) {
        key(name)
        out.append(value ? "true" : "false")
    }

    /// Appends an already-encoded JSON value.
    public mutating func field(_ name: String, rawJSON: String) {
        key(name)
        out.append(rawJSON)
    }

    public mutating func finish() -> String {
        out.append("}")
        return out
    }
}

/// Wall-clock helpers without Foundation's formatter machinery.
public enum Timestamp {
    public static func nowMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// `2026-11-25T14:03:07.412Z`
    public static func iso8601(millisecondsSinceEpoch ms: UInt64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ms % 1000), 3))Z"
    }
}
