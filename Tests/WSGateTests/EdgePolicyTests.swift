import Testing
@testable import WSGatePolicy

/// What the gateway believes of a client at the edge: query redaction for
/// logs, `trusted_proxies` networks and the `X-Forwarded-For` chain.
@Suite("Edge policy")
struct EdgePolicyTests {
    @Test("secret query values are redacted, others kept", arguments: [
        ("ws://h:1/chat?token=abc", "ws://h:1/chat?token=REDACTED"),
        ("ws://h:1/chat?room=1&access_token=abc&x=2", "ws://h:1/chat?room=1&access_token=REDACTED&x=2"),
        ("/p?TOKEN=abc", "/p?TOKEN=REDACTED"),
        ("/p?%74oken=abc", "/p?%74oken=REDACTED"),
        ("/p?token=", "/p?token=REDACTED"),
        ("/p?token", "/p?token"),
        ("/p?tokens=abc&key=k#frag", "/p?tokens=abc&key=REDACTED#frag"),
        ("GET http://h/x?sig=1 failed: \"/y?password=2\"", "GET http://h/x?sig=REDACTED failed: \"/y?password=REDACTED\""),
        ("no query & token=abc here", "no query & token=abc here"),
        ("/p?a=1 then &token=x", "/p?a=1 then &token=x"),
        ("/p?jwt=a&jwt=b", "/p?jwt=REDACTED&jwt=REDACTED"),
        ("/é?auth=ü&n=ö", "/é?auth=REDACTED&n=ö"),
    ])
    func redacts(text: String, expected: String) {
        #expect(QueryRedaction().redact(text) == expected)
    }

    @Test("an empty list redacts nothing; a custom list only its names")
    func customList() {
        #expect(QueryRedaction(names: []).redact("/p?token=a") == "/p?token=a")
        #expect(QueryRedaction(names: ["Session"]).redact("/p?session=a&token=b") == "/p?session=REDACTED&token=b")
    }

    @Test("networks contain what they should", arguments: [
        ("10.0.0.0/8", "10.255.1.2", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("127.0.0.1", "127.0.0.1", true),
        ("127.0.0.1", "127.0.0.2", false),
        ("192.168.1.0/25", "192.168.1.127", true),
        ("192.168.1.0/25", "192.168.1.128", false),
        ("10.0.0.0/8", "::ffff:10.1.2.3", true),
        ("fd00::/8", "fd12::1", true),
        ("fd00::/8", "fe80::1", false),
        ("::1", "[::1]", true),
        ("0.0.0.0/0", "8.8.8.8", true),
        ("10.0.0.0/8", "not-an-ip", false),
    ])
    func contains(network: String, ip: String, expected: Bool) {
        #expect(IPNetwork(network)!.contains(ip) == expected)
    }

    @Test("malformed networks are refused", arguments: ["", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "a.b.c.d", "10.0.0.0/+8", "10.0.0.0/"])
    func malformed(text: String) {
        #expect(IPNetwork(text) == nil)
    }

    @Test("an untrusted peer's X-Forwarded-For is replaced")
    func untrusted() {
        let f = ForwardedFor(headerValues: ["6.6.6.6"], peerIP: "203.0.113.9", trustedProxies: [IPNetwork("10.0.0.0/8")!])
        #expect(f.header == "203.0.113.9")
        #expect(f.clientIP == nil)
        let none = ForwardedFor(headerValues: ["6.6.6.6"], peerIP: "10.0.0.1", trustedProxies: [])
        #expect(none.header == "10.0.0.1")
    }

    @Test("a trusted proxy's chain is kept; the client is the right-most untrusted hop")
    func trusted() {
        let trusted = [IPNetwork("10.0.0.0/8")!]
        let f = ForwardedFor(headerValues: ["6.6.6.6, 203.0.113.7", "10.1.1.1"], peerIP: "10.0.0.2", trustedProxies: trusted)
        #expect(f.header == "6.6.6.6, 203.0.113.7, 10.1.1.1, 10.0.0.2")
        #expect(f.clientIP == "203.0.113.7")
        let noHeader = ForwardedFor(headerValues: [], peerIP: "10.0.0.2", trustedProxies: trusted)
        #expect(noHeader.header == "10.0.0.2")
        #expect(noHeader.clientIP == nil)
        let allTrusted = ForwardedFor(headerValues: ["10.9.9.9"], peerIP: "10.0.0.2", trustedProxies: trusted)
        #expect(allTrusted.clientIP == "10.9.9.9")
        let garbage = ForwardedFor(headerValues: ["1.2.3.4, junk"], peerIP: "10.0.0.2", trustedProxies: trusted)
        #expect(garbage.clientIP == "junk")
    }

    @Test("the new keys load, with their defaults and their errors")
    func config() throws {
        let base = "routes:\n  - {path: /echo, upstream: 'builtin:echo'}\n"
        let defaults = try ConfigLoader.load(yaml: base)
        #expect(defaults.limits.maxHeaderBytes == 16_384)
        #expect(defaults.log.redactQuery == QueryRedaction.defaultNames)
        #expect(defaults.trustedProxies.isEmpty)
        let custom = try ConfigLoader.load(yaml: base + """
            limits: {max_header_bytes: 4096, max_pending_handshakes: 50}
            log: {redact_query: [session]}
            trusted_proxies: [10.0.0.0/8, "::1"]
            """)
        #expect(custom.limits.maxHeaderBytes == 4096)
        #expect(custom.limits.maxPendingHandshakes == 50)
        #expect(custom.log.redactQuery == ["session"])
        #expect(custom.trustedProxies.map(\.description) == ["10.0.0.0/8", "::1"])
        #expect(throws: ConfigError.self) {
            try ConfigLoader.load(yaml: base + "trusted_proxies: [10.0.0.0/99]\n")
        }
        do {
            _ = try ConfigLoader.load(yaml: base + "trusted_proxies: [nope]\nlog: {redact_query: ['a=b']}\n")
            Issue.record("accepted bad values")
        } catch {
            #expect(error.problems.map(\.path).sorted() == ["log.redact_query[0]", "trusted_proxies[0]"])
        }
    }
}
