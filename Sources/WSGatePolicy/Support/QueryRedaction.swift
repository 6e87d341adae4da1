/// Hides the values of secret query parameters in text that is about to be
/// logged (`log.redact_query`).
///
/// Browsers cannot set headers on a WebSocket, so tokens travel in the query
/// string (`/chat?access_token=…`), and the query is appended to the upstream
/// URL. Every string that reaches a log line or a `disconnect_url` body and
/// may hold a URL (the upstream, the request path, error texts) goes through
/// `redact`, which rewrites `name=value` to `name=REDACTED` for every listed
/// name. Names match case-insensitively and after percent-decoding
/// (`%74oken` is `token`), so a client cannot dodge the list by spelling.
///
/// A parameter is one that follows a `?` (or an `&` after one); the value
/// runs to the next `&`, `#`, quote, angle bracket or white space. Text
/// without a `?` is returned as is without being copied, which is every
/// line of a gateway whose clients use no query.
public struct QueryRedaction: Sendable, Equatable {
    /// Contract §8's default list.
    public static let defaultNames = ["token", "access_token", "jwt", "auth", "key", "signature", "sig", "password"]
    public static let placeholder = "REDACTED"

    /// Lower-cased names, as bytes.
    private let names: [[UInt8]]

    public init(names: [String] = QueryRedaction.defaultNames) {
        self.names = names.map { Array($0.lowercased().utf8) }
    }

    public var isEnabled: Bool { !names.isEmpty }

    public func redact(_ text: String) -> String {
        guard isEnabled, text.utf8.contains(UInt8(ascii: "?")) else { return text }
        var output: [UInt8] = []
        var changed = false
        let bytes = Array(text.utf8)
        output.reserveCapacity(bytes.count)
        var i = 0
        var inQuery = false
        while i < bytes.count {
            let b = bytes[i]
            output.append(b)
            i += 1
            if Self.endsQuery(b) {
                inQuery = false
                continue
            }
            guard b == UInt8(ascii: "?") || (inQuery && b == UInt8(ascii: "&")) else { continue }
            inQuery = true
            // A parameter's name runs to `=` (or to its end, when it has no value).
            let nameStart = i
            while i < bytes.count, bytes[i] != UInt8(ascii: "="), bytes[i] != UInt8(ascii: "&"), !Self.endsQuery(bytes[i]) {
                i += 1
            }
            output.append(contentsOf: bytes[nameStart..<i])
            guard i < bytes.count, bytes[i] == UInt8(ascii: "="), isSecret(bytes[nameStart..<i]) else { continue }
            output.append(UInt8(ascii: "="))
            i += 1
            while i < bytes.count, bytes[i] != UInt8(ascii: "&"), !Self.endsQuery(bytes[i]) { i += 1 }
            output.append(contentsOf: Self.placeholder.utf8)
            changed = true
        }
        return changed ? String(decoding: output, as: UTF8.self) : text
    }

    /// Where a query (and so a value) ends in running text.
    private static func endsQuery(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "#"), UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"),
            UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "<"), UInt8(ascii: ">"):
            return true
        default:
            return false
        }
    }

    private func isSecret(_ rawName: ArraySlice<UInt8>) -> Bool {
        let name = Self.percentDecodedLowercased(rawName)
        return names.contains { $0 == name }
    }

    private static func percentDecodedLowercased(_ raw: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = raw.startIndex
        while i < raw.endIndex {
            var b = raw[i]
            if b == UInt8(ascii: "%"), i + 2 < raw.endIndex, let hi = hexValue(raw[i + 1]), let lo = hexValue(raw[i + 2]) {
                b = hi << 4 | lo
                i += 3
            } else {
                if b == UInt8(ascii: "+") { b = UInt8(ascii: " ") }
                i += 1
            }
            if b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") { b += 32 }
            out.append(b)
        }
        return out
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
