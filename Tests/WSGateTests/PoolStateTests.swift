import Testing
@testable import WSGatePolicy

/// Balancing, ejection, health and panic mode of a pool, with the clock
/// passed in (no sockets: the black-box suite has those).
@Suite("Pool state")
struct PoolStateTests {
    func settings(_ ports: [Int], weights: [Int]? = nil, _ configure: (inout PoolSettings) -> Void = { _ in }) -> PoolSettings {
        var s = PoolSettings(members: ports.enumerated().map { i, port in
            .init(url: try! URLParts.parse("ws://127.0.0.1:\(port)/x").get(), weight: weights?[i] ?? 1)
        })
        configure(&s)
        return s
    }

    func picks(_ state: inout PoolState, _ n: Int, key: String? = nil, now: UInt64 = 0) -> [Int] {
        (0..<n).map { _ in state.choose(hashKey: key, tried: [], now: now)!.port }
    }

    @Test func smoothWeightedRoundRobinInterleaves() {
        var state = PoolState(settings: settings([1, 2, 3], weights: [5, 1, 1]))
        let seq = picks(&state, 7)
        #expect(seq.filter { $0 == 1 }.count == 5)
        #expect(seq == [1, 1, 2, 1, 3, 1, 1], "nginx's smooth order, not 1,1,1,1,1,2,3")
    }

    @Test func triedTargetsAreSkippedAndTheEndIsNil() {
        var state = PoolState(settings: settings([1, 2]))
        let first = state.choose(hashKey: nil, tried: [], now: 0)!
        let second = state.choose(hashKey: nil, tried: [first.id], now: 0)!
        #expect(first.id != second.id)
        #expect(state.choose(hashKey: nil, tried: [first.id, second.id], now: 0) == nil)
    }

    @Test func ejectionDoublesAndEnds() {
        var state = PoolState(settings: settings([1, 2]) { $0.eject.consecutiveFailures = 2; $0.eject.baseMs = 100; $0.eject.maxMs = 250 })
        let id = state.targets[0].id
        #expect(state.connectFailed(id, now: 0) == nil)
        #expect(state.connectFailed(id, now: 0) == 100)
        #expect(Set(picks(&state, 4, now: 50)) == [2], "ejected: skipped")
        #expect(Set(picks(&state, 4, now: 100)) == [1, 2], "back after base_ms")
        state.connectFailed(id, now: 100)
        #expect(state.connectFailed(id, now: 100) == 300, "doubled: 200 ms")
        state.connectFailed(id, now: 300)
        #expect(state.connectFailed(id, now: 300) == 550, "capped at max_ms")
        state.connectSucceeded(id)
        state.connectFailed(id, now: 1000)
        #expect(state.connectFailed(id, now: 1000) == 1100, "a success resets the doubling")
    }

    @Test func panicModeTriesUnavailableTargetsRatherThanNone() {
        var state = PoolState(settings: settings([1, 2]) { $0.eject.consecutiveFailures = 1 })
        for t in state.targets { state.connectFailed(t.id, now: 0) }
        #expect(state.targets.allSatisfy { !$0.isAvailable(at: 1) })
        #expect(state.choose(hashKey: nil, tried: [], now: 1) != nil)
    }

    @Test func healthFlipsAfterTheConfiguredStreaks() {
        var health = PoolSettings.Health()
        health.unhealthyAfter = 2
        health.healthyAfter = 3
        var state = PoolState(settings: settings([1]) { $0.health = health })
        let id = state.targets[0].id
        #expect(state.healthResult(id, ok: false) == nil)
        #expect(state.healthResult(id, ok: true) == nil, "a success breaks the streak")
        #expect(state.healthResult(id, ok: false) == nil)
        #expect(state.healthResult(id, ok: false) == false)
        #expect(state.healthResult(id, ok: true) == nil)
        #expect(state.healthResult(id, ok: true) == nil)
        #expect(state.healthResult(id, ok: true) == true)
    }

    @Test func leastConnectionsFollowsTheLoadPerWeight() {
        var state = PoolState(settings: settings([1, 2], weights: [1, 3]) { $0.balance = .leastConnections })
        state.connectionStarted(state.targets[1].id)
        state.connectionStarted(state.targets[1].id)
        #expect(state.choose(hashKey: nil, tried: [], now: 0)!.port == 1, "0/1 < 2/3")
        state.connectionStarted(state.targets[0].id)
        #expect(state.choose(hashKey: nil, tried: [], now: 0)!.port == 2, "1/1 > 2/3")
    }

    @Test func hashIsStableAndMovesOnlyTheKeysOfARemovedTarget() {
        let ports = [1, 2, 3, 4]
        var state = PoolState(settings: settings(ports) { $0.balance = .hash; $0.hashKey = .query("room") })
        let keys = (0..<2000).map { "room\($0)" }
        let before = keys.map { state.choose(hashKey: $0, tried: [], now: 0)!.port }
        #expect(keys.map { state.choose(hashKey: $0, tried: [], now: 0)!.port } == before)
        let counts = Dictionary(grouping: before, by: { $0 }).mapValues(\.count)
        #expect(counts.values.allSatisfy { $0 > 2000 / 4 * 6 / 10 }, "spread: \(counts)")
        // Target 3 is ejected: only its keys move.
        var ejected = PoolState(settings: state.settings)
        ejected.connectFailed(ejected.targets[2].id, now: 0)
        ejected.connectFailed(ejected.targets[2].id, now: 0)
        ejected.connectFailed(ejected.targets[2].id, now: 0)
        let after = keys.map { ejected.choose(hashKey: $0, tried: [], now: 1)!.port }
        for (b, a) in zip(before, after) {
            if b == 3 { #expect(a != 3) } else { #expect(a == b) }
        }
    }

    @Test func discoveryKeepsTheStateOfTargetsThatStay() {
        var s = settings([8080])
        s.members = [.init(url: try! URLParts.parse("ws://chat.internal:8080/x").get())]
        s.discovery = .dns
        var state = PoolState(settings: s)
        var r = state.replaceAddresses([["10.0.0.1", "10.0.0.2"]])
        #expect(r.added == ["10.0.0.1:8080", "10.0.0.2:8080"] && r.removed == ["chat.internal:8080"])
        state.connectionStarted("10.0.0.1:8080")
        r = state.replaceAddresses([["10.0.0.1", "10.0.0.3", "10.0.0.3"]])
        #expect(r.added == ["10.0.0.3:8080"] && r.removed == ["10.0.0.2:8080"])
        #expect(state.targets.first { $0.id == "10.0.0.1:8080" }?.active == 1)
        #expect(state.replaceAddresses([nil]).added.isEmpty, "a failed lookup keeps the targets")
        #expect(state.targets.count == 2)
        #expect(state.replaceAddresses([["fd00::1"]]).added == ["[fd00::1]:8080"])
    }

    @Test func attemptsDefaultToEveryTargetOnceForAPool() {
        #expect(settings([1]).attempts(targets: 1) == 1)
        #expect(settings([1, 2, 3]).attempts(targets: 3) == 3)
        #expect(settings([1, 2, 3]) { $0.retries = 1 }.attempts(targets: 3) == 2)
        #expect(settings([1]) { $0.discovery = .dns }.attempts(targets: 4) == 4)
    }
}
