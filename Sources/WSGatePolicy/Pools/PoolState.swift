/// The state of one route's pool and the choice of a target for a new
/// connection (or HTTP request): pure, with the clock passed in, so that
/// balancing, ejection, health and panic mode are tested without sockets.
/// `UpstreamPool` (WSGate) wraps it with a lock, metrics and log lines.
public struct PoolState: Sendable {
    /// One address connections go to: a configured member, or one DNS
    /// record of a member.
    public struct Target: Sendable, Equatable {
        /// `host:port` as dialled (`[v6]:port` for IPv6): the metric label
        /// and the log line's `target`.
        public let id: String
        /// Where to dial.
        public let address: String
        public let port: Int
        /// The member it comes from (URL, weight).
        public let member: PoolSettings.Member

        // Balancing.
        public internal(set) var active = 0
        var currentWeight = 0
        // Passive ejection.
        public internal(set) var consecutiveFailures = 0
        var ejections = 0
        public internal(set) var ejectedUntil: UInt64 = 0
        // Active health checks.
        public internal(set) var healthy = true
        var healthStreak = 0  // consecutive results contrary to `healthy`

        public init(address: String, port: Int, member: PoolSettings.Member) {
            self.address = address
            self.port = port
            self.member = member
            self.id = address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
        }

        public func isAvailable(at now: UInt64) -> Bool { healthy && ejectedUntil <= now }
    }

    public let settings: PoolSettings
    public private(set) var targets: [Target]
    private var ring: [(hash: UInt64, index: Int)] = []
    private var roundRobinNext = 0

    /// Virtual nodes per unit of weight on the hash ring.
    static let virtualNodes = 100

    public init(settings: PoolSettings) {
        self.settings = settings
        self.targets = settings.members.map { Target(address: $0.url.host, port: $0.url.port, member: $0) }
        rebuildRing()
    }

    public func index(of id: String) -> Int? { targets.firstIndex { $0.id == id } }

    // MARK: Choosing

    /// The target for the next attempt: by `balance`, among targets not in
    /// `tried`, skipping unhealthy and ejected ones, unless none is left
    /// that is available: then any untried one (panic mode: better to try
    /// than to refuse everyone). Nil when every target has been tried.
    public mutating func choose(hashKey: String?, tried: Set<String>, now: UInt64) -> Target? {
        // Counted first, so that the common case (nothing tried, every target
        // available) allocates nothing: this runs per connection and per
        // HTTP request.
        var untried = 0
        var available = 0
        for t in targets where tried.isEmpty || !tried.contains(t.id) {
            untried += 1
            if t.isAvailable(at: now) { available += 1 }
        }
        guard untried > 0 else { return nil }
        if targets.count == 1 { return targets[0] }
        let onlyAvailable = available > 0
        func isCandidate(_ t: Target) -> Bool {
            (tried.isEmpty || !tried.contains(t.id)) && (!onlyAvailable || t.isAvailable(at: now))
        }
        let chosen: Int
        switch settings.balance {
        case .roundRobin:
            chosen = smoothWeightedRoundRobin(isCandidate)
        case .leastConnections:
            chosen = leastConnections(isCandidate)
        case .hash:
            chosen = ringLookup(hashKey ?? "", isCandidate) ?? smoothWeightedRoundRobin(isCandidate)
        }
        return targets[chosen]
    }

    /// nginx's smooth weighted round robin: every candidate gains its
    /// weight, the richest is chosen and pays the total.
    private mutating func smoothWeightedRoundRobin(_ isCandidate: (Target) -> Bool) -> Int {
        var total = 0
        var best = -1
        for i in targets.indices where isCandidate(targets[i]) {
            targets[i].currentWeight += targets[i].member.weight
            total += targets[i].member.weight
            if best < 0 || targets[i].currentWeight > targets[best].currentWeight { best = i }
        }
        targets[best].currentWeight -= total
        return best
    }

    /// Fewest active connections per unit of weight; ties rotate.
    private mutating func leastConnections(_ isCandidate: (Target) -> Bool) -> Int {
        var bestLoad = Double.infinity
        var ties = 0
        for t in targets where isCandidate(t) {
            let load = Double(t.active) / Double(t.member.weight)
            if load < bestLoad {
                bestLoad = load
                ties = 1
            } else if load == bestLoad {
                ties += 1
            }
        }
        roundRobinNext &+= 1
        var pick = roundRobinNext % ties
        for i in targets.indices where isCandidate(targets[i]) && Double(targets[i].active) / Double(targets[i].member.weight) == bestLoad {
            if pick == 0 { return i }
            pick -= 1
        }
        return 0  // unreachable: `ties` candidates have the best load
    }

    /// The first candidate clockwise from the key's point on the ring: a key
    /// keeps its target while that target is available, whatever happens to
    /// the others.
    private func ringLookup(_ key: String, _ isCandidate: (Target) -> Bool) -> Int? {
        guard !ring.isEmpty else { return nil }
        let h = Self.hash(key)
        var lo = 0, hi = ring.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ring[mid].hash < h { lo = mid + 1 } else { hi = mid }
        }
        for step in 0..<ring.count {
            let entry = ring[(lo + step) % ring.count]
            if isCandidate(targets[entry.index]) { return entry.index }
        }
        return nil
    }

    private mutating func rebuildRing() {
        var ring: [(hash: UInt64, index: Int)] = []
        for (i, t) in targets.enumerated() {
            for v in 0..<(Self.virtualNodes * t.member.weight) {
                ring.append((Self.hash("\(t.id)#\(v)"), i))
            }
        }
        ring.sort { $0.hash < $1.hash }
        self.ring = ring
    }

    /// FNV-1a, finished with MurmurHash3's fmix64 for spread: stable across
    /// runs and machines (Swift's `Hasher` is seeded per process, which
    /// would move every key at each restart).
    static func hash(_ text: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in text.utf8 {
            h ^= UInt64(b)
            h &*= 0x0000_0100_0000_01B3
        }
        h ^= h >> 33
        h &*= 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h &*= 0xc4ce_b9fe_1a85_ec53
        h ^= h >> 33
        return h
    }

    // MARK: Outcomes

    public mutating func connectionStarted(_ id: String) {
        if let i = index(of: id) { targets[i].active += 1 }
    }

    public mutating func connectionEnded(_ id: String) {
        if let i = index(of: id), targets[i].active > 0 { targets[i].active -= 1 }
    }

    /// A connect succeeded: the failure streak and the ejection backoff reset.
    public mutating func connectSucceeded(_ id: String) {
        guard let i = index(of: id) else { return }
        targets[i].consecutiveFailures = 0
        targets[i].ejections = 0
    }

    /// A connect failed. Returns the ejection deadline when this failure
    /// ejected the target (`eject.consecutive_failures` in a row), doubling
    /// per repeat ejection up to `eject.max_ms`.
    @discardableResult
    public mutating func connectFailed(_ id: String, now: UInt64) -> UInt64? {
        guard let i = index(of: id) else { return nil }
        targets[i].consecutiveFailures += 1
        guard targets[i].consecutiveFailures >= settings.eject.consecutiveFailures else { return nil }
        targets[i].consecutiveFailures = 0
        let eject = settings.eject
        let factor = UInt64(1) << UInt64(min(targets[i].ejections, 20))
        let duration = min(UInt64(eject.maxMs), UInt64(eject.baseMs) * factor)
        targets[i].ejections += 1
        targets[i].ejectedUntil = now + duration
        return targets[i].ejectedUntil
    }

    /// An active check's result. Returns the new health when it changed
    /// (after `healthy_after` / `unhealthy_after` results in a row).
    public mutating func healthResult(_ id: String, ok: Bool) -> Bool? {
        guard let i = index(of: id), let health = settings.health else { return nil }
        if ok == targets[i].healthy {
            targets[i].healthStreak = 0
            return nil
        }
        targets[i].healthStreak += 1
        let needed = ok ? health.healthyAfter : health.unhealthyAfter
        guard targets[i].healthStreak >= needed else { return nil }
        targets[i].healthStreak = 0
        targets[i].healthy = ok
        return ok
    }

    // MARK: Discovery

    /// Replaces the targets with what DNS answered, per member: targets that
    /// stay keep their state (health, ejection, active count); a member
    /// whose lookup failed (`nil`) keeps its current targets. Returns the
    /// ids added and removed.
    public mutating func replaceAddresses(_ addresses: [[String]?]) -> (added: [String], removed: [String]) {
        var next: [Target] = []
        for (m, member) in settings.members.enumerated() {
            let current = targets.filter { $0.member == member }
            guard m < addresses.count, let found = addresses[m], !found.isEmpty else {
                next += current
                continue
            }
            for address in found {
                let fresh = Target(address: address, port: member.url.port, member: member)
                guard !next.contains(where: { $0.id == fresh.id }) else { continue }  // one target per address
                next.append(current.first { $0.id == fresh.id } ?? fresh)
            }
        }
        let before = Set(targets.map(\.id)), after = Set(next.map(\.id))
        let added = next.map(\.id).filter { !before.contains($0) }
        let removed = targets.map(\.id).filter { !after.contains($0) }
        guard !added.isEmpty || !removed.isEmpty else { return ([], []) }
        targets = next
        rebuildRing()
        return (added, removed)
    }
}
