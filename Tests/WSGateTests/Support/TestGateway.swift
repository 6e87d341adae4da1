import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// A gateway running in-process on a free loopback port, with its log lines
/// captured so tests can assert the close-event line.
final class TestGateway: Sendable {
    let server: GatewayServer
    let port: Int
    let lines: NIOLockedValueBox<[String]>

    private init(server: GatewayServer, port: Int, lines: NIOLockedValueBox<[String]>) {
        self.server = server
        self.port = port
        self.lines = lines
    }

    static func start(group: EventLoopGroup, yaml: String) async throws -> TestGateway {
        var config = try ConfigLoader.load(yaml: yaml)
        config.admin.port = 0  // never collide with another gateway's admin port
        let lines = NIOLockedValueBox<[String]>([])
        let sink = LogSink(capture: { line in lines.withLockedValue { $0.append(line) } })
        var logger = Logger(label: "test", factory: { GatewayLogHandler(label: $0, level: .info, format: .json, sink: sink) })
        logger.logLevel = .info
        let server = try GatewayServer(config: config, group: group, logger: logger, eventLog: EventLog(format: .json, sink: sink))
        let port = try await server.start()
        return TestGateway(server: server, port: port, lines: lines)
    }

    /// Parsed log lines with `event == name`.
    func events(_ name: String) -> [[String: Any]] {
        lines.withLockedValue { $0 }.compactMap { line in
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return obj["event"] as? String == name ? obj : nil
        }
    }

    /// Waits (bounded) until `count` lines of `event` exist, and returns them.
    func waitForEvents(_ name: String, count: Int = 1, timeout: TimeInterval = 10) async throws -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let found = events(name)
            if found.count >= count { return found }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw TestError("timed out waiting for \(count) \(name) line(s); have: \(lines.withLockedValue { $0 })")
    }

    /// Drains: returns once every session has written its line, so a test
    /// may count lines right after. The budget is what a loaded machine
    /// needs for clients that do answer the shutdown close.
    func stop() async {
        await server.drain(timeout: .seconds(10))
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
