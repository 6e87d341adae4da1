import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

@Suite("Config loading")
struct ConfigTests {
    func problems(_ yaml: String, env: [String: String] = [:]) -> [String] {
        do {
            _ = try ConfigLoader.load(yaml: yaml, environment: env)
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    @Test func minimalConfigGetsAllDefaults() throws {
        let c = try ConfigLoader.load(yaml: "routes:\n  - path: /echo\n    upstream: builtin:echo\n")
        #expect(c.listen.host == "0.0.0.0")
        #expect(c.listen.port == 8080)
        #expect(c.admin.host == "127.0.0.1")
        #expect(c.admin.port == 9090)
        #expect(c.limits.maxConnections == 10_000)
        #expect(c.limits.maxMessageBytes == 1_048_576)
        #expect(c.limits.handshakeTimeoutMs == 5000)
        #expect(c.limits.idleTimeoutMs == 0)
        #expect(c.timeouts.upstreamConnectMs == 3000)
        #expect(c.timeouts.upstreamHandshakeMs == 5000)
        #expect(c.timeouts.httpRequestMs == 10000)
        #expect(c.timeouts.closeHandshakeMs == 2000)
        #expect(c.shutdown.drainTimeoutMs == 10000)
        #expect(c.shutdown.closeCode == 1001)
        #expect(c.log.format == .json)
        #expect(c.log.level == .info)
        #expect(c.routes == [Route(path: "/echo", upstream: .echo)])
        #expect(c.closeCodes.isEmpty)
        #expect(c.workers == .auto)
    }

    @Test func workersIsAutoOrACount() throws {
        let routes = "routes:\n  - path: /echo\n    upstream: builtin:echo\n"
        #expect(try ConfigLoader.load(yaml: "workers: 1\n" + routes).workers == .count(1))
        #expect(try ConfigLoader.load(yaml: "workers: auto\n" + routes).workers == .auto)
        #expect(try ConfigLoader.load(yaml: routes, environment: ["WSGATE_WORKERS": "3"]).workers == .count(3))
        #expect(GatewayConfig.Workers.auto.resolved(coresAvailable: 6) == 6)
        #expect(GatewayConfig.Workers.auto.resolved(coresAvailable: 0) == 1)
        #expect(GatewayConfig.Workers.count(2).resolved(coresAvailable: 6) == 2)
        #expect(problems("workers: 0\n" + routes) == ["workers: 0 is out of range 1...1024"])
        #expect(problems("workers: many\n" + routes) == ["workers: expected auto or an integer, found \"many\""])
        #expect(problems(routes, env: ["WSGATE_WORKERS": "-1"]).count == 1)
    }

    @Test func fullConfigDecodes() throws {
        let yaml = """
            listen: {host: 127.0.0.1, port: 0}
            admin: {port: 0}
            limits: {max_connections: 5, max_message_bytes: 1000, handshake_timeout_ms: 100, idle_timeout_ms: 50}
            timeouts: {upstream_connect_ms: 1, upstream_handshake_ms: 2, http_request_ms: 3, close_handshake_ms: 4}
            shutdown: {drain_timeout_ms: 7, close_code: 1012}
            log: {format: text, level: debug}
            routes:
              - path: /chat/*
                upstream: ws://127.0.0.1:9001/chat
                forward_headers: [Authorization, cookie]
                origins: ["https://app.example.com"]
            close_codes:
              upstream_reset: 1014
              overloaded: 4000
            """
        let c = try ConfigLoader.load(yaml: yaml)
        #expect(c.listen.port == 0)
        #expect(c.limits.maxConnections == 5)
        #expect(c.timeouts.closeHandshakeMs == 4)
        #expect(c.shutdown.closeCode == 1012)
        #expect(c.log.format == .text)
        #expect(c.routes[0].forwardHeaders == ["authorization", "cookie"])
        #expect(c.routes[0].origins == ["https://app.example.com"])
        guard case .webSocket(let url) = c.routes[0].upstream else {
            Issue.record("expected ws upstream")
            return
        }
        #expect(url.host == "127.0.0.1" && url.port == 9001 && url.path == "/chat")
        #expect(c.closeCodes == [.upstreamReset: 1014, .overloaded: 4000])
    }

    @Test func everyProblemIsReportedWithItsKeyPath() {
        let yaml = """
            listen:
              port: 70000
            limits:
              max_conections: 5
            log:
              level: loud
            routes:
              - path: /a
                upstream: builtin:echo
              - path: /b
                upstream: ftp://example.com/x
              - path: nope
                upstrem: builtin:echo
            close_codes:
              upstream_reset: 1005
              client_closed: 1000
              bogus: 1000
            """
        let p = problems(yaml)
        #expect(p.contains("listen.port: 70000 is out of range 0...65535"))
        #expect(p.contains("limits.max_conections: unknown key (did you mean max_connections?)"))
        #expect(p.contains { $0.hasPrefix("log.level: invalid value \"loud\"") })
        #expect(p.contains("routes[1].upstream: unsupported scheme \"ftp\""))
        #expect(p.contains("routes[2].path: must start with /"))
        #expect(p.contains { $0.hasPrefix("routes[2].upstrem: unknown key") })
        #expect(p.contains("routes[2].upstream: required key is missing (or give upstreams)"))
        #expect(p.contains { $0.hasPrefix("close_codes.upstream_reset: 1005 is not allowed") })
        #expect(p.contains { $0.hasPrefix("close_codes.client_closed: cannot be overridden") })
        #expect(p.contains("close_codes.bogus: unknown cause"))
        #expect(p.count == 10)
    }

    @Test func routesAreRequired() {
        #expect(problems("listen: {port: 1}\n") == ["routes: required key is missing"])
        #expect(problems("") == ["routes: required key is missing"])
        #expect(problems("routes: []\n") == ["routes: at least one route is required"])
    }

    @Test func typeErrors() {
        let p = problems("listen: 5\nroutes:\n  - path: /a\n    upstream: builtin:echo\nlimits:\n  max_connections: \"10\"\n")
        #expect(p.contains("listen: expected a mapping, found a scalar"))
        #expect(p.contains { $0.hasPrefix("limits.max_connections: expected an integer") })
    }

    @Test func invalidYAMLIsOneProblem() {
        let p = problems("routes: [\n")
        #expect(p.count == 1)
        #expect(p[0].hasPrefix("invalid YAML"))
    }

    @Test func duplicateRoutePathsAndBadUpstreams() {
        let yaml = """
            routes:
              - {path: /a, upstream: builtin:echo}
              - {path: /a, upstream: builtin:echo}
              - {path: /b, upstream: builtin:nope}
              - {path: /c, upstream: "ws://"}
              - {path: /d, upstream: "ws://host:0/x"}
              - {path: /e/*/f, upstream: builtin:echo}
              - {path: /g, upstream: builtin:echo, forward_headers: [upgrade, "bad header"]}
            """
        let p = problems(yaml)
        #expect(p.contains { $0.hasPrefix("routes[1].path: duplicate path") })
        #expect(p.contains { $0.hasPrefix("routes[2].upstream: unknown builtin") })
        #expect(p.contains("routes[3].upstream: missing host"))
        #expect(p.contains { $0.hasPrefix("routes[4].upstream: invalid port") })
        #expect(p.contains { $0.hasPrefix("routes[5].path: * is only allowed") })
        #expect(p.contains { $0.hasPrefix("routes[6].forward_headers[0]:") })
        #expect(p.contains { $0.hasPrefix("routes[6].forward_headers[1]: invalid header name") })
    }

    @Test func shutdownCodeMustBeGoingAwayOrRestart() {
        let p = problems("shutdown: {close_code: 1000}\nroutes:\n  - {path: /a, upstream: builtin:echo}\n")
        #expect(p == ["shutdown.close_code: must be 1001 (Going Away) or 1012 (Service Restart), found 1000"])
    }

    @Test func environmentOverrides() throws {
        let yaml = "listen: {port: 1234}\nroutes:\n  - {path: /a, upstream: builtin:echo}\n"
        let env = ["WSGATE_LISTEN_PORT": "0", "WSGATE_ADMIN_PORT": "9999", "WSGATE_LOG_LEVEL": "DEBUG", "WSGATE_LOG_FORMAT": "text"]
        let c = try ConfigLoader.load(yaml: yaml, environment: env)
        #expect(c.listen.port == 0)
        #expect(c.admin.port == 9999)
        #expect(c.log.level == .debug)
        #expect(c.log.format == .text)
        #expect(problems(yaml, env: ["WSGATE_LISTEN_PORT": "http"]) == ["WSGATE_LISTEN_PORT: invalid port \"http\""])
    }

    @Test func environmentOverridesAreTheREADMEs() throws {
        let readme = try #require(readFile("README.md"), "cannot read README.md")
        let start = try #require(readme.range(of: "Environment variables override single keys:"))
        let paragraph = readme[start.upperBound...].prefix { $0 != "." }
        let documented = paragraph.split(separator: "`").filter { $0.hasPrefix("WSGATE_") }.map(String.init)
        #expect(documented.count == 6)
        #expect(ConfigLoader.environmentOverrides.map(\.variable) == documented)
        #expect(ConfigLoader.environmentOverrides.map(\.path) == ["listen.port", "admin.port", "log.level", "log.format", "workers", "cluster.instance_id"])
    }

    /// Each variable sets the same field, from the same text, as its key in the file.
    @Test func everyEnvironmentOverrideActsLikeItsKey() throws {
        let routes = "routes:\n  - {path: /a, upstream: builtin:echo}\n"
        let samples = ["listen.port": "1234", "admin.port": "4321", "log.level": "debug", "log.format": "text", "workers": "3", "cluster.instance_id": "pod-7"]
        for (variable, path) in ConfigLoader.environmentOverrides {
            let text = try #require(samples[path], "no sample value for \(path)")
            let parts = path.split(separator: ".")
            let line = parts.count == 1 ? "\(parts[0]): \(text)\n" : "\(parts[0]): {\(parts[1]): \(text)}\n"
            let fromFile = try ConfigLoader.load(yaml: line + routes)
            let fromEnvironment = try ConfigLoader.load(yaml: routes, environment: [variable: text])
            #expect(fromFile == fromEnvironment, "\(variable) vs \(path)")
            #expect(fromEnvironment != GatewayConfig.defaultsForTest(routes: fromFile.routes), "\(variable) changed nothing")
            #expect(problems(routes, env: [variable: "[nope]"]).count == 1)
            #expect(problems(routes, env: [variable: "[nope]"]).first?.hasPrefix("\(variable): invalid ") == true)
        }
    }

    @Test func environmentProblemsKeepTheirWording() {
        let routes = "routes:\n  - {path: /a, upstream: builtin:echo}\n"
        let env = ["WSGATE_LISTEN_PORT": "70000", "WSGATE_ADMIN_PORT": "-1", "WSGATE_LOG_LEVEL": "LOUD", "WSGATE_LOG_FORMAT": "Xml"]
        #expect(problems(routes, env: env) == [
            "WSGATE_LISTEN_PORT: invalid port \"70000\"",
            "WSGATE_ADMIN_PORT: invalid port \"-1\"",
            "WSGATE_LOG_LEVEL: invalid value \"LOUD\" (expected trace | debug | info | notice | warning | error)",
            "WSGATE_LOG_FORMAT: invalid value \"Xml\" (expected json | text)",
        ])
        // Environment values are matched in any case, file values are not.
        #expect(problems(routes, env: ["WSGATE_LOG_FORMAT": "TEXT"]).isEmpty)
        #expect(problems("log: {format: TEXT}\n" + routes) == ["log.format: invalid value \"TEXT\" (expected json | text)"])
    }

    @Test func routeSettingsDecode() throws {
        let yaml = """
            routes:
              - path: /api
                upstream: https://127.0.0.1:9002/messages
                http: {method: put, connect_url: "http://a/c", disconnect_url: "https://b/d", on_error: reply}
                tls: {server_name: Chat.Internal, insecure_skip_verify: true}
            """
        let route = try #require(try ConfigLoader.load(yaml: yaml).routes.first)
        #expect(route.http.method == "PUT")
        #expect(route.http.connectURL == "http://a/c")
        #expect(route.http.disconnectURL == "https://b/d")
        #expect(route.http.onError == .reply)
        #expect(route.tls == Route.UpstreamTLS(caFile: nil, serverName: "chat.internal", insecureSkipVerify: true))
    }

    @Test func httpVersionDecodesAndH2cNeedsCleartext() throws {
        func version(_ http: String, _ url: String = "http://127.0.0.1:9002/m") throws -> Route.HTTPVersion? {
            try ConfigLoader.load(yaml: "routes:\n  - {path: /a, upstream: \"\(url)\", http: \(http)}\n").routes.first?.http.version
        }
        #expect(try version("{}") == .auto)
        #expect(try version("{version: http1}") == .http1)
        #expect(try version("{version: h2c}") == .h2c)
        #expect(problems("routes:\n  - {path: /a, upstream: \"http://x/y\", http: {version: h2}}\n") == [
            "routes[0].http.version: invalid value \"h2\" (expected auto | http1 | h2c)"
        ])
        #expect(problems("routes:\n  - {path: /a, upstream: \"https://x/y\", http: {version: h2c}}\n") == [
            "routes[0].http.version: h2c is HTTP/2 without TLS; an https:// upstream gets HTTP/2 from the TLS handshake with `auto`"
        ])
    }

    @Test func tableKeysKeepTheirHintsAndPaths() {
        let yaml = """
            listen: {prot: 1}
            admin: {hots: x}
            timeouts: {http_request_m: 5}
            shutdown: {close_code: "1001", drain_timeout_ms: 3600001}
            log: {levle: debug}
            routes:
              - {path: /a, upstream: http://x/y, http: {methd: POST}, tls: {ca_fil: x}}
            """
        #expect(problems(yaml) == [
            "listen.prot: unknown key (did you mean port?)",
            "admin.hots: unknown key (did you mean host?)",
            "timeouts.http_request_m: unknown key (did you mean http_request_ms?)",
            "shutdown.drain_timeout_ms: 3600001 is out of range 0...3600000",
            "shutdown.close_code: expected an integer, found \"1001\"",
            "log.levle: unknown key (did you mean level?)",
            "routes[0].http.methd: unknown key (did you mean method?)",
            "routes[0].tls.ca_fil: unknown key (did you mean ca_file?)",
            "routes[0].tls: only applies to wss:// and https:// upstreams",
        ])
    }

    @Test func shippedConfigsAreValid() throws {
        for path in ["config/wsgate.yaml", "config/examples/production.yaml"] {
            let text = try #require(readFile(path), "cannot read \(path)")
            let c = try ConfigLoader.load(yaml: text)
            #expect(!c.routes.isEmpty)
        }
        let shipped = try ConfigLoader.load(yaml: readFile("config/wsgate.yaml")!)
        #expect(shipped.listen.port == 8080)
        #expect(shipped.routes.contains { $0.path == "/echo" && $0.upstream == .echo })
    }
}

extension GatewayConfig {
    /// The defaults, with the given routes.
    static func defaultsForTest(routes: [Route]) -> GatewayConfig {
        var config = GatewayConfig()
        config.routes = routes
        return config
    }
}

/// Reads a file relative to the package root (tests run from there).
func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        out += buf[..<n]
        if n < buf.count { break }
    }
    return String(decoding: out, as: UTF8.self)
}

#if canImport(Glibc)
import Glibc
#endif
