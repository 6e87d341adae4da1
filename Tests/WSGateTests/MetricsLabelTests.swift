import Testing
@testable import WSGate
@testable import WSGatePolicy

/// The `code` label of `wsgate_close_events_total`: exact for codes the
/// gateway chooses, bucketed for the application codes a peer chooses.
@Suite("Close-event metric labels")
struct MetricsLabelTests {
    static func event(_ cause: CloseCause, _ code: UInt16) -> CloseEvent {
        CloseEvent(
            timestamp: 0, connectionID: "c", route: "/r", upstream: "u", clientAddress: "a", code: code, reason: "",
            wasClean: true, initiator: cause.initiator, cause: cause, durationMs: 0, messagesIn: 0, messagesOut: 0,
            bytesIn: 0, bytesOut: 0)
    }

    @Test("peer-chosen application codes are bucketed", arguments: [
        (CloseCause.clientClosed, UInt16(3000), "3xxx"), (.clientClosed, 3999, "3xxx"), (.clientClosed, 4000, "4xxx"),
        (.clientClosed, 4999, "4xxx"), (.upstreamClosed, 3123, "3xxx"), (.upstreamClosed, 4321, "4xxx"),
    ])
    func bucketed(cause: CloseCause, code: UInt16, label: String) {
        #expect(GatewayMetrics.codeLabel(Self.event(cause, code)) == label)
    }

    @Test("codes the gateway or the RFC fixes stay exact", arguments: [
        (CloseCause.clientClosed, UInt16(1000), "1000"), (.upstreamClosed, 1011, "1011"), (.upstreamUnreachable, 1014, "1014"),
        (.upstreamUnreachable, 4502, "4502"),  // a close_codes override: from the config, so bounded
        (.shutdown, 1012, "1012"), (.clientGone, 1006, "1006"),
    ])
    func exact(cause: CloseCause, code: UInt16, label: String) {
        #expect(GatewayMetrics.codeLabel(Self.event(cause, code)) == label)
    }
}
