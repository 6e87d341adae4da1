import WSGateProtocol
import Yams

/// One problem found in a config file, with the key path it is about
/// (`routes[1].upstream`, `limits.max_conections`).
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var message: String

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
}

/// Every problem found while loading a config; thrown so the caller can print
/// them all at once rather than making the user fix one typo per run.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var problems: [ConfigProblem]

    public init(problems: [ConfigProblem]) {
        self.problems = problems
    }

    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Decodes the YAML config strictly.
///
/// The walk is over Yams' node tree rather than `Codable`, because `Codable`
/// silently ignores unknown keys and stops at the first error; here every
/// unknown key and every bad value is collected with its path.
public enum ConfigLoader {
    /// The environment variables that override single keys.
    public static let environmentOverrides: [(variable: String, path: String)] = [
        ("WSGATE_LISTEN_PORT", "listen.port"),
        ("WSGATE_ADMIN_PORT", "admin.port"),
        ("WSGATE_LOG_LEVEL", "log.level"),
        ("WSGATE_LOG_FORMAT", "log.format"),
    ]

    public static func load(yaml: String, environment: [String: String] = [:]) throws(ConfigError) -> GatewayConfig {
        var reader = Reader()
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigError(problems: [ConfigProblem(path: "", message: "invalid YAML: \(error)")])
        }
        var config = GatewayConfig()
        if let root {
            reader.decode(root: root, into: &config)
        } else {
            reader.problem("routes", "required key is missing")
        }
        reader.applyEnvironment(environment, to: &config)
        reader.validate(&config)
        if !reader.problems.isEmpty { throw ConfigError(problems: reader.problems) }
        return config
    }
}

private struct Reader {
    var problems: [ConfigProblem] = []

    mutating func problem(_ path: String, _ message: String) {
        problems.append(ConfigProblem(path: path, message: message))
    }

    // MARK: Structure

    /// Returns the mapping's entries keyed by name, reporting unknown and
    /// duplicate keys.
    mutating func mapping(_ node: Node, _ path: String, allowed: [String]) -> [String: Node]? {
        guard case .mapping(let mapping) = node else {
            problem(path, "expected a mapping, found \(kind(node))")
            return nil
        }
        var result: [String: Node] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else {
                problem(path, "keys must be strings")
                continue
            }
            let childPath = path.isEmpty ? key.string : "\(path).\(key.string)"
            if !allowed.contains(key.string) {
                var message = "unknown key"
                if let guess = allowed.first(where: { editDistance($0, key.string) <= 2 }) {
                    message += " (did you mean \(guess)?)"
                }
                problem(childPath, message)
                continue
            }
            if result[key.string] != nil {
                problem(childPath, "duplicate key")
                continue
            }
            result[key.string] = value
        }
        return result
    }

    func kind(_ node: Node) -> String {
        switch node {
        case .scalar(let s): return s.tag == .implicit && s.string.isEmpty ? "an empty value" : "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            problem(path, "expected a string, found \(kind(node))")
            return nil
        }
        return scalar.string
    }

    mutating func int(_ node: Node, _ path: String, in range: ClosedRange<Int>) -> Int? {
        guard case .scalar(let scalar) = node, scalar.style == .plain, let value = Int(scalar.string) else {
            problem(path, "expected an integer, found \(describe(node))")
            return nil
        }
        guard range.contains(value) else {
            problem(path, "\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return value
    }

    mutating func enumValue<E: RawRepresentable & CaseIterable>(_ node: Node, _ path: String, _: E.Type) -> E?
    where E.RawValue == String {
        guard let text = string(node, path) else { return nil }
        guard let value = E(rawValue: text) else {
            let options = E.allCases.map(\.rawValue).joined(separator: " | ")
            problem(path, "invalid value \(JSONText.quoted(text)) (expected \(options))")
            return nil
        }
        return value
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        guard case .scalar(let scalar) = node, scalar.style == .plain, ["true", "false"].contains(scalar.string) else {
            problem(path, "expected true or false, found \(describe(node))")
            return nil
        }
        return scalar.string == "true"
    }

    mutating func stringList(_ node: Node, _ path: String) -> [String]? {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list, found \(kind(node))")
            return nil
        }
        var result: [String] = []
        for (index, item) in sequence.enumerated() {
            if let s = string(item, "\(path)[\(index)]") { result.append(s) }
        }
        return result
    }

    func describe(_ node: Node) -> String {
        if case .scalar(let s) = node { return JSONText.quoted(s.string) }
        return kind(node)
    }

    // MARK: Sections

    mutating func decode(root: Node, into config: inout GatewayConfig) {
        let sections = ["listen", "admin", "limits", "timeouts", "shutdown", "log", "routes", "close_codes"]
        guard let top = mapping(root, "", allowed: sections) else { return }
        if let node = top["listen"] { decodeListen(node, &config.listen) }
        if let node = top["admin"], let m = mapping(node, "admin", allowed: ["host", "port"]) {
            if let n = m["host"], let v = string(n, "admin.host") { config.admin.host = v }
            if let n = m["port"], let v = int(n, "admin.port", in: 0...65535) { config.admin.port = v }
        }
        if let node = top["limits"] {
            let keys = ["max_connections", "max_message_bytes", "handshake_timeout_ms", "idle_timeout_ms"]
            if let m = mapping(node, "limits", allowed: keys) {
                if let n = m["max_connections"], let v = int(n, "limits.max_connections", in: 1...10_000_000) {
                    config.limits.maxConnections = v
                }
                if let n = m["max_message_bytes"], let v = int(n, "limits.max_message_bytes", in: 1...(1 << 30)) {
                    config.limits.maxMessageBytes = v
                }
                if let n = m["handshake_timeout_ms"], let v = int(n, "limits.handshake_timeout_ms", in: 1...3_600_000) {
                    config.limits.handshakeTimeoutMs = v
                }
                if let n = m["idle_timeout_ms"], let v = int(n, "limits.idle_timeout_ms", in: 0...86_400_000) {
                    config.limits.idleTimeoutMs = v
                }
            }
        }
        if let node = top["timeouts"] {
            let keys = ["upstream_connect_ms", "upstream_handshake_ms", "http_request_ms", "close_handshake_ms"]
            if let m = mapping(node, "timeouts", allowed: keys) {
                let range = 1...3_600_000
                if let n = m["upstream_connect_ms"], let v = int(n, "timeouts.upstream_connect_ms", in: range) {
                    config.timeouts.upstreamConnectMs = v
                }
                if let n = m["upstream_handshake_ms"], let v = int(n, "timeouts.upstream_handshake_ms", in: range) {
                    config.timeouts.upstreamHandshakeMs = v
                }
                if let n = m["http_request_ms"], let v = int(n, "timeouts.http_request_ms", in: range) {
                    config.timeouts.httpRequestMs = v
                }
                if let n = m["close_handshake_ms"], let v = int(n, "timeouts.close_handshake_ms", in: range) {
                    config.timeouts.closeHandshakeMs = v
                }
            }
        }
        if let node = top["shutdown"], let m = mapping(node, "shutdown", allowed: ["drain_timeout_ms", "close_code"]) {
            if let n = m["drain_timeout_ms"], let v = int(n, "shutdown.drain_timeout_ms", in: 0...3_600_000) {
                config.shutdown.drainTimeoutMs = v
            }
            if let n = m["close_code"], let v = int(n, "shutdown.close_code", in: 1000...4999) {
                if CloseCode.shutdownChoices.contains(UInt16(v)) {
                    config.shutdown.closeCode = UInt16(v)
                } else {
                    problem("shutdown.close_code", "must be 1001 (Going Away) or 1012 (Service Restart), found \(v)")
                }
            }
        }
        if let node = top["log"], let m = mapping(node, "log", allowed: ["format", "level"]) {
            if let n = m["format"], let v = enumValue(n, "log.format", GatewayConfig.LogFormat.self) {
                config.log.format = v
            }
            if let n = m["level"], let v = enumValue(n, "log.level", GatewayConfig.LogLevel.self) {
                config.log.level = v
            }
        }
        if let node = top["routes"] {
            decodeRoutes(node, &config.routes)
        } else {
            problem("routes", "required key is missing")
        }
        if let node = top["close_codes"] { decodeCloseCodes(node, &config.closeCodes) }
    }

    mutating func decodeListen(_ node: Node, _ listen: inout GatewayConfig.Listen) {
        guard let m = mapping(node, "listen", allowed: ["host", "port", "tls"]) else { return }
        if let n = m["host"], let v = string(n, "listen.host") { listen.host = v }
        if let n = m["port"], let v = int(n, "listen.port", in: 0...65535) { listen.port = v }
        if let n = m["tls"], let t = mapping(n, "listen.tls", allowed: ["certificate", "private_key"]) {
            let cert = t["certificate"].flatMap { string($0, "listen.tls.certificate") }
            let key = t["private_key"].flatMap { string($0, "listen.tls.private_key") }
            if t["certificate"] == nil { problem("listen.tls.certificate", "required key is missing") }
            if t["private_key"] == nil { problem("listen.tls.private_key", "required key is missing") }
            if let cert, let key {
                var ok = true
                if let message = PEMFiles.checkCertificates(cert) {
                    problem("listen.tls.certificate", message)
                    ok = false
                }
                if let message = PEMFiles.checkPrivateKey(key) {
                    problem("listen.tls.private_key", message)
                    ok = false
                }
                if ok { listen.tls = .init(certificate: cert, privateKey: key) }
            }
        }
    }

    mutating func decodeRoutes(_ node: Node, _ routes: inout [Route]) {
        guard case .sequence(let sequence) = node else {
            problem("routes", "expected a list, found \(kind(node))")
            return
        }
        if sequence.isEmpty { problem("routes", "at least one route is required") }
        var seenPaths: Set<String> = []
        for (index, item) in sequence.enumerated() {
            let base = "routes[\(index)]"
            let keys = ["path", "upstream", "forward_headers", "origins", "http", "tls"]
            guard let m = mapping(item, base, allowed: keys) else { continue }
            var path: String? = nil
            if let n = m["path"], let p = string(n, "\(base).path") {
                if let message = RoutePattern.validate(p) {
                    problem("\(base).path", message)
                } else if !seenPaths.insert(p).inserted {
                    problem("\(base).path", "duplicate path \(JSONText.quoted(p)) (the later route could never match)")
                } else {
                    path = p
                }
            } else if m["path"] == nil {
                problem("\(base).path", "required key is missing")
            }
            var upstream: UpstreamTarget? = nil
            if let n = m["upstream"], let u = string(n, "\(base).upstream") {
                switch UpstreamTarget.parse(u) {
                case .success(let target): upstream = target
                case .failure(let error): problem("\(base).upstream", error.message)
                }
            } else if m["upstream"] == nil {
                problem("\(base).upstream", "required key is missing")
            }
            var forward: [String] = []
            if let n = m["forward_headers"], let list = stringList(n, "\(base).forward_headers") {
                for (i, name) in list.enumerated() {
                    let lower = name.lowercased()
                    if !HeaderRules.isToken(lower) {
                        problem("\(base).forward_headers[\(i)]", "invalid header name \(JSONText.quoted(name))")
                    } else if HeaderRules.neverForwarded.contains(lower) {
                        problem("\(base).forward_headers[\(i)]", "\(JSONText.quoted(name)) is set by the gateway itself and cannot be forwarded")
                    } else {
                        forward.append(lower)
                    }
                }
            }
            var origins: [String]? = nil
            if let n = m["origins"], let list = stringList(n, "\(base).origins") {
                origins = list
            }
            var http = Route.HTTPSettings()
            if let n = m["http"] {
                let keys = ["method", "connect_url", "disconnect_url", "on_error"]
                if let h = mapping(n, "\(base).http", allowed: keys) {
                    if let n = h["method"], let v = string(n, "\(base).http.method") {
                        let upper = v.uppercased()
                        if ["POST", "PUT", "PATCH"].contains(upper) { http.method = upper } else {
                            problem("\(base).http.method", "unsupported method \(JSONText.quoted(v)) (expected POST | PUT | PATCH)")
                        }
                    }
                    for (key, assign) in [("connect_url", 0), ("disconnect_url", 1)] {
                        guard let n = h[key], let v = string(n, "\(base).http.\(key)") else { continue }
                        switch URLParts.parse(v) {
                        case .success(let url) where url.scheme == "http" || url.scheme == "https":
                            if assign == 0 { http.connectURL = v } else { http.disconnectURL = v }
                        case .success(let url):
                            problem("\(base).http.\(key)", "expected an http:// or https:// URL, found scheme \(JSONText.quoted(url.scheme))")
                        case .failure(let e):
                            problem("\(base).http.\(key)", e.message)
                        }
                    }
                    if let n = h["on_error"], let v = enumValue(n, "\(base).http.on_error", Route.HTTPOnError.self) {
                        http.onError = v
                    }
                }
                if let upstream, case .http = upstream {} else if upstream != nil {
                    problem("\(base).http", "only applies to http:// and https:// upstreams")
                }
            }
            var tls: Route.UpstreamTLS? = nil
            if let n = m["tls"], let t = mapping(n, "\(base).tls", allowed: ["ca_file", "server_name", "insecure_skip_verify"]) {
                var settings = Route.UpstreamTLS()
                if let n = t["ca_file"], let v = string(n, "\(base).tls.ca_file") {
                    if let message = PEMFiles.checkCertificates(v) {
                        problem("\(base).tls.ca_file", message)
                    } else {
                        settings.caFile = v
                    }
                }
                if let n = t["server_name"], let v = string(n, "\(base).tls.server_name") {
                    if v.isEmpty || v.contains(where: { $0 == " " || $0 == "/" || $0 == ":" }) {
                        problem("\(base).tls.server_name", "invalid server name \(JSONText.quoted(v))")
                    } else {
                        settings.serverName = v.lowercased()
                    }
                }
                if let n = t["insecure_skip_verify"], let v = bool(n, "\(base).tls.insecure_skip_verify") {
                    settings.insecureSkipVerify = v
                }
                let isTLS: Bool
                switch upstream {
                case .webSocket(let url)?, .http(let url)?: isTLS = url.isTLS
                default: isTLS = false
                }
                if upstream != nil && !isTLS {
                    problem("\(base).tls", "only applies to wss:// and https:// upstreams")
                }
                tls = settings
            }
            if let path, let upstream {
                var route = Route(path: path, upstream: upstream)
                route.forwardHeaders = forward
                route.origins = origins
                route.http = http
                route.tls = tls
                routes.append(route)
            }
        }
    }

    mutating func decodeCloseCodes(_ node: Node, _ overrides: inout [CloseCause: UInt16]) {
        guard case .mapping(let mapping) = node else {
            problem("close_codes", "expected a mapping, found \(kind(node))")
            return
        }
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else {
                problem("close_codes", "keys must be strings")
                continue
            }
            let path = "close_codes.\(key.string)"
            guard let cause = CloseCause(rawValue: key.string) else {
                problem(path, "unknown cause")
                continue
            }
            guard let code = int(value, path, in: 0...65535) else { continue }
            if !cause.isOverridable {
                problem(path, "cannot be overridden: the code is the one the peer sent")
            } else if !CloseCode.isAllowedOverride(code) {
                problem(path, "\(code) is not allowed (use 1000-1003, 1007-1014, 3000-4999, or 1006 to drop the TCP connection)")
            } else {
                overrides[cause] = UInt16(code)
            }
        }
    }

    // MARK: Environment and cross-field checks

    mutating func applyEnvironment(_ environment: [String: String], to config: inout GatewayConfig) {
        if let v = environment["WSGATE_LISTEN_PORT"] {
            if let p = Int(v), (0...65535).contains(p) { config.listen.port = p } else {
                problem("WSGATE_LISTEN_PORT", "invalid port \(JSONText.quoted(v))")
            }
        }
        if let v = environment["WSGATE_ADMIN_PORT"] {
            if let p = Int(v), (0...65535).contains(p) { config.admin.port = p } else {
                problem("WSGATE_ADMIN_PORT", "invalid port \(JSONText.quoted(v))")
            }
        }
        if let v = environment["WSGATE_LOG_LEVEL"] {
            if let l = GatewayConfig.LogLevel(rawValue: v.lowercased()) { config.log.level = l } else {
                problem("WSGATE_LOG_LEVEL", "invalid value \(JSONText.quoted(v)) (expected trace | debug | info | notice | warning | error)")
            }
        }
        if let v = environment["WSGATE_LOG_FORMAT"] {
            if let f = GatewayConfig.LogFormat(rawValue: v.lowercased()) { config.log.format = f } else {
                problem("WSGATE_LOG_FORMAT", "invalid value \(JSONText.quoted(v)) (expected json | text)")
            }
        }
    }

    mutating func validate(_ config: inout GatewayConfig) {
        if config.listen.port != 0, config.listen.port == config.admin.port,
            config.listen.host == config.admin.host || config.listen.host == "0.0.0.0" || config.admin.host == "0.0.0.0"
        {
            problem("admin.port", "must differ from listen.port (\(config.listen.port))")
        }
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
private func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.utf8), b = Array(b.utf8)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
