import WSGateProtocol
import Yams

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
///
/// Which keys exist, what each accepts and where its value goes is data, the
/// tables in `ConfigTables`; the `Reader` only walks mappings by them.
public enum ConfigLoader {
    /// The environment variables that override single keys, with the key each
    /// one overrides. Read off the key table, where such a key names its
    /// variable, so a variable cannot drift from its key.
    public static let environmentOverrides: [(variable: String, path: String)] =
        ConfigTables.environmentOverrides.map { ($0.variable, $0.path) }

    public static func load(yaml: String, environment: [String: String] = [:]) throws(ConfigError) -> GatewayConfig {
        var reader = Reader()
        let root: Node?
        if let problem = YAMLBounds.aliasUsedAsKey(yaml) {
            throw ConfigError(problems: [ConfigProblem(path: "", message: "invalid YAML: \(problem)")])
        }
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw ConfigError(problems: [ConfigProblem(path: "", message: "invalid YAML: \(error)")])
        }
        if let root, !YAMLBounds.fits(root) {
            throw ConfigError(problems: [ConfigProblem(
                path: "", message: "invalid YAML: more than \(YAMLBounds.maxNodes) values once its aliases are expanded")])
        }
        var config = GatewayConfig()
        if let root {
            reader.decode(root, at: "", by: ConfigTables.gateway, into: &config)
        } else {
            // An empty file is an empty mapping: all defaults, and the required keys missing.
            reader.decode([:], at: "", by: ConfigTables.gateway, into: &config)
        }
        reader.applyEnvironment(environment, to: &config)
        reader.validate(&config)
        if !reader.problems.isEmpty { throw ConfigError(problems: reader.problems) }
        return config
    }
}

// MARK: - The key tables

/// Every key of the config file: one table per mapping, in the order the
/// keys' problems are reported.
///
/// A row names its key once. The mapping's allowed keys (and so the "did you
/// mean" hints, which offer the first close name), the problem path, the
/// parser, the field the value goes to and the environment variable, if the
/// key has one, all come from that row. Keys that need more than a scalar
/// parser are rows too, with a call to their own code.
private enum ConfigTables {
    static let gateway: [ConfigKey<GatewayConfig>] = [
        .section("listen", [
            .scalar("host", .string, \.listen.host),
            .scalar("port", .port, \.listen.port, environment: "WSGATE_LISTEN_PORT"),
            .custom("tls") { reader, node, path, config in reader.decodeServerTLS(node, path, &config.listen.tls) },
        ]),
        .section("admin", [
            .scalar("host", .string, \.admin.host),
            .scalar("port", .port, \.admin.port, environment: "WSGATE_ADMIN_PORT"),
        ]),
        .section("limits", [
            .scalar("max_connections", .int(1...10_000_000), \.limits.maxConnections),
            .scalar("max_message_bytes", .int(1...(1 << 30)), \.limits.maxMessageBytes),
            .scalar("handshake_timeout_ms", .int(1...3_600_000), \.limits.handshakeTimeoutMs),
            .scalar("idle_timeout_ms", .int(0...86_400_000), \.limits.idleTimeoutMs),
            .scalar("max_header_bytes", .int(1_024...1_048_576), \.limits.maxHeaderBytes),
            .scalar("max_pending_handshakes", .int(1...10_000_000), \.limits.maxPendingHandshakes),
            .scalar("max_connections_per_ip", .int(0...10_000_000), \.limits.maxConnectionsPerIP),
        ]),
        .section("timeouts", [
            .scalar("upstream_connect_ms", .int(1...3_600_000), \.timeouts.upstreamConnectMs),
            .scalar("upstream_handshake_ms", .int(1...3_600_000), \.timeouts.upstreamHandshakeMs),
            .scalar("http_request_ms", .int(1...3_600_000), \.timeouts.httpRequestMs),
            .scalar("close_handshake_ms", .int(1...3_600_000), \.timeouts.closeHandshakeMs),
        ]),
        .section("shutdown", [
            .scalar("drain_timeout_ms", .int(0...3_600_000), \.shutdown.drainTimeoutMs),
            .scalar("spread_ms", .int(0...3_600_000), \.shutdown.spreadMs),
            .scalar("close_code", .shutdownCloseCode, \.shutdown.closeCode),
        ]),
        // `level` first: the environment variables are applied, and listed in
        // `environmentOverrides`, in table order, and the README has
        // WSGATE_LOG_LEVEL before WSGATE_LOG_FORMAT.
        .section("log", [
            .scalar("level", .oneOf, \.log.level, environment: "WSGATE_LOG_LEVEL"),
            .scalar("format", .oneOf, \.log.format, environment: "WSGATE_LOG_FORMAT"),
            .scalar("buffer_bytes", .int(65_536...(1 << 30)), \.log.bufferBytes),
            .custom("redact_query") { reader, node, path, config in reader.decodeRedactQuery(node, path, &config.log.redactQuery) },
        ]),
        .scalar("workers", .workers, \.workers, environment: "WSGATE_WORKERS"),
        .custom("routes", required: true) { reader, node, path, config in reader.decodeRoutes(node, path, &config.routes) },
        .custom("close_codes") { reader, node, path, config in reader.decodeCloseCodes(node, path, &config.closeCodes) },
        .custom("trusted_proxies") { reader, node, path, config in reader.decodeTrustedProxies(node, path, &config.trustedProxies) },
        .custom("control") { reader, node, path, config in
            var control = GatewayConfig.Control()
            if reader.decode(node, at: path, by: ConfigTables.control, into: &control) { config.control = control }
        },
        .section("cluster", [
            .scalar("instance_id", .instanceID, \.cluster.instanceID, environment: "WSGATE_INSTANCE_ID"),
            .custom("peers") { reader, node, path, config in reader.decodePeers(node, path, &config.cluster) },
            .scalar("refresh_ms", .int(100...3_600_000), \.cluster.refreshMs),
        ]),
        .custom("resolver") { reader, node, path, config in
            guard let list = reader.indexedStringList(node, path) else { return }
            for (i, text) in list {
                if let address = ResolverAddress(text) {
                    config.resolver.append(address)
                } else {
                    reader.problem("\(path)[\(i)]", "expected an IP address with an optional port (10.0.0.10:53), found \(JSONText.quoted(text))")
                }
            }
        },
    ]

    /// One entry of `routes`. Its keys fill a `RouteDraft`, because they
    /// depend on each other: `http` and `tls` on the upstream's scheme, `path`
    /// on the routes before it.
    static let route: [ConfigKey<RouteDraft>] = [
        .custom("path", required: true) { reader, node, path, draft in reader.decodeRoutePath(node, path, &draft) },
        .scalar("upstream", .upstream, \.upstream),
        .custom("upstreams") { reader, node, path, draft in reader.decodeUpstreams(node, path, &draft) },
        .scalar("balance", .oneOf, \.pool.balance),
        .custom("hash_key") { reader, node, path, draft in
            guard let text = reader.value(node, path, as: .string) else { return }
            if let key = PoolSettings.HashKey.parse(text) {
                draft.pool.hashKey = key
            } else {
                reader.problem(path, "invalid hash key \(JSONText.quoted(text)) (expected header:NAME | query:NAME | cookie:NAME | client_ip)")
            }
        },
        .scalar("retries", .int(0...100), \.pool.retries),
        .custom("health") { reader, node, path, draft in
            var health = PoolSettings.Health()
            if reader.decode(node, at: path, by: ConfigTables.routeHealth, into: &health) { draft.pool.health = health }
        },
        .custom("eject") { reader, node, path, draft in
            reader.decode(node, at: path, by: ConfigTables.routeEject, into: &draft.pool.eject)
        },
        .scalar("discovery", .oneOf, \.pool.discovery),
        .scalar("dns_refresh_ms", .int(100...3_600_000), \.pool.dnsRefreshMs),
        .scalar("close_profile", .oneOf, \.closeProfile),
        .custom("close_codes") { reader, node, path, draft in reader.decodeCloseCodes(node, path, &draft.closeCodes) },
        .custom("auth") { reader, node, path, draft in reader.decodeAuth(node, path, &draft) },
        .custom("rate_limit") { reader, node, path, draft in
            var limit = RateLimit()
            guard reader.decode(node, at: path, by: ConfigTables.rateLimit, into: &limit) else { return }
            if limit.messagesPerSecond == nil && limit.bytesPerSecond == nil {
                reader.problem(path, "needs messages_per_second or bytes_per_second")
            } else if limit.burstMessages != nil && limit.messagesPerSecond == nil {
                reader.problem(childPath(path, "burst_messages"), "only applies with messages_per_second")
            } else {
                draft.rateLimit = limit
            }
        },
        .custom("forward_headers") { reader, node, path, draft in
            reader.decodeForwardHeaders(node, path, &draft.forwardHeaders)
        },
        .custom("origins") { reader, node, path, draft in
            if let list = reader.stringList(node, path) { draft.origins = list }
        },
        .custom("http") { reader, node, path, draft in reader.decodeRouteHTTP(node, path, &draft) },
        .custom("tls") { reader, node, path, draft in reader.decodeRouteTLS(node, path, &draft) },
    ]

    static let member: [ConfigKey<MemberDraft>] = [
        .scalar("url", .upstream, \.url, required: true),
        .scalar("weight", .int(1...1000), \.weight),
    ]

    static let routeHTTP: [ConfigKey<Route.HTTPSettings>] = [
        .scalar("method", .httpMethod, \.method),
        .scalar("connect_url", .httpURL, \.connectURL),
        .scalar("disconnect_url", .httpURL, \.disconnectURL),
        .scalar("on_error", .oneOf, \.onError),
        .scalar("version", .oneOf, \.version),
    ]

    static let control: [ConfigKey<GatewayConfig.Control>] = [
        .scalar("host", .string, \.host),
        .scalar("port", .port, \.port),
        .scalar("token_env", .string, \.tokenEnv),
    ]

    static let rateLimit: [ConfigKey<RateLimit>] = [
        .scalar("messages_per_second", .int(1...10_000_000), \.messagesPerSecond),
        .scalar("bytes_per_second", .int(1...(1 << 40)), \.bytesPerSecond),
        .scalar("burst_messages", .int(1...10_000_000), \.burstMessages),
        .scalar("action", .oneOf, \.action),
    ]

    static let routeHealth: [ConfigKey<PoolSettings.Health>] = [
        .scalar("path", .healthPath, \.path),
        .scalar("interval_ms", .int(100...3_600_000), \.intervalMs),
        .scalar("timeout_ms", .int(1...3_600_000), \.timeoutMs),
        .scalar("unhealthy_after", .int(1...100), \.unhealthyAfter),
        .scalar("healthy_after", .int(1...100), \.healthyAfter),
    ]

    static let routeEject: [ConfigKey<PoolSettings.Eject>] = [
        .scalar("consecutive_failures", .int(1...1000), \.consecutiveFailures),
        .scalar("base_ms", .int(1...3_600_000), \.baseMs),
        .scalar("max_ms", .int(1...86_400_000), \.maxMs),
    ]

    static let routeTLS: [ConfigKey<Route.UpstreamTLS>] = [
        .scalar("ca_file", .certificateFile, \.caFile),
        .scalar("server_name", .serverName, \.serverName),
        .scalar("insecure_skip_verify", .bool, \.insecureSkipVerify),
    ]

    /// The rows of `gateway` that name an environment variable, in table order.
    static let environmentOverrides = ConfigKey.environmentOverrides(in: gateway)
}

/// One `upstreams:` entry while its keys are read.
private struct MemberDraft {
    var url: UpstreamTarget? = nil
    var weight = 1
}

/// A route while its keys are read: what has been accepted so far.
private struct RouteDraft {
    var path: String? = nil
    var upstream: UpstreamTarget? = nil
    var forwardHeaders: [String] = []
    var origins: [String]? = nil
    var http = Route.HTTPSettings()
    var tls: Route.UpstreamTLS? = nil
    /// `upstreams:` members (empty for a single `upstream:`) and the pool keys.
    var pool = PoolSettings(members: [])
    var closeProfile = CloseProfile.iana
    var rateLimit: RateLimit? = nil
    var auth: AuthSettings? = nil
    var closeCodes: [CloseCause: UInt16] = [:]
    var sawUpstream = false
    var sawUpstreams = false

    /// The route, if both its required keys were accepted.
    var route: Route? {
        guard let path, let upstream else { return nil }
        var route = Route(path: path, upstream: upstream)
        route.forwardHeaders = forwardHeaders
        route.origins = origins
        route.http = http
        route.tls = tls
        var pool = self.pool
        if pool.members.isEmpty { pool.members = route.pool.members }
        route.pool = pool
        route.closeProfile = closeProfile
        route.closeCodes = closeCodes
        route.rateLimit = rateLimit
        route.auth = auth
        return route
    }
}

// MARK: - Table rows

/// One key of a mapping, as a row of its table: the key's name, whether it
/// must be present, and how its value is read into `Root`.
private struct ConfigKey<Root>: Sendable {
    /// Reads the key's value, found at the given path, into the root;
    /// problems go to the reader.
    typealias Decode = @Sendable (inout Reader, Node, String, inout Root) -> Void

    enum Content: Sendable {
        /// A scalar, parsed by a `ScalarKind` and stored at a key path.
        case scalar(ScalarField<Root>)
        /// A mapping whose keys fill the same root (`listen`, `limits`, …).
        case section([ConfigKey<Root>])
        /// A value with code of its own (`routes`, `close_codes`, `listen.tls`).
        case custom(Decode)
    }

    let name: String
    /// Absent, it is reported missing, in its row's place among the problems.
    let isRequired: Bool
    let content: Content

    /// A scalar key stored at `field`; `environment` names the variable that
    /// overrides it (only read for the top-level table).
    static func scalar<Value>(
        _ name: String, _ kind: ScalarKind<Value>, _ field: WritableKeyPath<Root, Value> & Sendable,
        required: Bool = false, environment: String? = nil
    ) -> ConfigKey {
        scalar(name, kind, required: required, variable: environment) { root, value in root[keyPath: field] = value }
    }

    /// A scalar key stored in an optional field, which stays nil while the key is absent.
    static func scalar<Value>(
        _ name: String, _ kind: ScalarKind<Value>, _ field: WritableKeyPath<Root, Value?> & Sendable,
        required: Bool = false, environment: String? = nil
    ) -> ConfigKey {
        scalar(name, kind, required: required, variable: environment) { root, value in root[keyPath: field] = value }
    }

    private static func scalar<Value>(
        _ name: String, _ kind: ScalarKind<Value>, required: Bool, variable: String?,
        store: @escaping @Sendable (inout Root, Value) -> Void
    ) -> ConfigKey {
        let field = ScalarField<Root>(
            decode: { reader, node, path, root in
                if let value = reader.value(node, path, as: kind) { store(&root, value) }
            },
            variable: variable,
            override: { text, root in
                guard let value = kind.value(fromEnvironment: text) else { return kind.environmentMessage(text) }
                store(&root, value)
                return nil
            })
        return ConfigKey(name: name, isRequired: required, content: .scalar(field))
    }

    static func section(_ name: String, _ keys: [ConfigKey]) -> ConfigKey {
        ConfigKey(name: name, isRequired: false, content: .section(keys))
    }

    static func custom(_ name: String, required: Bool = false, _ decode: @escaping Decode) -> ConfigKey {
        ConfigKey(name: name, isRequired: required, content: .custom(decode))
    }

    /// The scalar rows under `keys` that name an environment variable, with
    /// their full key paths, depth first in table order.
    static func environmentOverrides(in keys: [ConfigKey], under path: String = "") -> [EnvironmentOverride<Root>] {
        keys.flatMap { key -> [EnvironmentOverride<Root>] in
            let keyPath = childPath(path, key.name)
            switch key.content {
            case .scalar(let field):
                guard let variable = field.variable else { return [] }
                return [EnvironmentOverride(variable: variable, path: keyPath, apply: field.override)]
            case .section(let children):
                return environmentOverrides(in: children, under: keyPath)
            case .custom:
                return []
            }
        }
    }
}

/// A scalar row's reading and storing, with the value's type erased so that
/// one table holds integers, enums and strings alike.
private struct ScalarField<Root>: Sendable {
    let decode: ConfigKey<Root>.Decode
    /// The environment variable that overrides the key, if any.
    let variable: String?
    /// Stores an environment value, or returns why it was refused.
    let override: @Sendable (String, inout Root) -> String?
}

/// An environment variable, the key path it overrides, and how it is stored.
private struct EnvironmentOverride<Root>: Sendable {
    let variable: String
    let path: String
    let apply: @Sendable (String, inout Root) -> String?
}

// MARK: - Scalar kinds

/// What a scalar's text parsed to.
private enum Parsed<Value> {
    case value(Value)
    /// Not of the kind at all; the file says "expected an integer, found …".
    case malformed
    /// Of the kind but not allowed; the message says why.
    case rejected(String)
}

/// What a scalar key accepts: its one parser, and how a refusal is worded.
///
/// The file and the environment both go through `parse`, so a value means the
/// same wherever it is set. Only the wording differs: an environment value
/// has no YAML node to describe, and is named by its variable.
private struct ScalarKind<Value>: Sendable {
    /// Named in "expected …, found …" when a YAML value is the wrong shape.
    let expected: String
    /// Integers and booleans must be plain scalars: a quoted `"10"` is text.
    let plainOnly: Bool
    let parse: @Sendable (String) -> Parsed<Value>
    /// An environment value as `parse` should see it.
    let environmentText: @Sendable (String) -> String
    /// The problem for a refused environment value, given the text as set.
    let environmentMessage: @Sendable (String) -> String

    /// This kind, then a further check or conversion of its value; refusals
    /// from the environment keep this kind's wording.
    func then<T>(_ refine: @escaping @Sendable (Value) -> Parsed<T>) -> ScalarKind<T> {
        ScalarKind<T>(
            expected: expected, plainOnly: plainOnly,
            parse: { text in
                switch self.parse(text) {
                case .value(let value): return refine(value)
                case .malformed: return .malformed
                case .rejected(let message): return .rejected(message)
                }
            },
            environmentText: environmentText, environmentMessage: environmentMessage)
    }

    /// An environment value, parsed as the same text in the file would be; nil if refused.
    func value(fromEnvironment text: String) -> Value? {
        if case .value(let value) = parse(environmentText(text)) { return value }
        return nil
    }
}

extension ScalarKind where Value == String {
    static var string: ScalarKind {
        ScalarKind(
            expected: "a string", plainOnly: false, parse: { .value($0) },
            environmentText: { $0 }, environmentMessage: { "invalid value \(JSONText.quoted($0))" })
    }
}

extension ScalarKind where Value == Int {
    /// An integer in `range`; `noun` names it when an environment value is refused.
    static func int(_ range: ClosedRange<Int>, noun: String = "integer") -> ScalarKind {
        ScalarKind(
            expected: "an integer", plainOnly: true,
            parse: { text in
                guard let value = Int(text) else { return .malformed }
                guard range.contains(value) else {
                    return .rejected("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
                }
                return .value(value)
            },
            environmentText: { $0 }, environmentMessage: { "invalid \(noun) \(JSONText.quoted($0))" })
    }

    /// A TCP port; 0 asks for a free one.
    static var port: ScalarKind { int(0...65535, noun: "port") }
}

extension ScalarKind where Value == Bool {
    static var bool: ScalarKind {
        ScalarKind(
            expected: "true or false", plainOnly: true,
            parse: { text in text == "true" ? .value(true) : text == "false" ? .value(false) : .malformed },
            environmentText: { $0 }, environmentMessage: { "expected true or false, found \(JSONText.quoted($0))" })
    }
}

extension ScalarKind where Value: RawRepresentable & CaseIterable & Sendable, Value.RawValue == String {
    /// One of an enum's raw values. The environment matches them in any case
    /// (`WSGATE_LOG_LEVEL=DEBUG`); the file does not.
    static var oneOf: ScalarKind {
        let options = Value.allCases.map(\.rawValue).joined(separator: " | ")
        let refusal: @Sendable (String) -> String = { "invalid value \(JSONText.quoted($0)) (expected \(options))" }
        return ScalarKind(
            expected: "a string", plainOnly: false,
            parse: { text in
                guard let value = Value(rawValue: text) else { return .rejected(refusal(text)) }
                return .value(value)
            },
            environmentText: { $0.lowercased() }, environmentMessage: refusal)
    }
}

// The kinds of single keys, each a general kind plus that key's own rule.

extension ScalarKind where Value == UInt16 {
    /// `shutdown.close_code`: a close code that says the server is going away.
    static var shutdownCloseCode: ScalarKind {
        ScalarKind<Int>.int(Int(CloseCode.normal)...4999).then { code in
            guard CloseCode.shutdownChoices.contains(UInt16(code)) else {
                return .rejected("must be 1001 (Going Away) or 1012 (Service Restart), found \(code)")
            }
            return .value(UInt16(code))
        }
    }
}

extension ScalarKind where Value == GatewayConfig.Workers {
    /// `workers`: `auto` or a count of event loops.
    static var workers: ScalarKind {
        ScalarKind(
            expected: "auto or an integer", plainOnly: true,
            parse: { text in
                if text == "auto" { return .value(.auto) }
                guard let n = Int(text) else { return .malformed }
                guard (1...GatewayConfig.Workers.maximum).contains(n) else {
                    return .rejected("\(n) is out of range 1...\(GatewayConfig.Workers.maximum)")
                }
                return .value(.count(n))
            },
            environmentText: { $0 }, environmentMessage: { "invalid workers \(JSONText.quoted($0)) (expected auto or a number)" })
    }
}

extension ScalarKind where Value == UpstreamTarget {
    static var upstream: ScalarKind {
        ScalarKind<String>.string.then { text in
            switch UpstreamTarget.parse(text) {
            case .success(let target): return .value(target)
            case .failure(let error): return .rejected(error.message)
            }
        }
    }
}

extension ScalarKind where Value == String {
    /// `http.method`: POST, PUT or PATCH in any case, stored upper-cased.
    static var httpMethod: ScalarKind {
        string.then { text in
            let upper = text.uppercased()
            guard ["POST", "PUT", "PATCH"].contains(upper) else {
                return .rejected("unsupported method \(JSONText.quoted(text)) (expected POST | PUT | PATCH)")
            }
            return .value(upper)
        }
    }

    /// An `http://` or `https://` URL, stored as written.
    static var httpURL: ScalarKind {
        string.then { text in
            switch URLParts.parse(text) {
            case .success(let url) where url.scheme == "http" || url.scheme == "https":
                return .value(text)
            case .success(let url):
                return .rejected("expected an http:// or https:// URL, found scheme \(JSONText.quoted(url.scheme))")
            case .failure(let error):
                return .rejected(error.message)
            }
        }
    }

    /// A PEM file of certificates, loaded now so a bad one fails the check, not a connection.
    static var certificateFile: ScalarKind {
        string.then { path in
            if let message = PEMFiles.checkCertificates(path) { return .rejected(message) }
            return .value(path)
        }
    }

    /// `cluster.instance_id`: the prefix of connection ids, so letters,
    /// digits, `-` and `_` (a `.` separates it from the rest).
    static var instanceID: ScalarKind {
        string.then { text in
            guard !text.isEmpty, text.count <= 63, text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                return .rejected("invalid instance id \(JSONText.quoted(text)) (letters, digits, - and _, at most 63)")
            }
            return .value(text)
        }
    }

    /// `health.path`: an absolute path, with an optional query.
    static var healthPath: ScalarKind {
        string.then { text in
            guard text.hasPrefix("/"), !text.contains(where: { $0 == " " || $0.isNewline || $0 == "#" }) else {
                return .rejected("expected an absolute path such as /healthz, found \(JSONText.quoted(text))")
            }
            return .value(text)
        }
    }

    /// A host name for SNI and certificate verification, stored lower-cased.
    static var serverName: ScalarKind {
        string.then { text in
            if text.isEmpty || text.contains(where: { $0 == " " || $0 == "/" || $0 == ":" }) {
                return .rejected("invalid server name \(JSONText.quoted(text))")
            }
            return .value(text.lowercased())
        }
    }
}

// MARK: - Reader

private struct Reader {
    var problems: [ConfigProblem] = []
    /// The paths of the routes read so far: a later route with one of
    /// them could never match.
    var routePaths: Set<String> = []

    mutating func problem(_ path: String, _ message: String) {
        problems.append(ConfigProblem(path: path, message: message))
    }

    // MARK: Structure

    /// Reads a mapping by its table. False if the node is not a mapping.
    @discardableResult
    mutating func decode<Root>(_ node: Node, at path: String, by keys: [ConfigKey<Root>], into root: inout Root) -> Bool {
        guard let entries = mapping(node, path, allowed: keys.map(\.name)) else { return false }
        decode(entries, at: path, by: keys, into: &root)
        return true
    }

    /// Reads a mapping's entries by its table, in table order (not the
    /// file's), so problems come out in the same order for every file.
    mutating func decode<Root>(_ entries: [String: Node], at path: String, by keys: [ConfigKey<Root>], into root: inout Root) {
        for key in keys {
            let keyPath = childPath(path, key.name)
            guard let node = entries[key.name] else {
                if key.isRequired { problem(keyPath, "required key is missing") }
                continue
            }
            switch key.content {
            case .scalar(let field): field.decode(&self, node, keyPath, &root)
            case .section(let children): decode(node, at: keyPath, by: children, into: &root)
            case .custom(let read): read(&self, node, keyPath, &root)
            }
        }
    }

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
                problem(childPath(path, "(\(kind(keyNode)))"), "unknown key (keys must be strings)")
                continue
            }
            let childPath = childPath(path, key.string)
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

    func describe(_ node: Node) -> String {
        if case .scalar(let s) = node { return JSONText.quoted(s.string) }
        return kind(node)
    }

    /// The node's value as `kind` parses it, or nil with the problem reported.
    mutating func value<Value>(_ node: Node, _ path: String, as kind: ScalarKind<Value>) -> Value? {
        var parsed = Parsed<Value>.malformed
        if case .scalar(let scalar) = node, !kind.plainOnly || scalar.style == .plain {
            // File names, addresses and names go to C APIs, which would stop
            // reading at a NUL: refused here rather than read as less.
            if scalar.string.utf8.contains(0) {
                problem(path, "contains a NUL character")
                return nil
            }
            parsed = kind.parse(scalar.string)
        }
        switch parsed {
        case .value(let value): return value
        case .malformed: problem(path, "expected \(kind.expected), found \(describe(node))")
        case .rejected(let message): problem(path, message)
        }
        return nil
    }

    mutating func stringList(_ node: Node, _ path: String) -> [String]? {
        indexedStringList(node, path)?.map(\.value)
    }

    /// The strings of a list with their indexes in it, so that a problem
    /// with an item names the right one when an earlier item was not a string.
    mutating func indexedStringList(_ node: Node, _ path: String) -> [(index: Int, value: String)]? {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list, found \(kind(node))")
            return nil
        }
        var result: [(index: Int, value: String)] = []
        for (index, item) in sequence.enumerated() {
            if let s = value(item, "\(path)[\(index)]", as: .string) { result.append((index, s)) }
        }
        return result
    }

    // MARK: Keys with code of their own

    /// `listen.tls`: both files are required, and are loaded only once both are named.
    mutating func decodeServerTLS(_ node: Node, _ path: String, _ tls: inout GatewayConfig.TLSFiles?) {
        guard let t = mapping(node, path, allowed: ["certificate", "private_key"]) else { return }
        let certificatePath = "\(path).certificate", keyPath = "\(path).private_key"
        let cert = t["certificate"].flatMap { value($0, certificatePath, as: .string) }
        let key = t["private_key"].flatMap { value($0, keyPath, as: .string) }
        if t["certificate"] == nil { problem(certificatePath, "required key is missing") }
        if t["private_key"] == nil { problem(keyPath, "required key is missing") }
        guard let cert, let key else { return }
        var ok = true
        if let message = PEMFiles.checkCertificates(cert) {
            problem(certificatePath, message)
            ok = false
        }
        if let message = PEMFiles.checkPrivateKey(key) {
            problem(keyPath, message)
            ok = false
        }
        if ok { tls = .init(certificate: cert, privateKey: key) }
    }

    mutating func decodeRoutes(_ node: Node, _ path: String, _ routes: inout [Route]) {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list, found \(kind(node))")
            return
        }
        if sequence.isEmpty { problem(path, "at least one route is required") }
        for (index, item) in sequence.enumerated() {
            var draft = RouteDraft()
            let routePath = "\(path)[\(index)]"
            if case .mapping(let mapping) = item {
                let keys = Set(mapping.keys.compactMap { $0.scalar?.string })
                draft.sawUpstream = keys.contains("upstream")
                draft.sawUpstreams = keys.contains("upstreams")
            }
            decode(item, at: routePath, by: ConfigTables.route, into: &draft)
            checkPool(&draft, routePath)
            if let accepted = draft.path { routePaths.insert(accepted) }
            if let route = draft.route { routes.append(route) }
        }
    }

    /// What the pool keys say together: one of `upstream`/`upstreams`, a
    /// hash key exactly with `balance: hash`, no pool keys for the echo.
    mutating func checkPool(_ draft: inout RouteDraft, _ path: String) {
        if draft.sawUpstream && draft.sawUpstreams {
            problem(childPath(path, "upstreams"), "use either upstream or upstreams, not both")
            draft.upstream = nil
        } else if !draft.sawUpstream && !draft.sawUpstreams {
            problem(childPath(path, "upstream"), "required key is missing (or give upstreams)")
        }
        if draft.pool.balance == .hash && draft.pool.hashKey == nil {
            problem(childPath(path, "hash_key"), "required with balance: hash")
        } else if draft.pool.balance != .hash && draft.pool.hashKey != nil {
            problem(childPath(path, "hash_key"), "only applies to balance: hash")
        }
        if draft.upstream == .echo && draft.pool != PoolSettings(members: []) {
            problem(childPath(path, "upstream"), "builtin:echo takes no pool settings (balance, retries, health, eject, discovery)")
        }
    }

    mutating func decodeRoutePath(_ node: Node, _ path: String, _ draft: inout RouteDraft) {
        guard let text = value(node, path, as: .string) else { return }
        if let message = RoutePattern.validate(text) {
            problem(path, message)
        } else if routePaths.contains(text) {
            problem(path, "duplicate path \(JSONText.quoted(text)) (the later route could never match)")
        } else {
            draft.path = text
        }
    }

    mutating func decodeForwardHeaders(_ node: Node, _ path: String, _ headers: inout [String]) {
        guard let list = indexedStringList(node, path) else { return }
        for (i, name) in list {
            let lower = name.lowercased()
            if !HeaderRules.isToken(lower) {
                problem("\(path)[\(i)]", "invalid header name \(JSONText.quoted(name))")
            } else if HeaderRules.neverForwarded.contains(lower) {
                problem("\(path)[\(i)]", "\(JSONText.quoted(name)) is set by the gateway itself and cannot be forwarded")
            } else {
                headers.append(lower)
            }
        }
    }

    /// `upstreams`: a list of `{url, weight}` (or plain URL strings), all of
    /// one scheme family; the first member stands for the route's upstream.
    mutating func decodeUpstreams(_ node: Node, _ path: String, _ draft: inout RouteDraft) {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list, found \(kind(node))")
            return
        }
        if sequence.isEmpty {
            problem(path, "at least one upstream is required")
            return
        }
        var members: [PoolSettings.Member] = []
        var first: UpstreamTarget? = nil
        var seen: Set<String> = []
        for (i, item) in sequence.enumerated() {
            let itemPath = "\(path)[\(i)]"
            var entry = MemberDraft()
            if case .scalar = item {
                entry.url = value(item, itemPath, as: .upstream)
            } else {
                decode(item, at: itemPath, by: ConfigTables.member, into: &entry)
            }
            guard let target = entry.url else { continue }
            let url: URLParts
            switch target {
            case .echo:
                problem(childPath(itemPath, "url"), "builtin:echo cannot be a pool member")
                continue
            case .webSocket(let u), .http(let u):
                url = u
            }
            if let first {
                switch (first, target) {
                case (.webSocket(let a), .webSocket(let b)) where a.isTLS == b.isTLS, (.http(let a), .http(let b)) where a.isTLS == b.isTLS:
                    if a.path != b.path || a.query != b.query {
                        problem(childPath(itemPath, "url"), "every member must have the same path and query as the first (\(a.requestTarget))")
                        continue
                    }
                default:
                    problem(childPath(itemPath, "url"), "one scheme per route: the first member is \(first.description.prefix(while: { $0 != ":" }))://")
                    continue
                }
            } else {
                first = target
            }
            let endpoint = "\(url.host):\(url.port)"
            if !seen.insert(endpoint).inserted {
                problem(childPath(itemPath, "url"), "duplicate target \(endpoint)")
                continue
            }
            members.append(.init(url: url, weight: entry.weight))
        }
        draft.upstream = first
        draft.pool.members = members
    }

    /// `auth`: `jwt` (its keys from exactly one of `jwks_url`, `keys_file`,
    /// `hmac_secret_env`) and `on_failure`.
    mutating func decodeAuth(_ node: Node, _ path: String, _ draft: inout RouteDraft) {
        guard let entries = mapping(node, path, allowed: ["jwt", "on_failure"]) else { return }
        var onFailure = AuthSettings.OnFailure.close
        if let node = entries["on_failure"], let action = value(node, childPath(path, "on_failure"), as: .oneOf) as AuthSettings.OnFailure? {
            onFailure = action
        }
        guard let jwt = entries["jwt"] else {
            problem(childPath(path, "jwt"), "required key is missing")
            return
        }
        let jwtPath = childPath(path, "jwt")
        let keys = ["jwks_url", "keys_file", "hmac_secret_env", "issuer", "audiences", "leeway_ms", "token_from", "forward_claims", "jwks_refresh_ms"]
        guard let fields = mapping(jwt, jwtPath, allowed: keys) else { return }
        var sources: [AuthSettings.Keys] = []
        if let node = fields["jwks_url"], let url = value(node, childPath(jwtPath, "jwks_url"), as: .httpURL) { sources.append(.jwksURL(url)) }
        if let node = fields["keys_file"], let file = value(node, childPath(jwtPath, "keys_file"), as: .string) {
            if access(file, R_OK) == 0 {
                sources.append(.file(file))
            } else {
                problem(childPath(jwtPath, "keys_file"), "cannot read \(JSONText.quoted(file))")
            }
        }
        if let node = fields["hmac_secret_env"], let name = value(node, childPath(jwtPath, "hmac_secret_env"), as: .string) {
            sources.append(.hmacSecretEnv(name))
        }
        let present = ["jwks_url", "keys_file", "hmac_secret_env"].filter { fields[$0] != nil }
        if present.count != 1 {
            problem(jwtPath, present.isEmpty ? "needs one of jwks_url, keys_file, hmac_secret_env" : "give only one of \(present.joined(separator: ", "))")
        }
        // The other keys are read whatever the key source was, so that every
        // problem is reported at once.
        var settings = AuthSettings(keys: sources.first ?? .hmacSecretEnv(""))
        if let node = fields["issuer"], let issuer = value(node, childPath(jwtPath, "issuer"), as: .string) { settings.issuer = issuer }
        if let node = fields["audiences"], let list = stringList(node, childPath(jwtPath, "audiences")) { settings.audiences = list }
        if let node = fields["leeway_ms"], let ms = value(node, childPath(jwtPath, "leeway_ms"), as: .int(0...3_600_000)) { settings.leewayMs = ms }
        if let node = fields["jwks_refresh_ms"], let ms = value(node, childPath(jwtPath, "jwks_refresh_ms"), as: .int(1_000...86_400_000)) {
            settings.jwksRefreshMs = ms
        }
        if let node = fields["token_from"], let list = indexedStringList(node, childPath(jwtPath, "token_from")) {
            var parsed: [AuthSettings.TokenSource] = []
            for (i, text) in list {
                if let s = AuthSettings.TokenSource.parse(text) {
                    parsed.append(s)
                } else {
                    problem("\(childPath(jwtPath, "token_from"))[\(i)]", "invalid token source \(JSONText.quoted(text)) (expected header:NAME | query:NAME | cookie:NAME | subprotocol)")
                }
            }
            if list.isEmpty { problem(childPath(jwtPath, "token_from"), "at least one source is required") }
            settings.tokenFrom = parsed
        }
        if let node = fields["forward_claims"] {
            let claimsPath = childPath(jwtPath, "forward_claims")
            if case .mapping(let mapping) = node {
                for (keyNode, valueNode) in mapping {
                    guard case .scalar(let claim) = keyNode else {
                        problem(childPath(claimsPath, "(\(kind(keyNode)))"), "unknown key (keys must be strings)")
                        continue
                    }
                    let p = childPath(claimsPath, claim.string)
                    guard let header = value(valueNode, p, as: .string) else { continue }
                    if !HeaderRules.isToken(header.lowercased()) {
                        problem(p, "invalid header name \(JSONText.quoted(header))")
                    } else if HeaderRules.neverForwarded.contains(header.lowercased()) {
                        problem(p, "\(JSONText.quoted(header)) is set by the gateway itself")
                    } else {
                        settings.forwardClaims.append((claim.string, header))
                    }
                }
            } else {
                problem(claimsPath, "expected a mapping, found \(kind(node))")
            }
        }
        settings.onFailure = onFailure
        guard present.count == 1, !sources.isEmpty else { return }
        draft.auth = settings
    }

    /// `cluster.peers`: a list of `host:port`, or `dns:NAME:PORT` (every
    /// address of NAME is a peer).
    mutating func decodePeers(_ node: Node, _ path: String, _ cluster: inout GatewayConfig.Cluster) {
        if case .scalar(let scalar) = node, scalar.string.hasPrefix("dns:") {
            let rest = scalar.string.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port),
                !rest[..<colon].isEmpty
            else {
                problem(path, "expected dns:NAME:PORT, found \(JSONText.quoted(scalar.string))")
                return
            }
            cluster.peersDNS = String(rest)
            return
        }
        guard let list = indexedStringList(node, path) else { return }
        for (i, peer) in list {
            if case .success = URLParts.parse("http://\(peer)/"), peer.contains(":") {
                cluster.peers.append(peer)
            } else {
                problem("\(path)[\(i)]", "expected host:port, found \(JSONText.quoted(peer))")
            }
        }
    }

    /// `log.redact_query`: parameter names, matched case-insensitively.
    mutating func decodeRedactQuery(_ node: Node, _ path: String, _ names: inout [String]) {
        guard let list = indexedStringList(node, path) else { return }
        var accepted: [String] = []
        for (i, name) in list {
            if name.isEmpty || name.contains(where: { "&=#? ".contains($0) }) {
                problem("\(path)[\(i)]", "invalid query parameter name \(JSONText.quoted(name))")
            } else {
                accepted.append(name)
            }
        }
        names = accepted
    }

    /// `trusted_proxies`: addresses (`10.0.0.7`) or networks (`10.0.0.0/8`, `fd00::/8`).
    mutating func decodeTrustedProxies(_ node: Node, _ path: String, _ networks: inout [IPNetwork]) {
        guard let list = indexedStringList(node, path) else { return }
        for (i, text) in list {
            if let network = IPNetwork(text) {
                networks.append(network)
            } else {
                problem("\(path)[\(i)]", "not an IP address or CIDR network: \(JSONText.quoted(text))")
            }
        }
    }

    /// A route's `http` settings, which only an HTTP upstream has a use for.
    mutating func decodeRouteHTTP(_ node: Node, _ path: String, _ draft: inout RouteDraft) {
        decode(node, at: path, by: ConfigTables.routeHTTP, into: &draft.http)
        switch draft.upstream {
        case .http?, nil: break
        case .echo?, .webSocket?: problem(path, "only applies to http:// and https:// upstreams")
        }
        if draft.http.version == .h2c, case .http(let url)? = draft.upstream, url.isTLS {
            problem(path + ".version", "h2c is HTTP/2 without TLS; an https:// upstream gets HTTP/2 from the TLS handshake with `auto`")
        }
    }

    /// A route's `tls` settings, which only a TLS upstream has a use for.
    mutating func decodeRouteTLS(_ node: Node, _ path: String, _ draft: inout RouteDraft) {
        var settings = Route.UpstreamTLS()
        guard decode(node, at: path, by: ConfigTables.routeTLS, into: &settings) else { return }
        let isTLS: Bool
        switch draft.upstream {
        case .webSocket(let url)?, .http(let url)?: isTLS = url.isTLS
        default: isTLS = false
        }
        if draft.upstream != nil && !isTLS {
            problem(path, "only applies to wss:// and https:// upstreams")
        }
        draft.tls = settings
    }

    /// `close_codes`: its keys are causes, checked against `CloseCause`
    /// rather than a table.
    mutating func decodeCloseCodes(_ node: Node, _ path: String, _ overrides: inout [CloseCause: UInt16]) {
        guard case .mapping(let mapping) = node else {
            problem(path, "expected a mapping, found \(kind(node))")
            return
        }
        for (keyNode, codeNode) in mapping {
            guard case .scalar(let key) = keyNode else {
                problem(childPath(path, "(\(kind(keyNode)))"), "unknown cause (keys must be strings)")
                continue
            }
            let causePath = childPath(path, key.string)
            guard let cause = CloseCause(rawValue: key.string) else {
                problem(causePath, "unknown cause")
                continue
            }
            guard let code = value(codeNode, causePath, as: .int(0...65535)) else { continue }
            if !cause.isOverridable {
                problem(causePath, "cannot be overridden: the code is the one the peer sent")
            } else if !CloseCode.isAllowedOverride(code) {
                problem(causePath, "\(code) is not allowed (use 1000-1003, 1007-1014, 3000-4999, or 1006 to drop the TCP connection)")
            } else {
                overrides[cause] = UInt16(code)
            }
        }
    }

    // MARK: Environment and cross-field checks

    /// Applies the variables of `ConfigTables.environmentOverrides`, each
    /// parsed by its key's kind; a refused value is reported under the
    /// variable's name, since that is where the user has to fix it.
    mutating func applyEnvironment(_ environment: [String: String], to config: inout GatewayConfig) {
        for override in ConfigTables.environmentOverrides {
            guard let text = environment[override.variable] else { continue }
            if let message = override.apply(text, &config) { problem(override.variable, message) }
        }
    }

    mutating func validate(_ config: inout GatewayConfig) {
        if let control = config.control, control.tokenEnv == nil, !Self.isLoopback(control.host) {
            problem("control.token_env", "required when control.host is not a loopback address (\(control.host)): the control API can push to and close any connection")
        }
        if config.shutdown.spreadMs > 0 && config.shutdown.spreadMs >= config.shutdown.drainTimeoutMs {
            problem("shutdown.spread_ms", "must be less than shutdown.drain_timeout_ms (\(config.shutdown.drainTimeoutMs)), which bounds the whole drain")
        }
        if config.listen.port != 0, config.listen.port == config.admin.port,
            config.listen.host == config.admin.host || config.listen.host == "0.0.0.0" || config.admin.host == "0.0.0.0"
        {
            problem("admin.port", "must differ from listen.port (\(config.listen.port))")
        }
    }
}

extension Reader {
    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// A key's path below its mapping's: `limits` + `max_connections`.
private func childPath(_ parent: String, _ key: String) -> String {
    // A key is shown as written, unless that would not show it: empty,
    // only blanks, or with line breaks and other control characters. Those
    // are quoted, so that every problem names a path on one line.
    let plain = key.unicodeScalars.contains { $0 != " " && $0 != "\t" }
        && key.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value != 0x7F }
    let shown = plain ? key : JSONText.quoted(key)
    return parent.isEmpty ? shown : "\(parent).\(shown)"
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
