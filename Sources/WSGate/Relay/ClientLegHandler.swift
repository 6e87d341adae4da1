import NIOCore
import NIOPosix
import NIOWebSocket

/// The client side of a Session: frames the client's byte stream, validates
/// it as an RFC 6455 server endpoint, answers pings, and holds reads while
/// the upstream cannot take more (the GlueHandler pattern from SwiftNIO's
/// examples).
///
/// It sits where NIO's frame decoder was (which the upgrade removes): data
/// frames are not turned into `WebSocketFrame` values but written straight
/// into one buffer per read batch, re-masked for a WebSocket upstream or
/// unmasked for the built-in echo, in the same pass that copies them.
///
/// It never decides how a connection ends: violations, closes and EOF are
/// reported to the Session, which tells it what to send.
final class ClientLegHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let session: Session
    /// What the upstream takes, fixed when the leg is attached.
    private let format: ClientFrameFormat
    private var reader: FrameReader
    private var validator: FrameValidator
    private var maskingKeys = MaskingKeySource()
    private var context: ChannelHandlerContext?
    /// A `read()` was held back because the upstream was not writable.
    private var readHeld = false
    private var needsFlush = false
    /// Our close frame has been written: from now on we only wait for the
    /// client's close reply or EOF.
    private(set) var closeFrameSent = false
    private var inputDone = false

    init(session: Session, format: ClientFrameFormat, maxMessageBytes: Int) {
        self.session = session
        self.format = format
        self.reader = FrameReader(maxFrameBytes: maxMessageBytes)
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
        reader.append(unwrapInboundIn(data))
        let newKeys = format == .maskedFrames
        // Relayed frames of this read, serialized for the upstream.
        var batch = RelayBatch()
        while !inputDone {
            switch reader.next() {
            case .needMoreBytes:
                batch.send(to: session)
                return
            case .framingError(let violation):
                // Nothing after this frame can be parsed: stop reading frames.
                inputDone = true
                batch.send(to: session)
                session.clientViolation(violation, framingBroken: true)
            case .frame(let header, var payload, _):
                switch validator.validate(header, payload: &payload) {
                case .success(.data):
                    guard !closeFrameSent else { continue }
                    batch.append(
                        header, payload, newKey: newKeys ? maskingKeys.nextWord() : nil, remaining: reader.bufferedBytes,
                        allocator: context.channel.allocator)
                case .success(.ping(let payload)):
                    guard !closeFrameSent else { continue }
                    // Echoed data before this ping goes out before its pong.
                    batch.send(to: session)
                    context.write(wrapOutboundOut(serialize(opcode: .pong, payload: payload, context: context)), promise: nil)
                    needsFlush = true
                    session.noteActivity()
                case .success(.pong):
                    session.noteActivity()
                case .success(.close(let code, let reason)):
                    inputDone = true
                    batch.send(to: session)
                    session.clientClose(code: code, reason: reason)
                case .failure(let violation):
                    // After our close frame we only wait for the client's reply, so
                    // reading goes on: its close frame completes the handshake.
                    guard !closeFrameSent else { continue }
                    batch.send(to: session)
                    session.clientViolation(violation, framingBroken: false)
                }
            }
        }
        batch.send(to: session)
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
        if error is IOError {
            // I/O errors (ECONNRESET, …): NIO closes the channel next; the
            // session hears about it through the close future.
            session.noteClientError(error)
        }
    }

    /// An unmasked frame in a buffer of its own (pong, close, messages).
    private func serialize(opcode: WebSocketOpcode, payload: ByteBuffer, context: ChannelHandlerContext) -> ByteBuffer {
        MaskedFrameWriter.serialize(fin: true, opcode: opcode, payload: payload, payloadMaskedWith: nil, newKey: nil, allocator: context.channel.allocator)
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

    /// Writes frames already serialized for the client (unmasked). Not flushed.
    func writeFrames(_ bytes: ByteBuffer) {
        guard let context, !closeFrameSent else { return }
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
        let frame = serialize(opcode: .connectionClose, payload: payload, context: context)
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

/// Data frames of one read batch, serialized into one buffer for the other
/// leg: one allocation and one write per batch instead of per frame.
struct RelayBatch {
    private(set) var bytes: ByteBuffer?
    private(set) var messages = 0
    private(set) var payloadBytes = 0

    /// Appends a client frame re-masked with `newKey` (nil: unmasked).
    /// `remaining` is what the reader still holds, so that one allocation
    /// fits every frame of the batch.
    @inline(__always)
    mutating func append(_ header: FrameHeader, _ payload: ByteBuffer, newKey: UInt32?, remaining: Int, allocator: ByteBufferAllocator) {
        let length = payload.readableBytes
        if bytes == nil {
            // Room for the frames still held too, unless that is a large
            // partial frame (which would only be slack in the pending write).
            bytes = allocator.buffer(capacity: header.headerLength + length + (remaining < 1 << 16 ? remaining : 0))
        }
        FrameWriter.append(to: &bytes!, firstByte: header.firstByte, payload: payload, payloadKey: header.maskKey ?? 0, newKey: newKey)
        if header.fin { messages += 1 }
        payloadBytes += length
    }

    mutating func send(to session: Session) {
        guard let out = bytes else { return }
        session.clientFrames(FrameBatch(bytes: out, messages: messages, payloadBytes: payloadBytes))
        self = RelayBatch()
    }
}
