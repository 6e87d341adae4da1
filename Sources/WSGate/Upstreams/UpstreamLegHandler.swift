import NIOCore
import NIOWebSocket

/// The frame handler on an upstream WebSocket channel: frames the server's
/// byte stream, validates it, answers pings, holds reads while the client is
/// not writable, and reports everything else to its `WebSocketUpstream`.
///
/// It sits where NIO's frame decoder was (removed at the upgrade) and writes
/// bytes, not `WebSocketFrame`s. A server's data frames are exactly what the
/// client must receive (unmasked), so after validation the bytes of each run
/// of consecutive data frames go to the client as one slice of the read
/// buffer: no copy, no allocation, one write per read batch.
final class UpstreamLegHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let leg: WebSocketUpstream
    private var reader: FrameReader
    private var validator: FrameValidator
    private var context: ChannelHandlerContext?
    private var readHeld = false
    private var needsFlush = false
    private var inputDone = false
    private var closeSent = false
    private var maskingKeys = MaskingKeySource()

    init(leg: WebSocketUpstream, maxMessageBytes: Int) {
        self.leg = leg
        self.reader = FrameReader(maxFrameBytes: maxMessageBytes)
        self.validator = FrameValidator(role: .fromServer, maxMessageBytes: maxMessageBytes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !inputDone else { return }
        reader.append(unwrapInboundIn(data))
        // Reader indices below refer to this buffer (nothing is appended
        // until the next read).
        guard let source = reader.bytes else { return }
        var run = FrameRun()
        while !inputDone {
            switch reader.next() {
            case .needMoreBytes:
                run.send(from: source, to: leg)
                return
            case .framingError(let violation):
                inputDone = true
                run.send(from: source, to: leg)
                leg.violation(violation, framingBroken: true)
            case .frame(let header, var payload, let start):
                switch validator.validate(header, payload: &payload) {
                case .success(.data) where header.hasMinimalLength:
                    run.add(start: start, end: start + header.headerLength + payload.readableBytes, fin: header.fin, payloadBytes: payload.readableBytes)
                case .success(.data):
                    // A length in a longer encoding than needed is not valid
                    // from a sender: re-encode this frame instead of passing it on.
                    run.send(from: source, to: leg)
                    let frame = MaskedFrameWriter.serialize(
                        fin: header.fin, opcode: header.opcode, payload: payload, payloadMaskedWith: nil, newKey: nil,
                        allocator: context.channel.allocator)
                    leg.received(FrameBatch(bytes: frame, messages: header.fin ? 1 : 0, payloadBytes: payload.readableBytes))
                case .success(.ping(let payload)):
                    run.send(from: source, to: leg)
                    guard !closeSent else { continue }
                    context.write(wrapOutboundOut(serialize(opcode: .pong, payload: payload, context: context)), promise: nil)
                    needsFlush = true
                case .success(.pong):
                    run.send(from: source, to: leg)
                case .success(.close(let code, let reason)):
                    inputDone = true
                    run.send(from: source, to: leg)
                    leg.peerClosed(code: code, reason: reason)
                case .failure(let violation):
                    inputDone = true
                    run.send(from: source, to: leg)
                    leg.violation(violation, framingBroken: false)
                }
            }
        }
        run.send(from: source, to: leg)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        leg.readComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        leg.writabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        leg.noteIOError(error)
    }

    func read(context: ChannelHandlerContext) {
        if leg.mayRead {
            context.read()
        } else {
            readHeld = true
        }
    }

    // MARK: Called by the leg

    /// A control frame masked with a fresh key, in a buffer of its own.
    private func serialize(opcode: WebSocketOpcode, payload: ByteBuffer, context: ChannelHandlerContext) -> ByteBuffer {
        MaskedFrameWriter.serialize(
            fin: true, opcode: opcode, payload: payload, payloadMaskedWith: nil,
            newKey: maskingKeys.nextKey(), allocator: context.channel.allocator)
    }

    /// Relays client data frames, already masked with fresh keys. Not flushed.
    func writeFrames(_ bytes: ByteBuffer) {
        guard !closeSent, let context else { return }
        context.write(wrapOutboundOut(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func resumeReading() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    /// Writes and flushes a close frame; `thenCloseTCP` closes the channel
    /// once it is written (used when the peer's stream can't be parsed anymore).
    func writeClose(code: UInt16?, reason: String, thenCloseTCP: Bool = false) {
        guard let context, !closeSent else {
            if thenCloseTCP { context?.close(promise: nil) }
            return
        }
        closeSent = true
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            payload.writeInteger(code)
            payload.writeString(CloseReason.truncate(reason))
        }
        let frame = serialize(opcode: .connectionClose, payload: payload, context: context)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in
            if thenCloseTCP { channel.close(promise: nil) }
        }
        if readHeld { resumeReading() }
    }
}

/// A run of consecutive data frames in one read buffer, sent on as one slice.
struct FrameRun {
    private var start = -1
    private var end = 0
    private var messages = 0
    private var payloadBytes = 0

    @inline(__always)
    mutating func add(start frameStart: Int, end frameEnd: Int, fin: Bool, payloadBytes bytes: Int) {
        if start < 0 { start = frameStart }
        end = frameEnd
        if fin { messages += 1 }
        payloadBytes += bytes
    }

    mutating func send(from source: ByteBuffer, to leg: WebSocketUpstream) {
        guard start >= 0 else { return }
        leg.received(FrameBatch(bytes: source.getSlice(at: start, length: end - start)!, messages: messages, payloadBytes: payloadBytes))
        self = FrameRun()
    }
}
