import Foundation
import Logging
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

@Suite("Log lines")
struct LogFormatTests {
    func sampleEvent(reason: String, error: String? = nil) -> CloseEvent {
        CloseEvent(
            timestamp: 1_795_615_387_412, connectionID: "01JDTEST", route: "/chat/*", upstream: "ws://127.0.0.1:9001/chat",
            clientAddress: "203.0.113.7:51234", code: 1014, reason: reason, wasClean: true, initiator: .gateway,
            cause: .upstreamUnreachable, upstreamCode: nil, upstreamReason: nil, upstreamStatus: nil,
            error: error, durationMs: 3, messagesIn: 1, messagesOut: 2, bytesIn: 3, bytesOut: 4)
    }

    @Test func closeLineHasEveryFieldInOrder() throws {
        let line = sampleEvent(reason: "upstream unreachable", error: "connect(127.0.0.1:9001): Connection refused").jsonLine()
        #expect(line.hasPrefix(#"{"ts":"2026-11-25T14:03:07.412Z","level":"info","event":"websocket_close","connection_id":"01JDTEST","route":"/chat/*""#))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        let expected = ["ts", "level", "event", "connection_id", "route", "upstream", "target", "attempts", "client_addr", "subject", "code", "reason",
                        "was_clean", "initiator", "cause", "upstream_code", "upstream_reason", "upstream_status",
                        "error", "duration_ms", "messages_in", "messages_out", "bytes_in", "bytes_out"]
        #expect(Set(object.keys) == Set(expected))
        // In this order on the line (the parsed object has no order).
        let positions = expected.map { key in line.range(of: "\"\(key)\":")?.lowerBound }
        #expect(!positions.contains(nil))
        let found = positions.compactMap { $0 }
        #expect(found == found.sorted(), "fields out of order: \(line)")
        #expect(object["code"] as? Int == 1014)
        #expect(object["was_clean"] as? Bool == true)
        #expect(object["upstream_code"] is NSNull)
        #expect(object["cause"] as? String == "upstream_unreachable")
        // Contract §8: always present, null when not used.
        #expect(object["target"] is NSNull && object["attempts"] is NSNull && object["subject"] is NSNull)
    }

    @Test func hostileStringsStayOnOneLineAndRoundTrip() throws {
        let hostile = "quote\" back\\slash\nnew line\r\u{0}nul\u{1b}[31m esc \u{7f} \u{2028}sep \"},\"cause\":\"forged"
        let line = sampleEvent(reason: hostile, error: hostile).jsonLine()
        #expect(!line.contains("\n"))
        #expect(!line.contains("\r"))
        #expect(!line.unicodeScalars.contains { $0.value < 0x20 || $0 == "\u{2028}" })
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["reason"] as? String == hostile)
        #expect(object["error"] as? String == hostile)
        #expect(object["cause"] as? String == "upstream_unreachable")
    }

    /// The quoting copies the runs between escapes as bytes: characters
    /// next to an escape (multi-byte, combining, near-miss U+2027/U+202A
    /// that share U+2028's first bytes) come through whole.
    @Test func quotingKeepsEveryCharacterAroundEscapes() throws {
        let samples = [
            "\"\u{301}", "é\"ü\n😀\u{2028}\u{2029}x\u{7f}", "\u{2027}\u{202A}\u{2028}", "tab\there\u{0}", "", "plain ascii",
            "\u{2028}", "a\u{2029}", "\\\"",
        ]
        for sample in samples {
            let quoted = JSONText.quoted(sample)
            #expect(!quoted.unicodeScalars.contains { $0.value < 0x20 || $0 == "\u{2028}" || $0 == "\u{2029}" || $0 == "\u{7f}" })
            let parsed = try JSONSerialization.jsonObject(with: Data("[\(quoted)]".utf8)) as? [String]
            #expect(parsed == [sample], "\(quoted)")
        }
    }

    @Test func logHandlerWritesTypedJSON() throws {
        let line = GatewayLogHandler.jsonLine(level: .info, message: "listening", metadata: [
            "port": .stringConvertible(8080), "host": .string("0.0.0.0"), "tls": .stringConvertible(false),
        ])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["event"] as? String == "listening")
        #expect(object["port"] as? Int == 8080)
        #expect(object["tls"] as? Bool == false)
        #expect(object["level"] as? String == "info")
    }

    @Test func textFormatQuotesHostileValues() {
        let line = GatewayLogHandler.textLine(level: .warning, message: "x", metadata: ["k": .string("a b\nc=d")])
        #expect(!line.contains("\n"))
        #expect(line.hasSuffix(#"k="a b\nc=d""#))
    }

    @Test func timestampFormat() {
        #expect(Timestamp.iso8601(millisecondsSinceEpoch: 0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.iso8601(millisecondsSinceEpoch: 1_795_615_387_412) == "2026-11-25T14:03:07.412Z")
    }

    @Test func connectionIDsAreULIDs() {
        let a = ConnectionID.make(milliseconds: 1_795_615_387_412)
        let b = ConnectionID.make(milliseconds: 1_795_615_387_413)
        #expect(a.count == 26)
        #expect(a < b)
        #expect(a.hasPrefix("01M"))  // 2026 in Crockford base32 (48-bit ms)
        #expect(ConnectionID.make() != ConnectionID.make())
    }
}
