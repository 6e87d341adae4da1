import WSGateProtocol

/// The gateway's configuration, as described in the README's config reference.
///
/// Every field has the documented default except `routes`. Instances are
/// produced by `ConfigLoader`, which decodes strictly (unknown keys are errors)
/// and reports every problem with its YAML key path.
public struct GatewayConfig: Sendable, Equatable {
    public struct TLSFiles: Sendable, Equatable {
        public var certificate: String
        public var privateKey: String
    }

    public struct Listen: Sendable, Equatable {
        public var host = "0.0.0.0"
        public var port = 8080
        public var tls: TLSFiles? = nil
    }

    public struct Admin: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 9090
    }

    public struct Limits: Sendable, Equatable {
        public var maxConnections = 10_000
        public var maxMessageBytes = 1_048_576
        public var handshakeTimeoutMs = 5_000
        public var idleTimeoutMs = 0
        /// The whole upgrade request head (request line and headers); over
        /// it the client gets 431.
        public var maxHeaderBytes = 16_384
        /// Connections accepted but not yet upgraded or rejected; over it a
        /// new connection is closed at once (and counted).
        public var maxPendingHandshakes = 1_000
        /// Upgraded connections from one client address (0: no limit); over
        /// it the connection is upgraded, then closed 1013.
        public var maxConnectionsPerIP = 0
    }

    public struct Timeouts: Sendable, Equatable {
        public var upstreamConnectMs = 3_000
        public var upstreamHandshakeMs = 5_000
        public var httpRequestMs = 10_000
        public var closeHandshakeMs = 2_000
    }

    public struct Shutdown: Sendable, Equatable {
        public var drainTimeoutMs = 10_000
        /// The drain's closes are spread over this window (with jitter), so
        /// that reconnecting clients do not stampede the other instances.
        public var spreadMs = 0
        public var closeCode: UInt16 = CloseCode.goingAway
    }

    /// How many event loops (threads) serve connections, as nginx's
    /// `worker_processes`, HAProxy's `nbthread` and Envoy's `--concurrency`.
    public enum Workers: Sendable, Equatable {
        /// The cores this process may use: the CPU set and the cgroup CPU
        /// quota in a container (SwiftNIO's `System.coreCount`).
        case auto
        case count(Int)

        public static let maximum = 1024

        /// The number of event loops, given the cores available.
        public func resolved(coresAvailable: Int) -> Int {
            switch self {
            case .auto: return max(1, coresAvailable)
            case .count(let n): return n
            }
        }
    }

    public enum LogFormat: String, Sendable, Equatable, CaseIterable {
        case json, text
    }

    public enum LogLevel: String, Sendable, Equatable, CaseIterable {
        case trace, debug, info, notice, warning, error
    }

    public struct Log: Sendable, Equatable {
        public var format: LogFormat = .json
        public var level: LogLevel = .info
        /// Query parameters whose values are logged as `REDACTED`.
        public var redactQuery: [String] = QueryRedaction.defaultNames
        /// Log lines waiting for a slow stdout, in bytes; past it lines are
        /// dropped and counted.
        public var bufferBytes = 4 << 20
    }

    /// `control`: the control API's own listener (else it is on the admin one).
    public struct Control: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 9091
        /// The environment variable that holds the bearer token.
        public var tokenEnv: String? = nil
    }

    /// `cluster`: this instance's name and its peers.
    public struct Cluster: Sendable, Equatable {
        /// The prefix of this instance's connection ids; default: the host name.
        public var instanceID: String? = nil
        /// `host:port` of every peer's control API, or `dns:NAME:PORT`.
        public var peers: [String] = []
        public var peersDNS: String? = nil
        public var refreshMs = 5_000
    }

    public var listen = Listen()
    public var admin = Admin()
    public var limits = Limits()
    public var timeouts = Timeouts()
    public var shutdown = Shutdown()
    public var log = Log()
    public var control: Control? = nil
    public var cluster = Cluster()
    public var workers: Workers = .auto
    public var routes: [Route] = []
    /// Peers whose `X-Forwarded-For` is believed and appended to; from any
    /// other peer the header is replaced by the peer's own address.
    public var trustedProxies: [IPNetwork] = []
    /// DNS servers for `discovery: dns` (`host:port`, port 53 by default);
    /// empty: the system resolver (getaddrinfo).
    public var resolver: [ResolverAddress] = []
    /// Per-cause overrides of the default close codes.
    public var closeCodes: [CloseCause: UInt16] = [:]

    public init() {}
}

/// A DNS server of `resolver`.
public struct ResolverAddress: Sendable, Equatable {
    public var host: String
    public var port: Int

    /// `10.0.0.10`, `10.0.0.10:5353`, `[fd00::a]:53`, `::1`; IP addresses only
    /// (a resolver named by name would need a resolver).
    public init?(_ text: String) {
        var host = text
        var port = 53
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()), (1...65535).contains(p) else { return nil }
                port = p
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = String(text[..<colon])
            guard let p = Int(text[text.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
        }
        guard IPNetwork.parseAddress(host) != nil else { return nil }
        self.host = host
        self.port = port
    }
}

/// One entry of `routes`: which client paths go to which upstream.
public struct Route: Sendable, Equatable {
    public enum HTTPOnError: String, Sendable, Equatable, CaseIterable {
        case close, reply
    }

    /// The HTTP version toward an `http://` / `https://` upstream.
    public enum HTTPVersion: String, Sendable, Equatable, CaseIterable {
        /// HTTP/1.1 to `http://`; to `https://`, HTTP/2 when the server
        /// offers it in the TLS handshake (ALPN), else HTTP/1.1.
        case auto
        /// HTTP/1.1 always.
        case http1
        /// HTTP/2 with prior knowledge over cleartext (`http://` only): one
        /// connection per upstream carries every request as a stream.
        case h2c
    }

    /// Settings that only apply to `http://` and `https://` upstreams.
    public struct HTTPSettings: Sendable, Equatable {
        public var method = "POST"
        public var connectURL: String? = nil
        public var disconnectURL: String? = nil
        public var onError: HTTPOnError = .close
        public var version: HTTPVersion = .auto
    }

    /// TLS settings toward a `wss://` or `https://` upstream.
    public struct UpstreamTLS: Sendable, Equatable {
        /// PEM file of CA certificates to trust instead of the system store.
        public var caFile: String? = nil
        /// Name for SNI and certificate verification instead of the URL's host.
        public var serverName: String? = nil
        /// Accept any certificate. Only when set explicitly; logged as a
        /// warning at start.
        public var insecureSkipVerify = false
    }

    /// The route's path as written in the config (`/echo`, `/chat/*`); also
    /// its name in logs.
    public var path: String
    public var upstream: UpstreamTarget
    /// Lower-cased names of client handshake headers copied to the upstream.
    public var forwardHeaders: [String] = []
    /// Allowed `Origin` values; `nil` means any origin.
    public var origins: [String]? = nil
    public var http = HTTPSettings()
    public var tls: UpstreamTLS? = nil
    /// The targets behind the route (one for a single `upstream:`; none for
    /// `builtin:echo`) and how they are chosen. `upstream` is the first
    /// member: its scheme and path are every member's.
    public var pool: PoolSettings
    /// `close_profile`: the close-code dialect of this route's clients.
    public var closeProfile = CloseProfile.iana
    /// The route's own `close_codes`, final over the profile and the
    /// gateway's `close_codes`.
    public var closeCodes: [CloseCause: UInt16] = [:]
    /// `rate_limit`: how fast one client of this route may send.
    public var rateLimit: RateLimit? = nil
    /// `auth`: a JWT is required at the handshake.
    public var auth: AuthSettings? = nil

    public init(path: String, upstream: UpstreamTarget) {
        self.path = path
        self.upstream = upstream
        switch upstream {
        case .echo: self.pool = PoolSettings(members: [])
        case .webSocket(let url), .http(let url): self.pool = PoolSettings(members: [.init(url: url)])
        }
    }
}
