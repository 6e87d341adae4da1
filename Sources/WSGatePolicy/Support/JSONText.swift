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
