import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// Real upstream servers on loopback, each with one behaviour the gateway
/// must translate into a close code.
enum FixtureBehaviour: Sendable {
    /// A WebSocket echo server.
    case echo
    /// Answers the upgrade with this HTTP status.
    case reject(status: Int)
    /// Completes the upgrade, then closes with this code and reason.
    case closeAfterUpgrade(code: UInt16, reason: String)
    /// Echoes the first message, then resets the TCP connection.
    case resetAfterFirstMessage
    /// Accepts TCP and never answers the upgrade.
    case silent
}

final class FixtureServer: Sendable {
    let channel: Channel
    var port: Int { channel.localAddress!.port! }

    private init(channel: Channel) { self.channel = channel }

    static func start(_ behaviour: FixtureBehaviour, group: EventLoopGroup, selectProtocol: String? = nil) async throws -> FixtureServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    switch behaviour {
                    case .silent:
                        break  // read and ignore
                    case .reject(let status):
                        try channel.pipeline.syncOperations.addHandler(RawRejectHandler(status: status))
                    case .echo, .closeAfterUpgrade, .resetAfterFirstMessage:
                        let upgrader = NIOWebSocketServerUpgrader(
                            shouldUpgrade: { channel, head in
                                var headers = HTTPHeaders()
                                let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map(String.init)
                                if let selectProtocol, offered.contains(selectProtocol) {
                                    headers.add(name: "Sec-WebSocket-Protocol", value: selectProtocol)
                                }
                                return channel.eventLoop.makeSucceededFuture(headers)
                            },
                            upgradePipelineHandler: { channel, _ in
                                channel.eventLoop.makeCompletedFuture {
                                    try channel.pipeline.syncOperations.addHandler(FixtureFrameHandler(behaviour: behaviour))
                                }
                            })
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FixtureServer(channel: channel)
    }

    func stop() async {
        try? await channel.close()
    }

    /// A port nothing listens on: bind, note the port, close.
    static func closedPort(group: EventLoopGroup) async throws -> Int {
        let channel = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
        let port = channel.localAddress!.port!
        try await channel.close()
        return port
    }
}

private final class RawRejectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let status: Int
    var seen = ""
    init(status: Int) { self.status = status }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        seen += buffer.readString(length: buffer.readableBytes) ?? ""
        guard seen.contains("\r\n\r\n") else { return }
        let response = "HTTP/1.1 \(status) Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: response)), promise: nil)
    }
}

private final class FixtureFrameHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let behaviour: FixtureBehaviour

    init(behaviour: FixtureBehaviour) { self.behaviour = behaviour }

    func handlerAdded(context: ChannelHandlerContext) {
        if case .closeAfterUpgrade(let code, let reason) = behaviour {
            var payload = context.channel.allocator.buffer(capacity: 2 + reason.utf8.count)
            payload.writeInteger(code)
            payload.writeString(reason)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload)), promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .connectionClose:
            if case .closeAfterUpgrade = behaviour {
                context.close(promise: nil)  // the reply to our close
                return
            }
            var payload = frame.unmaskedData
            let echo = WebSocketFrame(fin: true, opcode: .connectionClose, data: payload.readSlice(length: min(2, payload.readableBytes)) ?? payload)
            context.writeAndFlush(wrapOutboundOut(echo)).whenComplete { _ in context.close(promise: nil) }
        case .text, .binary, .continuation:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: frame.fin, opcode: frame.opcode, data: frame.unmaskedData)), promise: nil)
            if case .resetAfterFirstMessage = behaviour, frame.fin {
                let channel = context.channel
                (channel as! SocketOptionProvider).setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in
                    channel.close(promise: nil)
                }
            }
        default:
            break
        }
    }
}
