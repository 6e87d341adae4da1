import Testing
@testable import WSGatePolicy

/// Token-bucket maths for `rate_limit`, with the clock passed in.
@Suite("Rate limits")
struct RateLimitTests {
    let second: UInt64 = 1_000_000_000

    @Test func burstThenRate() {
        var bucket = TokenBucket(perSecond: 10, capacity: 20, now: 0)
        #expect(bucket.take(20, now: 0) == 0, "the burst passes")
        #expect(bucket.take(1, now: 0) == second / 10, "one over: a tenth of a second of debt")
        #expect(bucket.take(5, now: second / 10) == second / 2, "refilled 1, took 5: 0.5 s in debt")
        #expect(bucket.take(0, now: second) == 0, "debt paid after the wait")
    }

    @Test func refillStopsAtCapacity() {
        var bucket = TokenBucket(perSecond: 100, capacity: 10, now: 0)
        _ = bucket.take(10, now: 0)
        #expect(bucket.take(10, now: 3600 * second) == 0)
        #expect(bucket.take(1, now: 3600 * second) > 0, "an hour of quiet still only fills the burst")
    }

    @Test func theLimiterWaitsForTheSlowerBucket() {
        var settings = RateLimit()
        settings.messagesPerSecond = 100
        settings.bytesPerSecond = 1000
        var limiter = RateLimiter(settings, now: 0)
        #expect(limiter.take(messages: 1, bytes: 1000, now: 0) == 0)
        #expect(limiter.take(messages: 1, bytes: 500, now: 0) == second / 2, "bytes: 500 over at 1000/s")
        #expect(limiter.description == "over its rate limit (100 messages/s, 1000 bytes/s)")
    }

    /// What a throttled client sends after the batch that put it over is
    /// charged too: the release waits for the whole debt.
    @Test func debtCountsEverythingTakenSince() {
        var settings = RateLimit()
        settings.messagesPerSecond = 20
        settings.burstMessages = 20
        var limiter = RateLimiter(settings, now: 0)
        #expect(limiter.take(messages: 28, bytes: 0, now: 0) == 8 * second / 20, "28 against a burst of 20: 0.4 s")
        _ = limiter.take(messages: 32, bytes: 0, now: 0)  // the rest of that read cycle
        #expect(limiter.debt(now: 8 * second / 20) == 32 * second / 20, "after the first wait, 32 more messages of debt")
        #expect(limiter.debt(now: 40 * second / 20) == 0, "60 messages at 20/s with a burst of 20: free after 2 s")
    }

    @Test func configLoadsAndChecksRateLimits() throws {
        let config = try ConfigLoader.load(yaml: """
            limits: {max_connections_per_ip: 10}
            routes:
              - {path: /a, upstream: 'builtin:echo', rate_limit: {messages_per_second: 50, burst_messages: 100, action: close}}
            """)
        #expect(config.limits.maxConnectionsPerIP == 10)
        let limit = try #require(config.routes[0].rateLimit)
        #expect(limit.messagesPerSecond == 50 && limit.burstMessages == 100 && limit.action == .close && limit.bytesPerSecond == nil)
        do {
            _ = try ConfigLoader.load(yaml: "routes: [{path: /a, upstream: 'builtin:echo', rate_limit: {action: slow}}]")
            Issue.record("accepted")
        } catch {
            #expect(error.problems.map(\.path) == ["routes[0].rate_limit.action", "routes[0].rate_limit"])
        }
    }
}
