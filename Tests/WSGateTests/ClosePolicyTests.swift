import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

@Suite("ClosePolicy: every row of the cause → code table")
struct ClosePolicyTests {
    let policy = ClosePolicy()

    @Test("default codes for causes with a fixed code", arguments: [
        (CloseCause.clientProtocolError, UInt16(1002)),
        (.clientInvalidUTF8, 1007),
        (.clientMessageTooBig, 1009),
        (.upstreamUnreachable, 1014),
        (.upstreamTLSError, 1014),
        (.upstreamTimeout, 1014),
        (.upstreamHandshakeRejected, 1014),
        (.upstreamProtocolError, 1014),
        (.idleTimeout, 1001),
        (.shutdown, 1001),
        (.overloaded, 1013),
        (.internalError, 1011),
    ])
    func fixedDefaults(cause: CloseCause, code: UInt16) {
        let d = policy.decide(cause)
        #expect(d.code == code)
        #expect(d.action == .sendCode)
        #expect(!d.reason.isEmpty)
        #expect(d.reason.utf8.count <= 123)
    }

    @Test func clientClosedEchoesCodeAndReason() {
        let d = policy.decide(.clientClosed, CloseDetails(peerCode: 4001, peerReason: "done"))
        #expect(d == CloseDecision(code: 4001, reason: "done", action: .sendCode))
        let empty = policy.decide(.clientClosed, CloseDetails(peerCode: nil))
        #expect(empty == CloseDecision(code: 1005, reason: "", action: .sendEmpty))
    }

    @Test func upstreamClosedRelaysCodeAnd1005BecomesEmptyFrame() {
        #expect(policy.decide(.upstreamClosed, CloseDetails(peerCode: 4000, peerReason: "bye"))
            == CloseDecision(code: 4000, reason: "bye", action: .sendCode))
        #expect(policy.decide(.upstreamClosed, CloseDetails(peerCode: nil))
            == CloseDecision(code: 1005, reason: "", action: .sendEmpty))
        #expect(policy.decide(.upstreamClosed, CloseDetails(peerCode: 1013, peerReason: "later")).code == 1013)
    }

    @Test func clientGoneSendsNothing() {
        #expect(policy.decide(.clientGone) == CloseDecision(code: 1006, reason: "", action: .none))
    }

    @Test func upstreamResetDropsTCPByDefault() {
        #expect(policy.decide(.upstreamReset) == CloseDecision(code: 1006, reason: "", action: .abort))
    }

    @Test("upstream_http_error maps the status", arguments: [
        (500, UInt16(1011)), (502, 1014), (504, 1014), (503, 1013), (501, 1011), (599, 1011),
        (400, 1008), (401, 1008), (403, 1008), (404, 1008), (429, 1008),
    ])
    func httpStatuses(status: Int, code: UInt16) {
        let d = policy.decide(.upstreamHTTPError, CloseDetails(httpStatus: status))
        #expect(d.code == code)
        #expect(d.reason.contains(String(status)))
    }

    @Test func shutdownUsesConfiguredCode() {
        let restart = ClosePolicy(shutdownCode: 1012)
        #expect(restart.decide(.shutdown).code == 1012)
    }

    @Test func overridesReplaceDefaults() {
        let p = ClosePolicy(overrides: [.upstreamReset: 1014, .upstreamUnreachable: 1011, .upstreamHTTPError: 4500, .overloaded: 1006])
        #expect(p.decide(.upstreamReset) == CloseDecision(code: 1014, reason: "upstream connection reset", action: .sendCode))
        #expect(p.decide(.upstreamUnreachable).code == 1011)
        #expect(p.decide(.upstreamHTTPError, CloseDetails(httpStatus: 503)).code == 4500)
        #expect(p.decide(.overloaded) == CloseDecision(code: 1006, reason: "", action: .abort))
        // Not overridden: unchanged.
        #expect(p.decide(.upstreamTimeout).code == 1014)
    }

    @Test func neverSendsReservedCodesInAFrame() {
        for cause in CloseCause.allCases {
            for peer in [nil, UInt16(1000), 4000] {
                let d = policy.decide(cause, CloseDetails(peerCode: peer, httpStatus: 502))
                if d.action == .sendCode { #expect(![1005, 1006, 1015].contains(d.code), "\(cause)") }
            }
        }
    }

    @Test func allowedOverrideCodes() {
        for code in [1000, 1001, 1002, 1003, 1006, 1007, 1011, 1014, 3000, 4999] { #expect(ClosePolicy.isAllowedOverride(code)) }
        for code in [999, 1004, 1005, 1015, 1016, 2999, 5000] { #expect(!ClosePolicy.isAllowedOverride(code)) }
    }

    @Test func initiators() {
        #expect(CloseCause.clientClosed.initiator == .client)
        #expect(CloseCause.clientGone.initiator == .client)
        #expect(CloseCause.upstreamClosed.initiator == .upstream)
        #expect(CloseCause.upstreamReset.initiator == .upstream)
        #expect(CloseCause.upstreamUnreachable.initiator == .gateway)
        #expect(CloseCause.clientProtocolError.initiator == .gateway)
    }
}

@Suite("Close reasons")
struct CloseReasonTests {
    @Test func shortReasonUnchanged() {
        #expect(CloseReason.truncate("upstream unreachable") == "upstream unreachable")
    }

    @Test func cutsOnCharacterBoundary() {
        // 41 × "€" (3 bytes each) = 123 bytes exactly; one more must be dropped whole.
        let euros = String(repeating: "€", count: 42)
        let cut = CloseReason.truncate(euros)
        #expect(cut.utf8.count == 123)
        #expect(cut == String(repeating: "€", count: 41))
        // 4-byte scalars: 30 × 4 = 120; the 31st would make 124.
        let emoji = "a" + String(repeating: "😀", count: 40)
        let cut2 = CloseReason.truncate(emoji)
        #expect(cut2.utf8.count == 121)
        #expect(cut2.unicodeScalars.allSatisfy { $0 == "a" || $0 == "😀" })
        // A 2-byte scalar straddling the limit.
        let mixed = String(repeating: "a", count: 122) + "é"
        #expect(CloseReason.truncate(mixed) == String(repeating: "a", count: 122))
    }
}
