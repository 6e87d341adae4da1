import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// What a WebSocket client observed, in the terms of a browser's CloseEvent.
struct ClientObservation: Sendable {
    var messages: [String] = []
    /// The code of the close frame received (1005 for an empty one), or 1006
    /// when the connection ended without one.
    var code: UInt16 = 1006
    var reason = ""
    var receivedCloseFrame = false
    var subprotocol: String?
}

/// A minimal NIO WebSocket client for integration tests: connects, sends
/// text messages, answers the server's close, and reports what it saw.
enum TestClient {
    static func run(
        group: EventLoopGroup, port: Int, path: String, send: [String] = [], closeWith: UInt16? = nil,
        protocols: [String] = [], waitForMessages: Int = 0
    ) async throws -> ClientObservation {
        let done = group.next().makePromise(of: ClientObservation.self)
        let collector = Collector(done: done, toSend: send, closeWith: closeWith, waitForMessages: waitForMessages)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    var headers = HTTPHeaders([("Host", "127.0.0.1:\(port)")])
                    if !protocols.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: protocols.joined(separator: ", ")) }
                    let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 24, automaticErrorHandling: false) { channel, response in
                        channel.eventLoop.makeCompletedFuture {
                            collector.subprotocol = response.headers.first(name: "sec-websocket-protocol")
                            try channel.pipeline.syncOperations.addHandler(collector)
                        }
                    }
                    let encoder = HTTPRequestEncoder()
                    let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                    let upgradeHandler = NIOHTTPClientUpgradeHandler(upgraders: [upgrader], httpHandlers: [encoder, decoder], upgradeCompletionHandler: { _ in })
                    try channel.pipeline.syncOperations.addHandlers([encoder, decoder, upgradeHandler, RequestSender(path: path, headers: headers)])
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        channel.closeFuture.whenComplete { _ in collector.finish() }
        return try await done.futureResult.get()
    }
}

private final class RequestSender: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let path: String
    let headers: HTTPHeaders
    init(path: String, headers: HTTPHeaders) { self.path = path; self.headers = headers }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }
}

private final class Collector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let done: EventLoopPromise<ClientObservation>
    var observation = ClientObservation()
    let toSend: [String]
    let closeWith: UInt16?
    let waitForMessages: Int
    var subprotocol: String?
    var finished = false
    var sentClose = false

    init(done: EventLoopPromise<ClientObservation>, toSend: [String], closeWith: UInt16?, waitForMessages: Int) {
        self.done = done
        self.toSend = toSend
        self.closeWith = closeWith
        self.waitForMessages = waitForMessages
    }

    func handlerAdded(context: ChannelHandlerContext) {
        observation.subprotocol = subprotocol
        for text in toSend {
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: context.channel.allocator.buffer(string: text))), promise: nil)
        }
        context.flush()
        maybeClose(context: context)
    }

    func maybeClose(context: ChannelHandlerContext) {
        guard let code = closeWith, !sentClose, observation.messages.count >= waitForMessages else { return }
        sentClose = true
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.writeInteger(code)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            observation.messages.append(frame.data.readString(length: frame.data.readableBytes) ?? "")
            maybeClose(context: context)
        case .binary:
            observation.messages.append("binary:" + frame.data.readableBytesView.map { String($0) }.joined(separator: ","))
            maybeClose(context: context)
        case .connectionClose:
            observation.receivedCloseFrame = true
            var data = frame.data
            if let code = data.readInteger(as: UInt16.self) {
                observation.code = code
                observation.reason = data.readString(length: data.readableBytes) ?? ""
            } else {
                observation.code = 1005
            }
            if !sentClose {
                sentClose = true
                var payload = context.channel.allocator.buffer(capacity: 2)
                if observation.code != 1005 { payload.writeInteger(observation.code) }
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)), promise: nil)
            }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func finish() {
        guard !finished else { return }
        finished = true
        if !observation.receivedCloseFrame { observation.code = 1006 }
        done.succeed(observation)
    }
}
