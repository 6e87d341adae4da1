import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

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
        var rng = SeededRandom(test: "UTF8ValidatorTests.agreesWithTheStandardLibraryOnRandomInput")
        let pieces: [[UInt8]] = [[0x41], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0x80], [0xC0], [0xED, 0xBF, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF], [0xF8], [0xE0, 0x80]]
        for _ in 0..<3000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...12, using: &rng) {
                bytes += pieces.randomElement(using: &rng)!
                if Bool.random(using: &rng) { bytes += Array(repeating: 0x61, count: Int.random(in: 0...9, using: &rng)) }
            }
            let expected = String(validating: bytes, as: UTF8.self) != nil
            #expect(validWhole(bytes) == expected, "\(bytes) (seed \(rng.seed))")
            // Split anywhere: same verdict.
            let cut = bytes.isEmpty ? 0 : Int.random(in: 0...bytes.count, using: &rng)
            var v = UTF8Validator()
            let ok = v.feed(Array(bytes[..<cut])) && v.feed(Array(bytes[cut...])) && v.isComplete
            #expect(ok == expected, "\(bytes) cut at \(cut) (seed \(rng.seed))")
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
        for length in [0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 127, 129, 1027, 4099] {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var buffer = alloc.buffer(bytes: bytes)
            let key: WebSocketMaskingKey = [0xA1, 0x02, 0xF3, 0x44]
            buffer.applyWebSocketMask(key)
            var reference = alloc.buffer(bytes: bytes)
            reference.webSocketMask(key)
            #expect(buffer == reference, "length \(length)")
            buffer.applyWebSocketMask(key)
            #expect(Array(buffer.readableBytesView) == bytes)
            // Not in place, from an odd offset (unaligned loads), after an odd prefix (unaligned stores).
            var source = alloc.buffer(bytes: [0x55] + bytes)
            source.moveReaderIndex(forwardBy: 1)
            var out = alloc.buffer(bytes: [0x01, 0x02, 0x03])
            out.writeMasked(source, key: key.littleEndianWord)
            #expect(Array(out.readableBytesView.dropFirst(3)) == Array(reference.readableBytesView), "writeMasked, length \(length)")
        }
    }
    /// Fail-fast inside a frame: `checkPartial` over arrived prefixes of a
    /// masked text frame, cut at random points (so at every key position),
    /// agrees with the whole-frame verdict: never false for valid text, and
    /// false by the time the first invalid byte has arrived.
    @Test func partialFramesFailFastAndAgreeWithWholeFrames() {
        var rng = SeededRandom(test: "UTF8ValidatorTests.partialFramesFailFastAndAgreeWithWholeFrames")
        let pieces: [[UInt8]] = [[0x41], [0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80]]
        for _ in 0..<1000 {
            var text: [UInt8] = []
            for _ in 0..<Int.random(in: 1...20, using: &rng) {
                text += pieces.randomElement(using: &rng)!
                text += Array(repeating: 0x62, count: Int.random(in: 0...11, using: &rng))
            }
            // The first byte at which no valid continuation exists.
            var probe = UTF8Validator()
            var firstBad: Int? = nil
            for (i, b) in text.enumerated() where !probe.feed([b]) {
                firstBad = i
                break
            }
            let key = UInt32.random(in: 0...UInt32.max, using: &rng)
            let masked = text.enumerated().map { i, b in b ^ UInt8(truncatingIfNeeded: key >> UInt32((i & 3) * 8)) }
            let header = FrameHeader(firstByte: 0x81, maskKey: key, headerLength: 6, payloadLength: UInt64(text.count + 1))
            var validator = FrameValidator(role: .fromClient, maxMessageBytes: 1 << 20)
            var arrived = 0
            var refusedAt: Int? = nil
            var before = 0  // what had arrived at the check before the refusal
            while arrived < text.count {
                before = arrived
                arrived = min(text.count, arrived + Int.random(in: 1...7, using: &rng))
                let buffer = ByteBuffer(bytes: masked[..<arrived])
                if !validator.checkPartial(header, arrived: buffer) {
                    refusedAt = arrived
                    break
                }
            }
            if let firstBad {
                // Refused by the first check that saw the bad byte.
                #expect(refusedAt != nil && before <= firstBad && refusedAt! > firstBad,
                        "\(text): bad at \(firstBad), refused at \(String(describing: refusedAt))")
            } else {
                #expect(refusedAt == nil, "\(text) refused at \(refusedAt!)")
            }
        }
    }

}

/// The validator takes a parsed header and a payload; these tests describe
/// frames with NIO's `WebSocketFrame` for readability.
extension FrameValidator {
    mutating func validate(_ frame: inout WebSocketFrame) -> Result<InboundFrame, FrameViolation> {
        var first = UInt8(webSocketOpcode: frame.opcode) | (frame.fin ? 0x80 : 0)
        if frame.rsv1 { first |= 0x40 }
        if frame.rsv2 { first |= 0x20 }
        if frame.rsv3 { first |= 0x10 }
        let header = FrameHeader(
            firstByte: first, maskKey: frame.maskKey?.littleEndianWord, headerLength: 0,
            payloadLength: UInt64(frame.data.readableBytes))
        var payload = frame.data
        return validate(header, payload: &payload)
    }
}

@Suite("Frame reader")
struct FrameReaderTests {
    /// Frames written by NIO's encoder, fed in pieces of every size, come out
    /// of the reader whole, with the header NIO wrote and the payload bytes.
    @Test func readsWhatNIOWrites() throws {
        let alloc = ByteBufferAllocator()
        let lengths = [0, 1, 125, 126, 127, 65535, 65536, 70001]
        var frames: [WebSocketFrame] = []
        for (i, length) in lengths.enumerated() {
            let payload = alloc.buffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ i) })
            let key: WebSocketMaskingKey? = i % 2 == 0 ? [UInt8(i), 2, 3, 4] : nil
            frames.append(WebSocketFrame(fin: i % 3 != 0, opcode: i % 2 == 0 ? .binary : .text, maskKey: key, data: payload))
        }
        let encoder = EmbeddedChannel(handler: WebSocketFrameEncoder())
        var wire = alloc.buffer(capacity: 0)
        for frame in frames {
            try encoder.writeOutbound(frame)
            while var part = try encoder.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
        }
        _ = try encoder.finish()

        for chunk in [1, 7, 1000, wire.readableBytes] {
            var reader = FrameReader(maxFrameBytes: 1 << 20)
            var source = wire
            var decoded: [(FrameHeader, ByteBuffer)] = []
            while source.readableBytes > 0 {
                reader.append(source.readSlice(length: min(chunk, source.readableBytes))!)
                while case .frame(let header, let payload, _) = reader.next() { decoded.append((header, payload)) }
            }
            #expect(decoded.count == frames.count, "chunk \(chunk)")
            #expect(reader.bufferedBytes == 0)
            for (frame, (header, payload)) in zip(frames, decoded) {
                var payload = payload
                if let key = header.maskKey { payload.applyWebSocketMask(word: key) }  // NIO masked it on the wire
                #expect(header.fin == frame.fin)
                #expect(header.opcode == frame.opcode)
                #expect(header.maskKey == frame.maskKey?.littleEndianWord)
                #expect(payload == frame.data, "chunk \(chunk), length \(frame.data.readableBytes)")
            }
        }
    }

    /// What cannot be parsed past is reported from the header alone, before
    /// the payload arrives (a 2^40-byte length must not be waited for).
    @Test func framingErrorsFromTheHeader() {
        let alloc = ByteBufferAllocator()
        var big = FrameReader(maxFrameBytes: 1000)
        big.append(alloc.buffer(bytes: [0x82, 0x7F, 0, 0, 0x01, 0, 0, 0, 0, 0]))
        guard case .framingError(.messageTooBig(limit: 1000)) = big.next() else { Issue.record("oversize"); return }
        var fragmentedPing = FrameReader(maxFrameBytes: 1000)
        fragmentedPing.append(alloc.buffer(bytes: [0x09, 0x00]))
        guard case .framingError(.protocolError("fragmented control frame")) = fragmentedPing.next() else { Issue.record("ping"); return }
        var longClose = FrameReader(maxFrameBytes: 1000)
        longClose.append(alloc.buffer(bytes: [0x88, 0x7E, 0x00, 0x7E]))
        guard case .framingError(.protocolError("control frame over 125 bytes")) = longClose.next() else { Issue.record("close"); return }
        var partial = FrameReader(maxFrameBytes: 1000)
        partial.append(alloc.buffer(bytes: [0x82, 0x7E, 0x03]))
        guard case .needMoreBytes = partial.next() else { Issue.record("partial"); return }
    }

    /// A frame a little over the limit is dropped as it arrives, in any
    /// split, and the frame after it (the client's close reply) is read.
    @Test func oversizedFrameIsSkippedAndTheNextOneRead() {
        let alloc = ByteBufferAllocator()
        let limit = 1000
        var bytes: [UInt8] = [0x81, 0x7E, 0x07, 0xD0] + [UInt8](repeating: 0x61, count: 2000)  // text, 2000 bytes
        bytes += [0x88, 0x02, 0x03, 0xE8]  // close 1000
        for chunk in [1, 3, 7, 999, 4000] {
            var reader = FrameReader(maxFrameBytes: limit)
            var results: [String] = []
            var i = 0
            while i < bytes.count {
                reader.append(alloc.buffer(bytes: bytes[i..<min(i + chunk, bytes.count)]))
                i += chunk
                loop: while true {
                    switch reader.next() {
                    case .needMoreBytes: break loop
                    case .oversized(.messageTooBig(let l)): results.append("oversized \(l)")
                    case .frame(let header, _, _): results.append("frame \(header.opcode)")
                    default: results.append("other")
                    }
                }
                #expect(reader.bufferedBytes <= max(chunk, 4), "chunk \(chunk): skipped bytes are not held")
            }
            #expect(results == ["oversized 1000", "frame \(WebSocketOpcode.connectionClose)"], "chunk \(chunk)")
        }
        // Far over the skippable size: the parse ends there, as before.
        var huge = FrameReader(maxFrameBytes: limit)
        huge.append(alloc.buffer(bytes: [0x82, 0x7F, 0, 0, 0x01, 0, 0, 0, 0, 0]))
        guard case .framingError(.messageTooBig(limit: 1000)) = huge.next() else { Issue.record("huge"); return }
    }

    /// A header alone must not make the reader reserve the length it declares.
    @Test func declaredLengthIsNotReservedUpFront() {
        var reader = FrameReader(maxFrameBytes: 1 << 30)
        var header = ByteBufferAllocator().buffer(bytes: [0x82, 0xFF, 0, 0, 0, 0, 0x3F, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4])
        header.writeBytes([UInt8](repeating: 0, count: 100))
        reader.append(header)
        guard case .needMoreBytes = reader.next() else { Issue.record("expected to wait for the payload"); return }
        #expect(reader.bytes!.capacity <= 1 << 17)
    }

    @Test func minimalLengthEncoding() {
        func header(_ bytes: [UInt8]) -> FrameHeader {
            ByteBufferAllocator().buffer(bytes: bytes).withUnsafeReadableBytes { FrameHeader.parse($0)! }
        }
        #expect(header([0x81, 0x05]).hasMinimalLength)
        #expect(header([0x81, 0x7E, 0x00, 0x7E]).hasMinimalLength)
        #expect(!header([0x81, 0x7E, 0x00, 0x05]).hasMinimalLength)
        #expect(header([0x81, 0xFE, 0xFF, 0xFF, 1, 2, 3, 4]).hasMinimalLength)
        #expect(!header([0x81, 0x7F, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).hasMinimalLength)
        #expect(header([0x81, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).hasMinimalLength)
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

    /// Toward a client (no new key) the frame goes out unmasked; frames
    /// appended one after another into one buffer (a relay batch) all decode,
    /// whatever the length class of the one before.
    @Test func unmasksAndAppendsFramesBackToBack() throws {
        let alloc = ByteBufferAllocator()
        let lengths = [0, 125, 126, 65535, 65536, 3, 70001, 1]
        let clientKey: WebSocketMaskingKey = [0xA1, 0x00, 0x5C, 0xFF]
        let fresh: WebSocketMaskingKey = [7, 7, 0, 1]
        for newKey in [nil, fresh] {
            var out = alloc.buffer(capacity: 1)
            var payloads: [[UInt8]] = []
            for (n, length) in lengths.enumerated() {
                let plain = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n) }
                payloads.append(plain)
                var masked = alloc.buffer(bytes: plain)
                masked.applyWebSocketMask(clientKey)
                FrameWriter.append(to: &out, firstByte: 0x80 | 0x2, payload: masked,
                                   payloadKey: clientKey.littleEndianWord, newKey: newKey?.littleEndianWord)
            }
            // RFC 6455 §5.2: the minimal length encoding (NIO's decoder
            // accepts a longer one, so the sizes are checked here).
            let headerSizes = [2, 2, 4, 4, 10, 2, 10, 2].map { $0 + (newKey == nil ? 0 : 4) }
            #expect(out.readableBytes == headerSizes.reduce(0, +) + lengths.reduce(0, +))
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
            try channel.writeInbound(out)
            for plain in payloads {
                let frame = try #require(try channel.readInbound(as: WebSocketFrame.self))
                #expect(frame.maskKey == newKey)
                #expect(frame.fin && frame.opcode == .binary)
                #expect(Array(frame.unmaskedData.readableBytesView) == plain, "length \(plain.count), key \(String(describing: newKey))")
            }
            #expect(try channel.readInbound(as: WebSocketFrame.self) == nil)
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
