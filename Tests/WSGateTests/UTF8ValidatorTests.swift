import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
@testable import WSGate

@Suite("UTF-8 validation and frame rules")
struct UTF8ValidatorTests {
    func validWhole(_ bytes: [UInt8]) -> Bool {
        var v = UTF8Validator()
        return v.feed(bytes) && v.isComplete
    }

    @Test func knownCases() {
        #expect(validWhole(Array("hello κόσμε 😀".utf8)))
        #expect(validWhole([]))
        #expect(!validWhole([0xC0, 0x80]))  // overlong
        #expect(!validWhole([0xED, 0xA0, 0x80]))  // surrogate
        #expect(!validWhole([0xF4, 0x90, 0x80, 0x80]))  // > U+10FFFF
        #expect(!validWhole([0xFF]))
        #expect(!validWhole([0xE2, 0x82]))  // truncated
    }

    @Test func agreesWithTheStandardLibraryOnRandomInput() {
        var rng = SystemRandomNumberGenerator()
        let pieces: [[UInt8]] = [[0x41], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0x80], [0xC0], [0xED, 0xBF, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF], [0xF8], [0xE0, 0x80]]
        for _ in 0..<3000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                bytes += pieces.randomElement(using: &rng)!
                if Bool.random(using: &rng) { bytes += Array(repeating: 0x61, count: Int.random(in: 0...9, using: &rng)) }
            }
            let expected = String(validating: bytes, as: UTF8.self) != nil
            #expect(validWhole(bytes) == expected, "\(bytes)")
            // Split anywhere: same verdict.
            let cut = bytes.isEmpty ? 0 : Int.random(in: 0...bytes.count, using: &rng)
            var v = UTF8Validator()
            let ok = v.feed(Array(bytes[..<cut])) && v.feed(Array(bytes[cut...])) && v.isComplete
            #expect(ok == expected, "\(bytes) cut at \(cut)")
        }
    }

    @Test func failsFastOnTheFirstBadByte() {
        var v = UTF8Validator()
        let first = v.feed([0x61, 0xFF])
        #expect(!first)
        // Stays failed.
        let second = v.feed([0x61])
        #expect(!second)
    }

    @Test func codePointSplitAcrossFragments() {
        var validator = FrameValidator(role: .fromServer, maxMessageBytes: 100)
        let alloc = ByteBufferAllocator()
        var first = WebSocketFrame(fin: false, opcode: .text, data: alloc.buffer(bytes: [0x61, 0xE2, 0x82]))
        var second = WebSocketFrame(fin: true, opcode: .continuation, data: alloc.buffer(bytes: [0xAC]))
        if case .failure = validator.validate(&first) { Issue.record("first fragment rejected") }
        if case .failure = validator.validate(&second) { Issue.record("second fragment rejected") }
        var third = WebSocketFrame(fin: true, opcode: .text, data: alloc.buffer(bytes: [0xE2, 0x82]))
        #expect(validator.validate(&third).failureValue == .invalidUTF8)
    }

    @Test func frameRules() {
        let alloc = ByteBufferAllocator()
        var client = FrameValidator(role: .fromClient, maxMessageBytes: 10)
        var unmasked = WebSocketFrame(fin: true, opcode: .text, data: alloc.buffer(string: "hi"))
        #expect(client.validate(&unmasked).failureValue == .protocolError("client frame not masked"))
        var masked = WebSocketFrame(fin: true, opcode: .binary, maskKey: [1, 2, 3, 4], data: alloc.buffer(bytes: Array(repeating: 0, count: 11)))
        #expect(client.validate(&masked).failureValue == .messageTooBig(limit: 10))
        var server = FrameValidator(role: .fromServer, maxMessageBytes: 10)
        var cont = WebSocketFrame(fin: true, opcode: .continuation, data: alloc.buffer(string: "x"))
        #expect(server.validate(&cont).failureValue == .protocolError("continuation frame without a message to continue"))
        var rsv = WebSocketFrame(fin: true, rsv1: true, opcode: .text, data: alloc.buffer(string: "x"))
        #expect(server.validate(&rsv).failureValue == .protocolError("reserved bits set without a negotiated extension"))
        var reserved = WebSocketFrame(fin: true, opcode: WebSocketOpcode(encodedWebSocketOpcode: 3)!, data: alloc.buffer(string: "x"))
        #expect(server.validate(&reserved).failureValue == .protocolError("reserved opcode 3"))
        var badClose = WebSocketFrame(fin: true, opcode: .connectionClose, data: alloc.buffer(bytes: [0x03, 0xED]))  // 1005
        #expect(server.validate(&badClose).failureValue == .protocolError("invalid close code 1005"))
        var okClose = WebSocketFrame(fin: true, opcode: .connectionClose, data: alloc.buffer(bytes: [0x03, 0xF6]))  // 1014
        if case .success(.close(let code, _)) = server.validate(&okClose) { #expect(code == 1014) } else { Issue.record("1014 must be accepted") }
    }

    @Test func maskingRoundTrips() {
        let alloc = ByteBufferAllocator()
        for length in [0, 1, 3, 7, 8, 9, 15, 16, 17, 100, 1027] {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var buffer = alloc.buffer(bytes: bytes)
            let key: WebSocketMaskingKey = [0xA1, 0x02, 0xF3, 0x44]
            buffer.applyWebSocketMask(key)
            var reference = alloc.buffer(bytes: bytes)
            reference.webSocketMask(key)
            #expect(buffer == reference, "length \(length)")
            buffer.applyWebSocketMask(key)
            #expect(Array(buffer.readableBytesView) == bytes)
        }
    }
}

@Suite("Masked frame writer")
struct MaskedFrameWriterTests {
    /// Serialized frames must decode, with NIO's own decoder, to the original
    /// payload, under a key different from the client's.
    @Test func reMasksInOnePass() throws {
        let alloc = ByteBufferAllocator()
        for length in [0, 5, 125, 126, 1000, 65535, 65536, 70001] {
            let plain = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
            let clientKey: WebSocketMaskingKey = [9, 8, 7, 6]
            var masked = alloc.buffer(bytes: plain)
            masked.applyWebSocketMask(clientKey)
            let newKey: WebSocketMaskingKey = [1, 2, 3, 4]
            let bytes = MaskedFrameWriter.serialize(
                fin: length % 2 == 0, opcode: .binary, payload: masked, payloadMaskedWith: clientKey, newKey: newKey, allocator: alloc)
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
            try channel.writeInbound(bytes)
            let frame = try #require(try channel.readInbound(as: WebSocketFrame.self))
            #expect(frame.maskKey == newKey)
            #expect(frame.fin == (length % 2 == 0))
            #expect(frame.opcode == .binary)
            #expect(Array(frame.unmaskedData.readableBytesView) == plain, "length \(length)")
            _ = try channel.finish()
        }
    }

    @Test func maskedUTF8FeedMatchesPlain() {
        let text = Array("ascii run then κόσμε and 😀 and more ascii text here".utf8)
        let key: WebSocketMaskingKey = [0x37, 0xFA, 0x21, 0x3D]
        var masked = ByteBufferAllocator().buffer(bytes: text)
        masked.applyWebSocketMask(key)
        var v = UTF8Validator()
        let ok = masked.withUnsafeReadableBytes { v.feed($0, maskKey: key.littleEndianWord) }
        #expect(ok && v.isComplete)
        var bad = ByteBufferAllocator().buffer(bytes: text + [0xFF])
        bad.applyWebSocketMask(key)
        var v2 = UTF8Validator()
        let ok2 = bad.withUnsafeReadableBytes { v2.feed($0, maskKey: key.littleEndianWord) }
        #expect(!ok2)
    }
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
}
