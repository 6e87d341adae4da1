import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// HTTP upstreams through libcurl against a real HTTP server on loopback.
extension IntegrationTests {
@Suite("HTTP upstream integration", .serialized)
struct HTTPUpstreamIntegrationTests {
    let group = MultiThreadedEventLoopGroup.singleton

    /// Budgets a loaded machine meets (and a resolver answering NXDOMAIN
    /// well within them); the timeout case passes its own short budget
    /// against an endpoint that does not answer within the test.
    static let generousTimeouts = "{upstream_connect_ms: 20000, http_request_ms: 20000, close_handshake_ms: 10000}"

    func withGateway(
        _ routes: String, extra: String = "", timeouts: String = Self.generousTimeouts,
        _ body: (TestGateway, HTTPFixture) async throws -> Void
    ) async throws {
        let fixture = try await HTTPFixture.start(group: group)
        let yaml = """
            listen: {host: 127.0.0.1, port: 0}
            limits: {max_message_bytes: 4096}
            timeouts: \(timeouts)
            \(extra)
            routes:
            \(routes.replacingOccurrences(of: "PORT", with: String(fixture.port)))
            """
        let gateway = try await TestGateway.start(group: group, yaml: yaml)
        do {
            try await body(gateway, fixture)
        } catch {
            await gateway.stop()
            await fixture.stop()
            throw error
        }
        await gateway.stop()
        await fixture.stop()
    }

    @Test func textJSONBinaryAndEmptyResponses() async throws {
        let routes = """
              - {path: /echo/*, upstream: "http://127.0.0.1:PORT/echo"}
              - {path: /json, upstream: "http://127.0.0.1:PORT/json"}
              - {path: /binary, upstream: "http://127.0.0.1:PORT/binary"}
              - {path: /empty, upstream: "http://127.0.0.1:PORT/empty"}
            """
        try await withGateway(routes) { gateway, _ in
            let echo = try await TestClient.run(group: group, port: gateway.port, path: "/echo/x", send: ["héllo", "2"], closeWith: 1000, waitForMessages: 2)
            #expect(echo.messages == ["héllo", "2"])
            let json = try await TestClient.run(group: group, port: gateway.port, path: "/json", send: ["q"], closeWith: 1000, waitForMessages: 1)
            #expect(json.messages == [#"{"ok":true}"#])
            let binary = try await TestClient.run(group: group, port: gateway.port, path: "/binary", send: ["q"], closeWith: 1000, waitForMessages: 1)
            #expect(binary.messages == ["binary:0,1,2,255"])
            // 204: nothing comes back; the later close still works.
            let empty = try await TestClient.run(group: group, port: gateway.port, path: "/empty", send: ["q", "r"], closeWith: 1000)
            #expect(empty.messages.isEmpty)
            let lines = try await gateway.waitForEvents("websocket_close", count: 4)
            let emptyLine = try #require(lines.first { $0["route"] as? String == "/empty" })
            #expect(emptyLine["messages_in"] as? Int == 2)
            #expect(emptyLine["messages_out"] as? Int == 0)
            #expect(emptyLine["cause"] as? String == "client_closed")
        }
    }

    @Test("HTTP status → close code", arguments: [(500, 1011), (502, 1014), (503, 1013), (504, 1014), (404, 1008), (401, 1008)])
    func statusMapping(status: Int, code: Int) async throws {
        try await withGateway("  - {path: /s, upstream: \"http://127.0.0.1:PORT/status/\(status)\"}") { gateway, _ in
            let seen = try await TestClient.run(group: group, port: gateway.port, path: "/s", send: ["x"])
            #expect(Int(seen.code) == code)
            #expect(seen.reason == "upstream HTTP \(status)")
            let line = try await gateway.waitForEvents("websocket_close")[0]
            #expect(line["cause"] as? String == "upstream_http_error")
            #expect(line["upstream_status"] as? Int == status)
            #expect(line["code"] as? Int == code)
        }
    }

    @Test func onErrorReplySendsJSONAndKeepsTheConnection() async throws {
        let routes = "  - {path: /s, upstream: \"http://127.0.0.1:PORT/status/503\", http: {on_error: reply}}"
        try await withGateway(routes) { gateway, _ in
            let seen = try await TestClient.run(group: group, port: gateway.port, path: "/s", send: ["x"], closeWith: 1000, waitForMessages: 1)
            #expect(seen.messages == [#"{"error":{"status":503,"cause":"upstream_http_error"}}"#])
            #expect(seen.code == 1000)
        }
    }

    @Test func failuresMapToCauses() async throws {
        let closed = try await FixtureServer.closedPort(group: group)
        let routes = """
              - {path: /garbage, upstream: "http://127.0.0.1:PORT/garbage"}
              - {path: /big, upstream: "http://127.0.0.1:PORT/big/5000"}
              - {path: /closed, upstream: "http://127.0.0.1:\(closed)/x"}
              - {path: /nxdomain, upstream: "http://no-such-host.invalid/x"}
            """
        try await withGateway(routes) { gateway, _ in
            let cases = [("/garbage", "upstream_protocol_error"), ("/big", "upstream_protocol_error"),
                         ("/closed", "upstream_unreachable"), ("/nxdomain", "upstream_unreachable")]
            for (index, (path, cause)) in cases.enumerated() {
                let seen = try await TestClient.run(group: group, port: gateway.port, path: path, send: ["x"])
                #expect(seen.code == 1014, "\(path)")
                let lines = try await gateway.waitForEvents("websocket_close", count: index + 1)
                let line = try #require(lines.last { $0["route"] as? String == path }, "\(path)")
                #expect(line["cause"] as? String == cause, "\(path)")
                #expect(line["error"] is String, "\(path)")
            }
        }
    }

    @Test func requestOverHTTPRequestMsIsATimeout() async throws {
        // The endpoint answers after a minute: the 300 ms timer decides.
        try await withGateway(
            #"  - {path: /slow, upstream: "http://127.0.0.1:PORT/slow/60000"}"#,
            timeouts: "{upstream_connect_ms: 20000, http_request_ms: 300, close_handshake_ms: 10000}"
        ) { gateway, _ in
            let seen = try await TestClient.run(group: group, port: gateway.port, path: "/slow", send: ["x"])
            #expect(seen.code == 1014)
            let line = try #require(try await gateway.waitForEvents("websocket_close").first)
            #expect(line["cause"] as? String == "upstream_timeout")
            #expect(line["error"] is String)
        }
    }

    @Test func connectHookRejectsAndDisconnectHookGetsTheCloseEvent() async throws {
        let routes = """
              - {path: /denied, upstream: "http://127.0.0.1:PORT/echo", http: {connect_url: "http://127.0.0.1:PORT/record/403"}}
              - {path: /hooked, upstream: "http://127.0.0.1:PORT/echo", http: {connect_url: "http://127.0.0.1:PORT/record/200", disconnect_url: "http://127.0.0.1:PORT/record/204"}}
            """
        try await withGateway(routes) { gateway, fixture in
            let denied = try await TestClient.run(group: group, port: gateway.port, path: "/denied", send: ["x"])
            #expect(denied.code == 1008)
            #expect(denied.messages.isEmpty)
            let hooked = try await TestClient.run(group: group, port: gateway.port, path: "/hooked", send: ["x"], closeWith: 4321, waitForMessages: 1)
            #expect(hooked.messages == ["x"])
            let lines = try await gateway.waitForEvents("websocket_close", count: 2)
            let deniedLine = try #require(lines.first { $0["route"] as? String == "/denied" })
            #expect(deniedLine["cause"] as? String == "upstream_http_error")
            #expect(deniedLine["upstream_status"] as? Int == 403)
            // The disconnect hook gets exactly the logged close-event JSON.
            let deadline = Date().addingTimeInterval(5)
            while fixture.recorded.withLockedValue({ $0.count }) < 3 && Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
            let recorded = fixture.recorded.withLockedValue { $0 }
            #expect(recorded.count == 3)
            let posted = try #require(recorded.first { $0.path == "/record/204" })
            let logged = try #require(gateway.lines.withLockedValue { $0 }.first { $0.contains("\"route\":\"/hooked\"") && $0.contains("websocket_close") })
            #expect(posted.body == logged)
            #expect(posted.headers.first(name: "content-type") == "application/json")
            let connectHook = try #require(recorded.first { $0.path == "/record/200" })
            #expect(connectHook.headers.first(name: "x-wsgate-connection-id") != nil)
        }
    }
}
}
