import NIOCore
import NIOHTTP1
import NIOWebSocket

/// NIO's WebSocket handshake for the client side of the gateway, without
/// NIO's frame codec.
///
/// `NIOWebSocketServerUpgrader` checks the request (`Sec-WebSocket-Key`,
/// version) and builds the 101; its `upgrade` then adds a frame encoder and
/// decoder. The relay frames the byte stream itself (`WebSocketLegHandler`),
/// so the decoder would be removed at once and the encoder, which NIO does
/// not let go of, would sit unused on every connection for its whole life:
/// a handler, its pipeline context and a 128-byte buffer per parked
/// connection (massif, idle connections). This upgrader keeps NIO's
/// handshake (`buildUpgradeResponse` is NIO's own) and hands the bare
/// pipeline to `upgradePipelineHandler`.
struct FramelessServerUpgrader: HTTPServerProtocolUpgrader {
    private let handshake: NIOWebSocketServerUpgrader
    private let upgradePipelineHandler: (Channel, HTTPRequestHead) -> EventLoopFuture<Void>

    init(
        shouldUpgrade: @escaping @Sendable (Channel, HTTPRequestHead) -> EventLoopFuture<HTTPHeaders?>,
        upgradePipelineHandler: @escaping (Channel, HTTPRequestHead) -> EventLoopFuture<Void>
    ) {
        // maxFrameSize only sizes NIO's decoder, which is never added here.
        self.handshake = NIOWebSocketServerUpgrader(
            automaticErrorHandling: false, shouldUpgrade: shouldUpgrade,
            upgradePipelineHandler: { channel, _ in channel.eventLoop.makeSucceededVoidFuture() })
        self.upgradePipelineHandler = upgradePipelineHandler
    }

    var supportedProtocol: String { handshake.supportedProtocol }
    var requiredUpgradeHeaders: [String] { handshake.requiredUpgradeHeaders }

    func buildUpgradeResponse(channel: Channel, upgradeRequest: HTTPRequestHead, initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        handshake.buildUpgradeResponse(channel: channel, upgradeRequest: upgradeRequest, initialResponseHeaders: initialResponseHeaders)
    }

    func upgrade(context: ChannelHandlerContext, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Void> {
        upgradePipelineHandler(context.channel, upgradeRequest)
    }
}
