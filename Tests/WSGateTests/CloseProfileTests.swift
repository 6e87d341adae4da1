import Testing
@testable import WSGatePolicy
@testable import WSGateProtocol

/// `close_profile` and per-route `close_codes`: every cause of the table
/// through each profile's `ClosePolicy`.
@Suite("Close profiles")
struct CloseProfileTests {
    /// (cause, details, iana, legacy, app)
    static let rows: [(CloseCause, CloseDetails, UInt16, UInt16, UInt16)] = [
        (.clientProtocolError, .init(), 1002, 1002, 1002),
        (.clientInvalidUTF8, .init(), 1007, 1007, 1007),
        (.clientMessageTooBig, .init(), 1009, 1009, 1009),
        (.upstreamUnreachable, .init(), 1014, 1011, 4502),
        (.upstreamTLSError, .init(), 1014, 1011, 4502),
        (.upstreamTimeout, .init(), 1014, 1011, 4502),
        (.upstreamHandshakeRejected, .init(httpStatus: 403), 1014, 1011, 4502),
        (.upstreamProtocolError, .init(), 1014, 1011, 4502),
        (.upstreamHTTPError, .init(httpStatus: 500), 1011, 1011, 4500),
        (.upstreamHTTPError, .init(httpStatus: 502), 1014, 1011, 4502),
        (.upstreamHTTPError, .init(httpStatus: 503), 1013, 1011, 4503),
        (.upstreamHTTPError, .init(httpStatus: 504), 1014, 1011, 4502),
        (.upstreamHTTPError, .init(httpStatus: 404), 1008, 1008, 1008),
        (.idleTimeout, .init(), 1001, 1001, 1001),
        (.overloaded, .init(), 1013, 1011, 4503),
        (.internalError, .init(), 1011, 1011, 4500),
        (.upstreamClosed, .init(peerCode: 1014, peerReason: "x"), 1014, 1011, 4502),
        (.upstreamClosed, .init(peerCode: 4000, peerReason: "bye"), 4000, 4000, 4000),
        (.clientClosed, .init(peerCode: 1001, peerReason: ""), 1001, 1001, 1001),
    ]

    @Test func everyRowThroughEveryProfile() {
        for (cause, details, iana, legacy, app) in Self.rows {
            for (profile, expected) in [(CloseProfile.iana, iana), (.legacy, legacy), (.app, app)] {
                let d = ClosePolicy(profile: profile).decide(cause, details)
                #expect(d.code == expected, "\(cause) \(details) with \(profile): \(d.code)")
                // The reason says what happened, whatever the code.
                #expect(d.reason == ClosePolicy().decide(cause, details).reason)
            }
        }
    }

    @Test func shutdownWithServiceRestartIsGoingAwayForLegacyClients() {
        #expect(ClosePolicy(shutdownCode: 1012, profile: .legacy).decide(.shutdown).code == 1001)
        #expect(ClosePolicy(shutdownCode: 1012, profile: .iana).decide(.shutdown).code == 1012)
        #expect(ClosePolicy(shutdownCode: 1012, profile: .app).decide(.shutdown).code == 1012)
    }

    @Test func routeOverridesAreFinalAndGlobalOnesGoThroughTheProfile() {
        let policy = ClosePolicy(
            overrides: [.upstreamReset: 1014, .idleTimeout: 4001], profile: .app, routeOverrides: [.upstreamTimeout: 4504])
        #expect(policy.decide(.upstreamTimeout).code == 4504)
        #expect(policy.decide(.upstreamReset).code == 4502, "global 1014, then the app profile")
        #expect(policy.decide(.idleTimeout).code == 4001)
        #expect(ClosePolicy(profile: .legacy, routeOverrides: [.upstreamReset: 1006]).decide(.upstreamReset).action == .abort)
    }

    @Test func configLoadsProfilesAndRouteCodes() throws {
        let config = try ConfigLoader.load(yaml: """
            close_codes: {upstream_reset: 1014}
            routes:
              - {path: /a, upstream: 'ws://h:1/', close_profile: legacy, close_codes: {upstream_timeout: 4504}}
              - {path: /b, upstream: 'ws://h:1/'}
            """)
        #expect(config.routes[0].closeProfile == .legacy)
        #expect(config.routes[0].closeCodes == [.upstreamTimeout: 4504])
        #expect(config.routes[1].closeProfile == .iana)
        let a = ClosePolicy(config: config, route: config.routes[0])
        #expect(a.decide(.upstreamTimeout).code == 4504)
        #expect(a.decide(.upstreamReset).code == 1011)
        #expect(throws: ConfigError.self) {
            try ConfigLoader.load(yaml: "routes: [{path: /a, upstream: 'ws://h:1/', close_profile: modern}]")
        }
        do {
            _ = try ConfigLoader.load(yaml: "routes: [{path: /a, upstream: 'ws://h:1/', close_codes: {upstream_reset: 1005}}]")
            Issue.record("accepted 1005")
        } catch {
            #expect(error.problems.map(\.path) == ["routes[0].close_codes.upstream_reset"])
        }
    }
}
