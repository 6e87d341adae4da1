import NIOCore
import NIOWebSocket

/// The frame handler on an upstream WebSocket channel: validates the
/// server's frames, answers pings, holds reads while the client is not
/// writable, and reports everything else to its `WebSocketUpstream`.
///
/// Outbound it serializes frames itself with `MaskedFrameWriter` and writes
/// the bytes through a `RawFrameOutlet` before the frame encoder, bypassing NIO's
/// `WebSocketFrameEncoder`: relayed client payloads are re-masked in the same
/// pass that copies them out.
final class UpstreamLegHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let leg: WebSocketUpstream
    private var validator: FrameValidator
    private var context: ChannelHandlerContext?
    private var readHeld = false
    private var needsFlush = false
    private var inputDone = false
    private var closeSent = false
    private var maskingKeys = MaskingKeySource()

    private let outlet: RawFrameOutlet

    init(leg: WebSocketUpstream, outlet: RawFrameOutlet, maxMessageBytes: Int) {
        self.leg = leg
        self.outlet = outlet
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
        var frame = unwrapInboundIn(data)
        switch validator.validate(&frame) {
        case .success(.data(let frame)):
            leg.received(frame)
        case .success(.ping(let payload)):
            guard !closeSent else { return }
            outlet.write(serialize(fin: true, opcode: .pong, payload: payload, maskedWith: nil, context: context))
            needsFlush = true
        case .success(.pong):
            break
        case .success(.close(let code, let reason)):
            inputDone = true
            leg.peerClosed(code: code, reason: reason)
        case .failure(let violation):
            inputDone = true
            leg.violation(violation, framingBroken: false)
        }
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
        if let error = error as? NIOWebSocketError {
            inputDone = true
            switch error {
            case .invalidFrameLength:
                leg.violation(.messageTooBig(limit: validator.maxMessageBytes), framingBroken: true)
            case .fragmentedControlFrame:
                leg.violation(.protocolError("fragmented control frame"), framingBroken: true)
            case .multiByteControlFrameLength:
                leg.violation(.protocolError("control frame over 125 bytes"), framingBroken: true)
            }
        } else {
            leg.noteIOError(error)
        }
    }

    func read(context: ChannelHandlerContext) {
        if leg.mayRead {
            context.read()
        } else {
            readHeld = true
        }
    }

    // MARK: Called by the leg

    private func serialize(fin: Bool, opcode: WebSocketOpcode, payload: ByteBuffer, maskedWith: WebSocketMaskingKey?, context: ChannelHandlerContext) -> ByteBuffer {
        MaskedFrameWriter.serialize(
            fin: fin, opcode: opcode, payload: payload, payloadMaskedWith: maskedWith,
            newKey: maskingKeys.nextKey(), allocator: context.channel.allocator)
    }

    /// Relays a client data frame (payload as received, masked with the
    /// client's key if `frame.maskKey` is set). Not flushed.
    func write(_ frame: WebSocketFrame) {
        guard !closeSent, let context else { return }
        let bytes = serialize(fin: frame.fin, opcode: frame.opcode, payload: frame.data, maskedWith: frame.maskKey, context: context)
        outlet.write(bytes)
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
        let frame = serialize(fin: true, opcode: .connectionClose, payload: payload, maskedWith: nil, context: context)
        let channel = context.channel
        outlet.writeAndFlush(frame, on: context.eventLoop).assumeIsolated().whenComplete { _ in
            if thenCloseTCP { channel.close(promise: nil) }
        }
        if readHeld { resumeReading() }
    }
}

/// An outbound handler placed just before NIO's `WebSocketFrameEncoder`:
/// writing through its context sends already-serialized frame bytes toward
/// the socket (and through TLS, if any) without passing the encoder.
final class RawFrameOutlet: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func write(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func writeAndFlush(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        guard let context else {
            return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        return context.writeAndFlush(wrapOutboundOut(bytes))
    }
}
