import NIOCore
import NIOPosix
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// The gateway in-process on a real loopback port, real upstream servers,
/// a real WebSocket client: each case asserts what the client saw and the
/// single `websocket_close` line.
extension IntegrationTests {
@Suite("Gateway integration", .serialized)
struct GatewayIntegrationTests {
    let group = MultiThreadedEventLoopGroup.singleton

    /// Budgets a loaded machine meets, so that no verdict depends on how fast
    /// a peer that does answer answers. A case about a timeout passes its own
    /// short budget, with a peer that never answers: the timer decides.
    static let generousTimeouts = "{upstream_connect_ms: 10000, upstream_handshake_ms: 10000, close_handshake_ms: 10000}"

    func config(upstream: String, extra: String = "", timeouts: String = Self.generousTimeouts) -> String {
        """
        listen: {host: 127.0.0.1, port: 0}
        timeouts: \(timeouts)
        \(extra)
        routes:
          - path: /echo
            upstream: builtin:echo
          - path: /up/*
            upstream: \(upstream)
        """
    }

    /// Runs one client against a fresh gateway and returns what it saw plus
    /// the one close line.
    func run(
        upstream: String, extra: String = "", timeouts: String = Self.generousTimeouts, path: String = "/up/x",
        send: [String] = [], closeWith: UInt16? = nil, waitForMessages: Int = 0, protocols: [String] = []
    ) async throws -> (ClientObservation, [String: Any]) {
        let gateway = try await TestGateway.start(group: group, yaml: config(upstream: upstream, extra: extra, timeouts: timeouts))
        let seen = try await TestClient.run(
            group: group, port: gateway.port, path: path, send: send, closeWith: closeWith, protocols: protocols,
            waitForMessages: waitForMessages)
        let lines = try await gateway.waitForEvents("websocket_close")
        // Exactly one line for the connection, even after everything settled:
        // once the drain has returned, every session has written its line.
        await gateway.stop()
        #expect(gateway.events("websocket_close").count == 1)
        return (seen, lines[0])
    }

    @Test func echoRoundTripAndClientClose() async throws {
        let (seen, line) = try await run(upstream: "builtin:echo", path: "/echo", send: ["a", "bc"], closeWith: 1000, waitForMessages: 2)
        #expect(seen.messages == ["a", "bc"])
        #expect(seen.code == 1000)
        #expect(line["cause"] as? String == "client_closed")
        #expect(line["code"] as? Int == 1000)
        #expect(line["was_clean"] as? Bool == true)
        #expect(line["initiator"] as? String == "client")
        #expect(line["messages_in"] as? Int == 2)
        #expect(line["messages_out"] as? Int == 2)
        #expect(line["bytes_in"] as? Int == 3)
        #expect(line["bytes_out"] as? Int == 3)
    }

    @Test func wsUpstreamEcho() async throws {
        let fixture = try await FixtureServer.start(.echo, group: group)
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(fixture.port)/base", send: ["hello"], closeWith: 4001, waitForMessages: 1)
        #expect(seen.messages == ["hello"])
        #expect(seen.code == 4001)
        #expect(line["cause"] as? String == "client_closed")
        #expect(line["code"] as? Int == 4001)
        #expect(line["upstream"] as? String == "ws://127.0.0.1:\(fixture.port)/base/x")
        #expect(line["upstream_code"] as? Int == 4001)
    }

    @Test func upstreamRejectsUpgrade() async throws {
        let fixture = try await FixtureServer.start(.reject(status: 403), group: group)
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(fixture.port)/")
        #expect(seen.code == 1014)
        #expect(seen.reason == "upstream rejected the handshake (HTTP 403)")
        #expect(line["cause"] as? String == "upstream_handshake_rejected")
        #expect(line["code"] as? Int == 1014)
        #expect(line["upstream_status"] as? Int == 403)
        #expect(line["was_clean"] as? Bool == true)
        #expect(line["initiator"] as? String == "gateway")
    }

    @Test func upstreamClosesWithCode() async throws {
        let fixture = try await FixtureServer.start(.closeAfterUpgrade(code: 4000, reason: "bye"), group: group)
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(fixture.port)/")
        #expect(seen.code == 4000)
        #expect(seen.reason == "bye")
        #expect(line["cause"] as? String == "upstream_closed")
        #expect(line["code"] as? Int == 4000)
        #expect(line["reason"] as? String == "bye")
        #expect(line["upstream_code"] as? Int == 4000)
        #expect(line["upstream_reason"] as? String == "bye")
        #expect(line["initiator"] as? String == "upstream")
        #expect(line["was_clean"] as? Bool == true)
    }

    @Test func upstreamResetDropsClientTCP() async throws {
        let fixture = try await FixtureServer.start(.resetAfterFirstMessage, group: group)
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(fixture.port)/", send: ["one"])
        #expect(seen.messages == ["one"])
        #expect(seen.code == 1006)
        #expect(!seen.receivedCloseFrame)
        #expect(line["cause"] as? String == "upstream_reset")
        #expect(line["code"] as? Int == 1006)
        #expect(line["was_clean"] as? Bool == false)
        #expect(line["initiator"] as? String == "upstream")
        #expect(line["messages_in"] as? Int == 1)
        #expect(line["messages_out"] as? Int == 1)
    }

    @Test func upstreamResetWithOverrideSendsFrame() async throws {
        let fixture = try await FixtureServer.start(.resetAfterFirstMessage, group: group)
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(
            upstream: "ws://127.0.0.1:\(fixture.port)/", extra: "close_codes: {upstream_reset: 1014}", send: ["one"])
        #expect(seen.code == 1014)
        #expect(seen.reason == "upstream connection reset")
        #expect(line["code"] as? Int == 1014)
        #expect(line["was_clean"] as? Bool == true)
    }

    @Test func upstreamNeverAnswersHandshake() async throws {
        let fixture = try await FixtureServer.start(.silent, group: group)
        defer { Task { await fixture.stop() } }
        // The fixture never answers the upgrade: the 300 ms timer decides.
        let (seen, line) = try await run(
            upstream: "ws://127.0.0.1:\(fixture.port)/",
            timeouts: "{upstream_connect_ms: 10000, upstream_handshake_ms: 300, close_handshake_ms: 10000}")
        #expect(seen.code == 1014)
        #expect(seen.reason == "upstream timeout")
        #expect(line["cause"] as? String == "upstream_timeout")
        #expect((line["error"] as? String)?.contains("timed out") == true)
    }

    @Test func upstreamPortClosed() async throws {
        let port = try await FixtureServer.closedPort(group: group)
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(port)/")
        #expect(seen.code == 1014)
        #expect(seen.reason == "upstream unreachable")
        #expect(line["cause"] as? String == "upstream_unreachable")
        #expect(line["error"] as? String == "connect(127.0.0.1:\(port)): Connection refused")
        #expect(line["messages_in"] as? Int == 0)
    }

    @Test func unreachableOverriddenCode() async throws {
        let port = try await FixtureServer.closedPort(group: group)
        let (seen, line) = try await run(upstream: "ws://127.0.0.1:\(port)/", extra: "close_codes: {upstream_unreachable: 4502}")
        #expect(seen.code == 4502)
        #expect(line["code"] as? Int == 4502)
    }

    @Test func overloadedThenShutdownDrain() async throws {
        let gateway = try await TestGateway.start(group: group, yaml: config(upstream: "builtin:echo", extra: "limits: {max_connections: 1}"))
        let port = gateway.port
        // A holds the only slot; it never closes on its own.
        let first = Task { try await TestClient.run(group: group, port: port, path: "/echo") }
        let deadline = ContinuousClock.now + .seconds(5)
        while gateway.server.activeConnections < 1 && ContinuousClock.now < deadline {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        let second = try await TestClient.run(group: group, port: port, path: "/echo")
        #expect(second.code == 1013)
        #expect(second.reason == "gateway overloaded, try again later")
        let overloaded = try await gateway.waitForEvents("websocket_close")
        #expect(overloaded[0]["cause"] as? String == "overloaded")
        #expect(overloaded[0]["code"] as? Int == 1013)
        // Drain: A is told the gateway is going away.
        await gateway.stop()
        let seenFirst = try await first.value
        #expect(seenFirst.code == 1001)
        #expect(seenFirst.reason == "gateway shutting down")
        let lines = try await gateway.waitForEvents("websocket_close", count: 2)
        #expect(lines[1]["cause"] as? String == "shutdown")
        #expect(lines[1]["code"] as? Int == 1001)
        #expect(lines[1]["was_clean"] as? Bool == true)
    }

    @Test func subprotocolChosenByUpstreamReachesClient() async throws {
        let fixture = try await FixtureServer.start(.echo, group: group, selectProtocol: "chat.v1")
        defer { Task { await fixture.stop() } }
        let (seen, line) = try await run(
            upstream: "ws://127.0.0.1:\(fixture.port)/", send: ["x"], closeWith: 1000, waitForMessages: 1,
            protocols: ["chat.v2", "chat.v1"])
        #expect(seen.subprotocol == "chat.v1")
        #expect(line["cause"] as? String == "client_closed")
    }
}
}
