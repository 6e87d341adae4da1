/// Which handshake headers may cross from the client to the upstream.
public enum HeaderRules {
    /// Hop-by-hop headers (RFC 9110 §7.6.1) and the WebSocket handshake's own
    /// headers: the gateway writes these itself for the upstream leg, so a
    /// route may not copy them from the client.
    public static let neverForwarded: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
        "sec-websocket-key", "sec-websocket-version", "sec-websocket-accept",
        "sec-websocket-extensions", "sec-websocket-protocol", "x-forwarded-for",
        "x-wsgate-connection-id", "x-wsgate-message-type",
    ]

    /// RFC 9110 token characters.
    public static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            switch c {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return "!#$%&'*+-.^_`|~".utf8.contains(c)
            }
        }
    }
}
