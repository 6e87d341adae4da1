import Testing
@testable import WSGatePolicy

/// RFC 3986 §5.2.4 (remove_dot_segments) and §6.2.2.2 (percent-encoded
/// dots), and what routing does with a path that leaves its route.
@Suite("Request paths")
struct RequestPathTests {
    @Test("dot segments are resolved", arguments: [
        ("/chat/room", "/chat/room"),
        ("/chat/./room", "/chat/room"),
        ("/chat/a/../b", "/chat/b"),
        ("/chat/../admin", "/admin"),
        ("/chat/%2e%2e/admin", "/admin"),
        ("/chat/%2E%2E/admin", "/admin"),
        ("/chat/.%2e/admin", "/admin"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/a/b/c/../../d", "/a/d"),
        ("/a%2Eb/c", "/a.b/c"),
        ("/v1.2/file.txt", "/v1.2/file.txt"),
        ("/a//b", "/a//b"),
        ("/a/%2F/b", "/a/%2F/b"),
        ("/..a/b..", "/..a/b.."),
    ])
    func normalizes(raw: String, expected: String) {
        #expect(RequestPath.normalize(Substring(raw)) == .path(Substring(expected)))
    }

    @Test("paths above the root are refused", arguments: ["/..", "/../x", "/a/../../b", "/%2e%2e/etc"])
    func escapes(raw: String) {
        #expect(RequestPath.normalize(Substring(raw)) == .escapesRoot)
    }

    func table() throws -> RouteTable {
        let yaml = """
            routes:
              - {path: /chat/*, upstream: "ws://127.0.0.1:9001/chat"}
              - {path: /admin, upstream: "ws://127.0.0.1:9002/admin"}
            """
        return RouteTable(routes: try ConfigLoader.load(yaml: yaml).routes)
    }

    @Test("a path that leaves its route is refused, not rerouted", arguments: ["/chat/../admin", "/chat/%2e%2e/admin", "/chat/x/../../admin"])
    func leavesRoute(target: String) throws {
        guard case .leavesRoute(let route) = try table().lookup(requestTarget: target) else {
            Issue.record("\(target) was not refused")
            return
        }
        #expect(route.path == "/chat/*")
    }

    @Test func staysInItsRouteAndTheUpstreamGetsTheResolvedPath() throws {
        guard case .matched(let match) = try table().lookup(requestTarget: "/chat/a/../b?x=1") else {
            Issue.record("not matched")
            return
        }
        #expect(match.route.path == "/chat/*")
        #expect(match.upstreamURL?.requestTarget == "/chat/b?x=1")
    }

    @Test func aboveTheRootIsInvalid() throws {
        guard case .invalidPath = try table().lookup(requestTarget: "/../chat/x") else {
            Issue.record("not refused")
            return
        }
    }
}
