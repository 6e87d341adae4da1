/// A route's upstream pool as configured: its members and how connections
/// are spread over them, retried, checked and discovered.
///
/// A route with a single `upstream:` has a pool of one member with the
/// defaults below (no retry, no active check): it behaves as before pools
/// existed.
public struct PoolSettings: Sendable, Equatable {
    /// One `upstreams:` entry.
    public struct Member: Sendable, Equatable {
        public var url: URLParts
        public var weight: Int

        public init(url: URLParts, weight: Int = 1) {
            self.url = url
            self.weight = weight
        }
    }

    public enum Balance: String, Sendable, Equatable, CaseIterable {
        case roundRobin = "round_robin"
        case leastConnections = "least_connections"
        case hash
    }

    /// What `balance: hash` hashes.
    public enum HashKey: Sendable, Equatable, CustomStringConvertible {
        case header(String)  // lower-cased name
        case query(String)
        case cookie(String)
        case clientIP

        public var description: String {
            switch self {
            case .header(let n): return "header:\(n)"
            case .query(let n): return "query:\(n)"
            case .cookie(let n): return "cookie:\(n)"
            case .clientIP: return "client_ip"
            }
        }

        public static func parse(_ text: String) -> HashKey? {
            if text == "client_ip" { return .clientIP }
            guard let colon = text.firstIndex(of: ":") else { return nil }
            let kind = text[..<colon]
            let name = String(text[text.index(after: colon)...])
            guard !name.isEmpty, !name.contains(where: { $0 == " " || $0 == "\t" }) else { return nil }
            switch kind {
            case "header": return HeaderRules.isToken(name.lowercased()) ? .header(name.lowercased()) : nil
            case "query": return .query(name)
            case "cookie": return .cookie(name)
            default: return nil
            }
        }
    }

    /// Active checks: `GET path` on each target's host and port.
    public struct Health: Sendable, Equatable {
        public var path = "/healthz"
        public var intervalMs = 2_000
        public var timeoutMs = 1_000
        public var unhealthyAfter = 2
        public var healthyAfter = 2

        public init() {}
    }

    /// Passive ejection: connect failures take a target out for a while.
    public struct Eject: Sendable, Equatable {
        public var consecutiveFailures = 3
        public var baseMs = 5_000
        public var maxMs = 60_000

        public init() {}
    }

    public enum Discovery: String, Sendable, Equatable, CaseIterable {
        case none
        case dns
    }

    public var members: [Member]
    public var balance = Balance.roundRobin
    public var hashKey: HashKey? = nil
    /// More targets tried after a failed connect, before the client's 101;
    /// nil: every target once (a pool), none (a single upstream).
    public var retries: Int? = nil
    public var health: Health? = nil
    public var eject = Eject()
    public var discovery = Discovery.none
    public var dnsRefreshMs = 5_000

    public init(members: [Member]) {
        self.members = members
    }

    /// How many connect attempts a connection may make when `targets`
    /// targets exist.
    public func attempts(targets: Int) -> Int {
        if let retries { return retries + 1 }
        return members.count > 1 || discovery == .dns ? max(1, targets) : 1
    }
}
