import NIOCore
import NIOPosix
import NIOWebSocket

/// The client side of a Session: validates the client's frames as an RFC 6455
/// server endpoint, answers pings, and holds reads while the upstream cannot
/// take more (the GlueHandler pattern from SwiftNIO's examples).
///
/// It never decides how a connection ends: violations, closes and EOF are
/// reported to the Session, which tells it what to send.
final class ClientLegHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let session: Session
    private var validator: FrameValidator
    private var context: ChannelHandlerContext?
    /// A `read()` was held back because the upstream was not writable.
    private var readHeld = false
    private var needsFlush = false
    /// Our close frame has been written: from now on we only wait for the
    /// client's close reply or EOF.
    private(set) var closeFrameSent = false
    private var inputDone = false

    init(session: Session, maxMessageBytes: Int) {
        self.session = session
        self.validator = FrameValidator(role: .fromClient, maxMessageBytes: maxMessageBytes)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !inputDone else { return }
        var frame = unwrapInboundIn(data)
        switch validator.validate(&frame) {
        case .success(.data(let frame)):
            if !closeFrameSent { session.clientData(frame) }
        case .success(.ping(let payload)):
            guard !closeFrameSent else { return }
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: payload)), promise: nil)
            needsFlush = true
            session.noteActivity()
        case .success(.pong):
            session.noteActivity()
        case .success(.close(let code, let reason)):
            inputDone = true
            session.clientClose(code: code, reason: reason)
        case .failure(let violation):
            // After our close frame we only wait for the client's reply, so
            // reading goes on: its close frame completes the handshake.
            guard !closeFrameSent else { return }
            session.clientViolation(violation, framingBroken: false)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        session.clientReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        session.clientWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? NIOWebSocketError {
            // NIO's decoder stops decoding after these; report and stop.
            inputDone = true
            switch error {
            case .invalidFrameLength:
                session.clientViolation(.messageTooBig(limit: validator.maxMessageBytes), framingBroken: true)
            case .fragmentedControlFrame:
                session.clientViolation(.protocolError("fragmented control frame"), framingBroken: true)
            case .multiByteControlFrameLength:
                session.clientViolation(.protocolError("control frame over 125 bytes"), framingBroken: true)
            }
        } else if error is IOError {
            // I/O errors (ECONNRESET, …): NIO closes the channel next; the
            // session hears about it through the close future.
            session.noteClientError(error)
        }
        // Anything else (e.g. NIO's decoder refusing bytes after a framing
        // error: the client's close reply we can no longer parse) is expected.
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if session.mayReadClient {
            context.read()
        } else {
            readHeld = true
        }
    }

    // MARK: Called by the Session

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ frame: WebSocketFrame) {
        guard let context, !closeFrameSent else { return }
        context.write(wrapOutboundOut(frame), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func resumeReading() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    /// Writes our close frame (`code` nil: empty payload); `done` gets whether
    /// it was written.
    func sendClose(code: UInt16?, reason: String, done: @escaping (Bool) -> Void) {
        guard let context, !closeFrameSent else {
            done(false)
            return
        }
        closeFrameSent = true
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            payload.writeInteger(code)
            payload.writeString(reason)
        }
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { result in
            if case .success = result { done(true) } else { done(false) }
        }
        context.writeAndFlush(wrapOutboundOut(frame), promise: promise)
        // Reads continue: we need the client's close reply.
        if readHeld { resumeReading() }
    }

    /// Orderly TCP close (FIN).
    func closeConnection() {
        context?.close(promise: nil)
    }

    /// Half-close: FIN after what was written, keep reading until the client
    /// closes too.
    func closeOutput() {
        context?.close(mode: .output, promise: nil)
    }

    /// Drops the connection with a TCP RST and no close frame: the client sees
    /// 1006 (the `close_codes` value 1006 and `upstream_reset` by default).
    func abortConnection() {
        guard let context else { return }
        let channel = context.channel
        guard let provider = channel as? SocketOptionProvider else {
            channel.close(promise: nil)
            return
        }
        provider.setSoLinger(linger(l_onoff: 1, l_linger: 0))
            .assumeIsolatedUnsafeUnchecked()
            .whenComplete { _ in channel.close(promise: nil) }
    }
}
