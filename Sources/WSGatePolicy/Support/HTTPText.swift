/// The small text jobs several parts of the gateway do on a handshake's
/// request target and headers (token sources, hash keys, the control API,
/// `X-Forwarded-For`, `X-WSGate-Channels`), done once here.
public enum HTTPText {
    /// Without leading and trailing spaces and tabs.
    public static func trimmingBlanks(_ text: some StringProtocol) -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        return String(text.drop(while: blank).reversed().drop(while: blank).reversed())
    }

    /// `%XX` decoded; anything else (a lone `%`, bad hex) kept as it is.
    public static func percentDecoded(_ text: some StringProtocol) -> String {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "%"), bytes.count >= 2,
                let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16)
            {
                out.append(v)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The raw values of every `name=value` in a request target's query, in
    /// order (`""` for a bare `name`).
    public static func queryValues(_ name: String, in uri: String) -> [String] {
        guard let q = uri.firstIndex(of: "?") else { return [] }
        return uri[uri.index(after: q)...].split(separator: "&").compactMap { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return parts[0] == name ? (parts.count > 1 ? String(parts[1]) : "") : nil
        }
    }

    /// The raw values of every cookie called `name` in `Cookie` header values, in order.
    public static func cookieValues(_ name: String, in headers: [String]) -> [String] {
        headers.flatMap { $0.split(separator: ";") }.compactMap { item in
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return trimmingBlanks(parts[0]) == name ? (parts.count > 1 ? String(parts[1]) : "") : nil
        }
    }

    /// A comma-separated header value as a list, blanks trimmed, empty items dropped.
    public static func list(_ value: some StringProtocol) -> [String] {
        value.split(separator: ",").map(trimmingBlanks).filter { !$0.isEmpty }
    }
}
