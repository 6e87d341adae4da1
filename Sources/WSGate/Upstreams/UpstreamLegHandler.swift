import NIOCore
import NIOWebSocket

/// The frame handler on an upstream WebSocket channel: validates the
/// server's frames, answers pings, holds reads while the client is not
/// writable, and reports everything else to its `WebSocketUpstream`.
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

    init(leg: WebSocketUpstream, maxMessageBytes: Int) {
        self.leg = leg
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
            var pong = WebSocketFrame(fin: true, opcode: .pong, data: payload)
            pong.maskKey = .random()
            context.write(wrapOutboundOut(pong), promise: nil)
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

    func write(_ frame: WebSocketFrame) {
        guard !closeSent else { return }
        context?.write(wrapOutboundOut(frame), promise: nil)
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
    func writeClose(code: UInt16?, reason: String, maskKey: WebSocketMaskingKey, thenCloseTCP: Bool = false) {
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
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: maskKey, data: payload)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in
            if thenCloseTCP { channel.close(promise: nil) }
        }
        if readHeld { resumeReading() }
    }
}
