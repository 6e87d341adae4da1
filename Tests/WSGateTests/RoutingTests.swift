import NIOHTTP1
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

@Suite("Routing")
struct RoutingTests {
    func table() throws -> RouteTable {
        let yaml = """
            routes:
              - {path: /echo, upstream: builtin:echo}
              - {path: /chat/*, upstream: "ws://127.0.0.1:9001/chat"}
              - {path: /q, upstream: "ws://up:80/feed?token=abc"}
              - {path: /root/*, upstream: "ws://[::1]:9002/"}
              - {path: /*, upstream: "ws://fallback:81/any"}
            """
        return RouteTable(routes: try ConfigLoader.load(yaml: yaml).routes)
    }

    @Test func exactMatch() throws {
        let m = try #require(try table().match(requestTarget: "/echo"))
        #expect(m.route.path == "/echo")
        #expect(m.upstreamURL == nil)
        // /echo/x does not match the exact route; it falls to /*.
        #expect(try table().match(requestTarget: "/echo/x")?.route.path == "/*")
    }

    @Test func prefixAppendsSuffixAndQuery() throws {
        let t = try table()
        #expect(t.match(requestTarget: "/chat/room1?x=1")?.upstreamURL?.description == "ws://127.0.0.1:9001/chat/room1?x=1")
        #expect(t.match(requestTarget: "/chat")?.upstreamURL?.description == "ws://127.0.0.1:9001/chat")
        #expect(t.match(requestTarget: "/chat/")?.upstreamURL?.description == "ws://127.0.0.1:9001/chat/")
        // /chatroom is not under /chat/.
        #expect(t.match(requestTarget: "/chatroom")?.route.path == "/*")
    }

    @Test func queriesAreJoined() throws {
        let t = try table()
        #expect(t.match(requestTarget: "/q?user=7")?.upstreamURL?.description == "ws://up/feed?token=abc&user=7")
        #expect(t.match(requestTarget: "/q")?.upstreamURL?.description == "ws://up/feed?token=abc")
    }

    @Test func ipv6AndSlashJoin() throws {
        let t = try table()
        #expect(t.match(requestTarget: "/root/a/b")?.upstreamURL?.description == "ws://[::1]:9002/a/b")
    }

    @Test func firstMatchWins() throws {
        #expect(try table().match(requestTarget: "/anything/else")?.route.path == "/*")
    }

    @Test func noMatch() throws {
        let t = RouteTable(routes: [Route(path: "/only", upstream: .echo)])
        #expect(t.match(requestTarget: "/other") == nil)
        #expect(t.match(requestTarget: "/only/x") == nil)
    }

    @Test func clientCannotChooseTheHost() throws {
        let t = try table()
        let m = try #require(t.match(requestTarget: "/chat/@evil.example.com:80/x"))
        #expect(m.upstreamURL?.host == "127.0.0.1")
        #expect(m.upstreamURL?.port == 9001)
    }

    @Test func handshakeCheck() throws {
        let t = try table()
        func head(_ uri: String, _ headers: [(String, String)]) -> HTTPRequestHead {
            HTTPRequestHead(version: .http1_1, method: .GET, uri: uri, headers: HTTPHeaders(headers))
        }
        let good: [(String, String)] = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
        if case .accept = HandshakeCheck.evaluate(head("/echo", good), routes: t) {} else { Issue.record("expected accept") }
        let noRoute = RouteTable(routes: [Route(path: "/x", upstream: .echo)])
        if case .reject(let r) = HandshakeCheck.evaluate(head("/echo", good), routes: noRoute) { #expect(r.status == .notFound) } else { Issue.record("expected 404") }
        if case .reject(let r) = HandshakeCheck.evaluate(head("/echo", []), routes: t) { #expect(r.status == .upgradeRequired) } else { Issue.record("expected 426") }
        var badVersion = good; badVersion[2] = ("Sec-WebSocket-Version", "8")
        if case .reject(let r) = HandshakeCheck.evaluate(head("/echo", badVersion), routes: t) { #expect(r.status == .upgradeRequired) } else { Issue.record("expected 426") }
        var badKey = good; badKey[3] = ("Sec-WebSocket-Key", "short")
        if case .reject(let r) = HandshakeCheck.evaluate(head("/echo", badKey), routes: t) { #expect(r.status == .badRequest) } else { Issue.record("expected 400") }
    }

    @Test func originAllowList() throws {
        var route = Route(path: "/o", upstream: .echo)
        route.origins = ["https://app.example.com"]
        let t = RouteTable(routes: [route])
        let base: [(String, String)] = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
        let ok = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/o", headers: HTTPHeaders(base + [("Origin", "https://app.example.com")]))
        let bad = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/o", headers: HTTPHeaders(base + [("Origin", "https://evil.example")]))
        if case .accept = HandshakeCheck.evaluate(ok, routes: t) {} else { Issue.record("expected accept") }
        if case .reject(let r) = HandshakeCheck.evaluate(bad, routes: t) { #expect(r.status == .forbidden) } else { Issue.record("expected 403") }
    }
}
