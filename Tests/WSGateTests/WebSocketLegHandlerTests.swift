import NIOCore
import NIOEmbedded
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// The leg handler on an `EmbeddedChannel`, in both roles: what it relays,
/// answers and reports for the frames a peer sends.
@Suite("WebSocketLegHandler: one endpoint, both roles")
struct WebSocketLegHandlerTests {
    /// A leg on an embedded channel, with the delegate and a read counter.
    struct Leg {
        let channel: EmbeddedChannel
        let handler: WebSocketLegHandler
        let delegate: RecordingLegDelegate
        let reads: ReadCounter

        init(_ role: WebSocketLegHandler.Role, maxMessageBytes: Int = 1024) throws {
            delegate = RecordingLegDelegate()
            reads = ReadCounter()
            handler = WebSocketLegHandler(role: role, delegate: delegate, maxMessageBytes: maxMessageBytes)
            channel = EmbeddedChannel()
            try channel.pipeline.syncOperations.addHandler(reads)
            try channel.pipeline.syncOperations.addHandler(handler)
        }

        /// The peer sends these frames in one TCP read (`writeInbound` also
        /// ends the read batch).
        func peerSends(_ frames: [WireFrame]) throws {
            try channel.writeInbound(frames.buffer())
        }

        /// Frames the leg wrote toward the peer.
        func written() throws -> [WireFrame] {
            var frames: [WireFrame] = []
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) { frames += try WireFrame.parseAll(buffer) }
            return frames
        }
    }

    static let key: [UInt8] = [0xA1, 0xB2, 0xC3, 0xD4]

    // MARK: Facing a client (.server)

    @Test func clientFramesAreReMaskedWithFreshKeysForAWebSocketUpstream() throws {
        let leg = try Leg(.server(relayAs: .maskedFrames))
        try leg.peerSends([WireFrame.text("hello").masked(by: Self.key), WireFrame.binary([1, 2, 3]).masked(by: Self.key)])
        #expect(leg.delegate.calls.first == .frames(
            [WireFrame(opcode: 0x1, payload: Array("hello".utf8), maskKey: leg.delegate.relayed.first?.maskKey),
             WireFrame(opcode: 0x2, payload: [1, 2, 3], maskKey: leg.delegate.relayed.last?.maskKey)],
            messages: 2, payloadBytes: 8), "both frames in one batch, payload intact")
        for frame in leg.delegate.relayed {
            #expect(frame.maskKey != nil, "frames toward a server must be masked")
            #expect(frame.maskKey != Self.key, "never the client's own key")
        }
        #expect(leg.delegate.calls.last == .readComplete)
    }

    @Test func clientFramesAreUnmaskedForEchoAndHTTP() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        try leg.peerSends([WireFrame.text("frag", fin: false).masked(), WireFrame.continuation("ment").masked()])
        #expect(leg.delegate.relayed == [WireFrame.text("frag", fin: false), WireFrame.continuation("ment")])
        #expect(leg.delegate.calls.first == .frames(leg.delegate.relayed, messages: 1, payloadBytes: 8))
    }

    @Test func clientPingIsAnsweredUnmaskedAfterTheDataBeforeIt() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        try leg.peerSends([WireFrame.text("a").masked(), WireFrame.ping("p").masked(), WireFrame.text("b").masked()])
        #expect(try leg.written() == [WireFrame.pong("p")])
        #expect(leg.delegate.calls == [
            .frames([.text("a")], messages: 1, payloadBytes: 1), .activity,
            .frames([.text("b")], messages: 1, payloadBytes: 1), .readComplete,
        ])
    }

    @Test func unmaskedClientFrameIsAProtocolViolation() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        try leg.peerSends([WireFrame.text("not masked")])
        guard case .violation(.protocolError, framingBroken: false) = leg.delegate.calls.first else {
            Issue.record("expected a protocol violation, got \(leg.delegate.calls)")
            return
        }
    }

    @Test func invalidUTF8ReportsAViolationAndRelaysNothing() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        try leg.peerSends([WireFrame(opcode: 0x1, payload: [0xC3, 0x28]).masked()])
        #expect(leg.delegate.calls.first == .violation(.invalidUTF8, framingBroken: false))
        #expect(leg.delegate.relayed.isEmpty)
    }

    @Test func oversizeFrameIsSkippedAndOnlyACloseFrameIsReadAfterIt() throws {
        let leg = try Leg(.server(relayAs: .plainFrames), maxMessageBytes: 8)
        try leg.peerSends([
            WireFrame.binary(Array(repeating: 7, count: 9)).masked(), WireFrame.text("after").masked(),
            WireFrame(opcode: 0x8, payload: [0x03, 0xE8]).masked(),
        ])
        #expect(leg.delegate.calls.first == .violation(.messageTooBig(limit: 8), framingBroken: false))
        #expect(leg.delegate.relayed.isEmpty, "nothing after an oversized frame is relayed")
        #expect(leg.delegate.calls.contains(.close(code: 1000, reason: "")), "the close reply after it is read: \(leg.delegate.calls)")
    }

    @Test func headerDeclaringFarTooMuchBreaksFramingAndStopsReading() throws {
        let leg = try Leg(.server(relayAs: .plainFrames), maxMessageBytes: 8)
        // 2^40 bytes declared: far over what is skipped.
        try leg.channel.writeInbound(ByteBuffer(bytes: [0x82, 0xFF, 0, 0, 0x01, 0, 0, 0, 0, 0, 1, 2, 3, 4]))
        try leg.peerSends([WireFrame.text("after").masked()])
        #expect(leg.delegate.calls.first == .violation(.messageTooBig(limit: 8), framingBroken: true))
        #expect(leg.delegate.relayed.isEmpty, "nothing after an unparseable frame is read")
    }

    @Test func clientCloseIsReportedAndNothingAfterItIsRead() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        try leg.peerSends([WireFrame.close(4001, "bye").masked(), WireFrame.text("late").masked()])
        #expect(leg.delegate.calls.first == .close(code: 4001, reason: "bye"))
        #expect(leg.delegate.relayed.isEmpty)
    }

    @Test func afterOurCloseDataAndPingsAreDroppedButTheReplyIsRead() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        var written: Bool?
        leg.handler.sendClose(code: CloseCode.goingAway, reason: "gateway shutting down") { written = $0 }
        #expect(written == true)
        #expect(try leg.written() == [WireFrame.close(CloseCode.goingAway, "gateway shutting down")])
        leg.handler.writeFrames(WireFrame.text("too late").buffer())
        #expect(try leg.written().isEmpty, "nothing is written after our close frame")
        try leg.peerSends([WireFrame.text("x").masked(), WireFrame.ping().masked(), WireFrame.close(1000).masked()])
        #expect(leg.delegate.relayed.isEmpty)
        #expect(try leg.written().isEmpty, "no pong after our close")
        #expect(leg.delegate.calls.contains(.close(code: 1000, reason: "")))
        var second: Bool?
        leg.handler.sendClose(code: 1000, reason: "") { second = $0 }
        #expect(second == false, "one close frame per leg")
    }

    @Test func readsAreHeldWhileTheOtherLegCannotTakeMore() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        leg.delegate.mayRead = false
        leg.channel.read()
        #expect(leg.reads.reads == 0)
        leg.delegate.mayRead = true
        leg.handler.resumeReading()
        #expect(leg.reads.reads == 1, "the held read goes out once the other leg can take more")
        leg.handler.resumeReading()
        #expect(leg.reads.reads == 1, "and only once")
    }

    @Test("a ping flood from a peer that does not read costs one pending pong, and reading stops",
          arguments: [WebSocketLegHandler.Role.server(relayAs: .plainFrames), .client])
    func pingFloodIsBounded(role: WebSocketLegHandler.Role) throws {
        let leg = try Leg(role)
        let mask: (WireFrame) -> WireFrame = { if case .server = role { $0.masked() } else { $0 } }
        leg.channel.isWritable = false
        leg.channel.pipeline.fireChannelWritabilityChanged()
        try leg.peerSends((1...500).map { mask(WireFrame.ping("p\($0)")) })
        #expect(try leg.written().isEmpty, "no pong queued while the peer does not read")
        leg.channel.read()
        #expect(leg.reads.reads == 0, "reading stops while a pong is pending")
        leg.handler.resumeReading()
        #expect(leg.reads.reads == 0, "the other leg cannot resume it either")
        leg.channel.isWritable = true
        leg.channel.pipeline.fireChannelWritabilityChanged()
        let pongs = try leg.written()
        #expect(pongs.count == 1, "only the latest ping is answered")
        #expect(pongs.first?.opcode == 0xA)
        #expect(pongs.first?.payload == Array("p500".utf8))
        #expect(leg.reads.reads == 1, "reading resumes with the pong out")
    }

    @Test func framesSplitAcrossReadsAreRelayedWhole() throws {
        let leg = try Leg(.server(relayAs: .plainFrames))
        let bytes = WireFrame.text("split across reads").masked().bytes
        for byte in bytes { try leg.channel.writeInbound(ByteBuffer(bytes: [byte])) }
        #expect(leg.delegate.relayed == [WireFrame.text("split across reads")])
    }

    // MARK: Facing a server (.client)

    @Test func serverFramesGoOnUnchangedInOneSlice() throws {
        let leg = try Leg(.client)
        let frames = [WireFrame.text("one"), WireFrame.binary([9, 9]), WireFrame.text("th", fin: false), WireFrame.continuation("ree")]
        try leg.peerSends(frames)
        #expect(leg.delegate.calls.first == .frames(frames, messages: 3, payloadBytes: 10))
    }

    @Test func nonMinimalLengthIsReEncoded() throws {
        let leg = try Leg(.client)
        var long = WireFrame.text("short")
        long.lengthEncoding = 126
        try leg.peerSends([long])
        #expect(leg.delegate.relayed == [WireFrame.text("short")])
    }

    @Test func serverPingIsAnsweredMasked() throws {
        let leg = try Leg(.client)
        try leg.peerSends([WireFrame.ping("x")])
        let pong = try leg.written()
        #expect(pong.count == 1)
        #expect(pong.first?.opcode == 0xA)
        #expect(pong.first?.payload == Array("x".utf8))
        #expect(pong.first?.maskKey != nil, "frames toward a server are masked")
        #expect(!leg.delegate.calls.contains(.activity), "upstream control frames are not client activity")
    }

    @Test func maskedServerFrameIsAViolationAndStopsReading() throws {
        let leg = try Leg(.client)
        try leg.peerSends([WireFrame.text("masked").masked(), WireFrame.text("after")])
        guard case .violation(.protocolError, framingBroken: false) = leg.delegate.calls.first else {
            Issue.record("expected a protocol violation, got \(leg.delegate.calls)")
            return
        }
        #expect(leg.delegate.relayed.isEmpty)
    }

    @Test func serverCloseIsReported() throws {
        let leg = try Leg(.client)
        try leg.peerSends([WireFrame.text("last"), WireFrame.close(4000, "bye")])
        #expect(leg.delegate.calls.prefix(2) == [.frames([.text("last")], messages: 1, payloadBytes: 4), .close(code: 4000, reason: "bye")])
    }

    @Test func ourCloseTowardAServerIsMaskedAndItsReasonCut() throws {
        let leg = try Leg(.client)
        leg.handler.sendClose(code: CloseCode.goingAway, reason: String(repeating: "é", count: 100))
        let close = try leg.written()
        #expect(close.count == 1)
        #expect(close.first?.maskKey != nil)
        #expect(close.first?.closeCode == CloseCode.goingAway)
        #expect(close.first?.closeReason.utf8.count == 122, "cut to 123 bytes on a character boundary")
    }
}
