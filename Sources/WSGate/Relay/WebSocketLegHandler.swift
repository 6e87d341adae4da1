import WSGatePolicy
import WSGateProtocol
import NIOCore
import NIOPosix
import NIOWebSocket

/// One WebSocket endpoint of a Session, for either leg: frames the peer's
/// byte stream, validates it as RFC 6455 requires of its role, answers
/// pings, writes what the Session relays, and holds reads while the other
/// leg cannot take more (the GlueHandler pattern from SwiftNIO's examples).
/// One handler serves both roles, as swift-websocket's does for client and
/// server; only the inbound hot path differs:
///
/// - `.server` (the client's connection): frames arrive masked. Data frames
///   are copied out of the read buffer in one pass into one buffer per read
///   batch, re-masked with fresh keys for a WebSocket upstream or unmasked
///   for the echo and HTTP (`RelayBatch`). Control frames we send are unmasked.
/// - `.client` (the upstream's connection): frames arrive unmasked, exactly
///   as the client must receive them, so after validation each run of data
///   frames goes on as one slice of the read buffer (`FrameRun`): no copy.
///   Control frames we send are masked.
///
/// It sits where NIO's frame decoder was (which the upgrade removes) and
/// writes bytes, not `WebSocketFrame`s. It never decides how a connection
/// ends: violations, closes and EOF go to its delegate, which tells it what
/// to send.
final class WebSocketLegHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Role {
        /// Facing a WebSocket client (wsgate is the server).
        case server(relayAs: ClientFrameFormat)
        /// Facing a WebSocket server (wsgate is the client).
        case client
    }

    private let role: Role
    private let delegate: WebSocketLegDelegate
    private var reader: FrameReader
    private var validator: FrameValidator
    private var maskingKeys = MaskingKeySource()
    private var context: ChannelHandlerContext?
    /// A `read()` was held back because the other leg was not writable.
    private var readHeld = false
    private var needsFlush = false
    /// Our close frame has been written: from now on data we are asked to
    /// relay is dropped, and we only wait for the peer's close or EOF.
    private(set) var closeFrameSent = false
    /// The peer's stream ended for us (its close frame, or one we cannot parse past).
    private var inputDone = false
    /// An oversized frame was reported: nothing after it is relayed or
    /// answered, only a close frame is still read.
    private var sawViolation = false
    /// The payload of the latest ping not answered yet because the peer is not
    /// reading (our channel is not writable). Only the latest is answered
    /// (RFC 6455 §5.5.3), and reading stops until it is: a ping flood costs
    /// one pending pong, not a queue.
    private var pendingPong: ByteBuffer?

    init(role: Role, delegate: WebSocketLegDelegate, maxMessageBytes: Int) {
        self.role = role
        self.delegate = delegate
        self.reader = FrameReader(maxFrameBytes: maxMessageBytes)
        switch role {
        case .server: self.validator = FrameValidator(role: .fromClient, maxMessageBytes: maxMessageBytes)
        case .client: self.validator = FrameValidator(role: .fromServer, maxMessageBytes: maxMessageBytes)
        }
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
        reader.append(unwrapInboundIn(data))
        switch role {
        case .server(let format): readFromClient(context: context, newKeys: format == .maskedFrames)
        case .client: readFromServer(context: context)
        }
    }

    /// The client's frames: data copied (re-masked or unmasked) into one batch.
    private func readFromClient(context: ChannelHandlerContext, newKeys: Bool) {
        var batch = RelayBatch()
        while !inputDone {
            switch reader.next() {
            case .needMoreBytes:
                batch.send(to: delegate)
                failFastOnPartialText()
                return
            case .framingError(let violation):
                // Nothing after this frame can be parsed: stop reading frames.
                inputDone = true
                batch.send(to: delegate)
                delegate.legViolation(violation, framingBroken: true)
            case .oversized(let violation):
                // Its bytes are dropped; after it only the client's close
                // frame (the reply to ours) is still looked for.
                guard !closeFrameSent, !sawViolation else { continue }
                sawViolation = true
                batch.send(to: delegate)
                delegate.legViolation(violation, framingBroken: false)
            case .frame(let header, var payload, _):
                switch validator.validate(header, payload: &payload) {
                case .success(.data):
                    guard !closeFrameSent, !sawViolation else { continue }
                    batch.append(
                        header, payload, newKey: newKeys ? maskingKeys.nextWord() : nil, remaining: reader.bufferedBytes,
                        allocator: context.channel.allocator)
                case .success(.ping(let payload)):
                    guard !closeFrameSent, !sawViolation else { continue }
                    // Echoed data before this ping goes out before its pong.
                    batch.send(to: delegate)
                    answerPing(payload, context: context)
                    delegate.legActivity()
                case .success(.pong):
                    delegate.legActivity()
                case .success(.close(let code, let reason)):
                    inputDone = true
                    batch.send(to: delegate)
                    delegate.legClose(code: code, reason: reason)
                case .failure(let violation):
                    // After our close frame we only wait for the client's reply, so
                    // reading goes on: its close frame completes the handshake.
                    guard !closeFrameSent else { continue }
                    batch.send(to: delegate)
                    delegate.legViolation(violation, framingBroken: false)
                }
            }
        }
        batch.send(to: delegate)
    }

    /// The server's frames: runs of data frames passed on as slices.
    private func readFromServer(context: ChannelHandlerContext) {
        // Reader indices below refer to this buffer (nothing is appended
        // until the next read).
        guard let source = reader.bytes else { return }
        var run = FrameRun()
        while !inputDone {
            switch reader.next() {
            case .needMoreBytes:
                run.send(from: source, to: delegate)
                failFastOnPartialText()
                return
            case .framingError(let violation), .oversized(let violation):
                // From an upstream, an oversized frame fails the connection at once.
                inputDone = true
                run.send(from: source, to: delegate)
                delegate.legViolation(violation, framingBroken: true)
            case .frame(let header, var payload, let start):
                switch validator.validate(header, payload: &payload) {
                case .success(.data) where header.hasMinimalLength:
                    run.add(start: start, end: start + header.headerLength + payload.readableBytes, fin: header.fin, payloadBytes: payload.readableBytes)
                case .success(.data):
                    // A length in a longer encoding than needed is not valid
                    // from a sender: re-encode this frame instead of passing it on.
                    run.send(from: source, to: delegate)
                    let frame = MaskedFrameWriter.serialize(
                        fin: header.fin, opcode: header.opcode, payload: payload, payloadMaskedWith: nil, newKey: nil,
                        allocator: context.channel.allocator)
                    delegate.legFrames(FrameBatch(bytes: frame, messages: header.fin ? 1 : 0, payloadBytes: payload.readableBytes))
                case .success(.ping(let payload)):
                    run.send(from: source, to: delegate)
                    guard !closeFrameSent else { continue }
                    answerPing(payload, context: context)
                case .success(.pong):
                    run.send(from: source, to: delegate)
                case .success(.close(let code, let reason)):
                    inputDone = true
                    run.send(from: source, to: delegate)
                    delegate.legClose(code: code, reason: reason)
                case .failure(let violation):
                    inputDone = true
                    run.send(from: source, to: delegate)
                    delegate.legViolation(violation, framingBroken: false)
                }
            }
        }
        run.send(from: source, to: delegate)
    }

    /// Invalid UTF-8 in a text frame that is still arriving ends the input
    /// now: the peer is not left to send (and the gateway to hold) the rest
    /// of a frame that can only be refused.
    private func failFastOnPartialText() {
        guard !closeFrameSent, let (header, arrived) = reader.partialFrame(),
            !validator.checkPartial(header, arrived: arrived)
        else { return }
        inputDone = true
        delegate.legViolation(.invalidUTF8, framingBroken: true)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        delegate.legReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let pong = pendingPong {
            pendingPong = nil
            writePong(pong, context: context)
            needsFlush = false
            context.flush()
            if readHeld && delegate.legMayRead { resumeReading() }
        }
        delegate.legWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // NIO closes the channel after an I/O error; the delegate hears of
        // the close through the close future and keeps the error for the log.
        delegate.legError(error)
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if pendingPong == nil && delegate.legMayRead {
            context.read()
        } else {
            readHeld = true
        }
    }

    // MARK: Called by the delegate

    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// Writes frames already serialized for this peer. Not flushed.
    func writeFrames(_ bytes: ByteBuffer) {
        guard let context, !closeFrameSent else { return }
        context.write(wrapOutboundOut(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func resumeReading() {
        guard readHeld, pendingPong == nil, let context else { return }
        readHeld = false
        context.read()
    }

    /// Writes and flushes our close frame (`code` nil: empty payload), once;
    /// `done` gets whether it was written. Reading goes on: the peer's close
    /// reply completes the handshake.
    func sendClose(code: UInt16?, reason: String, done: ((Bool) -> Void)? = nil) {
        guard let context, !closeFrameSent else {
            done?(false)
            return
        }
        closeFrameSent = true
        pendingPong = nil  // nothing but the close goes out after it
        let reason = CloseReason.truncate(reason)
        var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        if let code {
            payload.writeInteger(code)
            payload.writeString(reason)
        }
        let frame = serializeControl(.connectionClose, payload: payload, context: context)
        if let done {
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.assumeIsolated().whenComplete { result in
                if case .success = result { done(true) } else { done(false) }
            }
            context.writeAndFlush(wrapOutboundOut(frame), promise: promise)
        } else {
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        }
        if readHeld { resumeReading() }
    }

    /// Orderly TCP close (FIN).
    func closeConnection() {
        context?.close(promise: nil)
    }

    /// Half-close: FIN after what was written, keep reading until the peer
    /// closes too.
    func closeOutput() {
        context?.close(mode: .output, promise: nil)
    }

    /// Drops the connection with a TCP RST and no close frame: the peer sees
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

    // MARK: Control frames

    /// Pongs go out at once while the peer reads; otherwise the latest ping
    /// waits for writability (and reading stops until then).
    private func answerPing(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        if context.channel.isWritable && pendingPong == nil {
            writePong(payload, context: context)
        } else {
            pendingPong = payload
        }
    }

    private func writePong(_ payload: ByteBuffer, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(serializeControl(.pong, payload: payload, context: context)), promise: nil)
        needsFlush = true
    }

    /// A control frame in a buffer of its own: masked with a fresh key toward
    /// a server, unmasked toward a client.
    private func serializeControl(_ opcode: WebSocketOpcode, payload: ByteBuffer, context: ChannelHandlerContext) -> ByteBuffer {
        let key: WebSocketMaskingKey?
        switch role {
        case .server: key = nil
        case .client: key = maskingKeys.nextKey()
        }
        return MaskedFrameWriter.serialize(
            fin: true, opcode: opcode, payload: payload, payloadMaskedWith: nil, newKey: key, allocator: context.channel.allocator)
    }
}
