/// A request path as RFC 3986 resolves it: percent-encoded dots decoded
/// (§6.2.2.2: `%2E` is an unreserved character) and dot segments removed
/// (§5.2.4). Routing and the upstream see the path the request really names,
/// so `/chat/../admin` cannot reach `/admin` through the `/chat/*` route.
public enum RequestPath {
    public enum Normalized: Equatable, Sendable {
        case path(Substring)
        /// More `..` segments than there are segments: the path climbs above
        /// the root (RFC 3986 would drop the excess; a gateway refuses it).
        case escapesRoot
    }

    public static func normalize(_ path: Substring) -> Normalized {
        // Most paths have neither a dot nor a percent sign: nothing to do.
        guard path.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "%") }) else {
            return .path(path)
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        var out: [String] = []
        var trailingSlash = false
        for (index, raw) in segments.enumerated() {
            let segment = decodingDots(raw)
            let isLast = index == segments.count - 1
            switch segment {
            case ".":
                trailingSlash = isLast
            case "..":
                guard !out.isEmpty else { return .escapesRoot }
                out.removeLast()
                trailingSlash = isLast
            default:
                out.append(segment)
                trailingSlash = false
            }
        }
        var result = "/" + out.joined(separator: "/")
        if trailingSlash && !out.isEmpty { result += "/" }
        return .path(Substring(result))
    }

    /// `%2E` / `%2e` → `.`; every other byte as it is.
    private static func decodingDots(_ segment: Substring) -> String {
        guard segment.contains("%") else { return String(segment) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(segment.utf8.count)
        var input = segment.utf8[...]
        while let byte = input.first {
            if byte == UInt8(ascii: "%"), input.count >= 3 {
                let hex = input.dropFirst().prefix(2)
                if hex.first == UInt8(ascii: "2"), hex.last == UInt8(ascii: "e") || hex.last == UInt8(ascii: "E") {
                    bytes.append(UInt8(ascii: "."))
                    input = input.dropFirst(3)
                    continue
                }
            }
            bytes.append(byte)
            input = input.dropFirst()
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
