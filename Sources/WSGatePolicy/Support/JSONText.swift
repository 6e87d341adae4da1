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
        // Escapes are decided on UTF-8 bytes: every character that needs one
        // is ASCII except U+2028/U+2029 (E2 80 A8/A9), so the runs between
        // them start and end on scalar boundaries and are appended as whole
        // runs of bytes (one copy each), not scalar by scalar.
        let utf8 = s.utf8
        var plainStart = utf8.startIndex
        var index = plainStart
        while index != utf8.endIndex {
            let byte = utf8[index]
            var width = 1
            var escape: String? = nil
            switch byte {
            case 0x22: escape = "\\\""
            case 0x5C: escape = "\\\\"
            case 0x0A: escape = "\\n"
            case 0x0D: escape = "\\r"
            case 0x09: escape = "\\t"
            case 0x08: escape = "\\b"
            case 0x0C: escape = "\\f"
            case 0x00..<0x20, 0x7F: escape = hexEscape(UInt32(byte))
            case 0xE2:
                let second = utf8.index(after: index)
                guard second != utf8.endIndex, utf8[second] == 0x80 else { break }
                let third = utf8.index(after: second)
                guard third != utf8.endIndex, utf8[third] == 0xA8 || utf8[third] == 0xA9 else { break }
                escape = utf8[third] == 0xA8 ? "\\u2028" : "\\u2029"
                width = 3
            default: break
            }
            if let escape {
                out.append(contentsOf: Substring(utf8[plainStart..<index]))
                out.append(escape)
                index = utf8.index(index, offsetBy: width)
                plainStart = index
            } else {
                index = utf8.index(after: index)
            }
        }
        out.append(contentsOf: Substring(utf8[plainStart..<index]))
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
