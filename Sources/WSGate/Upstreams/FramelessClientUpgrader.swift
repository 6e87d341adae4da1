import NIOCore
import NIOHTTP1
import NIOWebSocket

/// NIO's WebSocket handshake toward an upstream, without NIO's frame codec
/// (the client-side twin of `FramelessServerUpgrader`, and for the same
/// reason): NIO adds the key to the request and checks the upstream's
/// `Sec-WebSocket-Accept`; the upgraded pipeline gets only the relay's own
/// `WebSocketLegHandler`.
struct FramelessClientUpgrader: NIOHTTPClientProtocolUpgrader {
    private let handshake: NIOWebSocketClientUpgrader
    private let upgradePipelineHandler: (Channel, HTTPResponseHead) -> EventLoopFuture<Void>

    init(upgradePipelineHandler: @escaping (Channel, HTTPResponseHead) -> EventLoopFuture<Void>) {
        self.handshake = NIOWebSocketClientUpgrader(automaticErrorHandling: false) { channel, _ in
            channel.eventLoop.makeSucceededVoidFuture()
        }
        self.upgradePipelineHandler = upgradePipelineHandler
    }

    var supportedProtocol: String { handshake.supportedProtocol }
    var requiredUpgradeHeaders: [String] { handshake.requiredUpgradeHeaders }

    func addCustom(upgradeRequestHeaders: inout HTTPHeaders) {
        handshake.addCustom(upgradeRequestHeaders: &upgradeRequestHeaders)
    }

    func shouldAllowUpgrade(upgradeResponse: HTTPResponseHead) -> Bool {
        handshake.shouldAllowUpgrade(upgradeResponse: upgradeResponse)
    }

    func upgrade(context: ChannelHandlerContext, upgradeResponse: HTTPResponseHead) -> EventLoopFuture<Void> {
        upgradePipelineHandler(context.channel, upgradeResponse)
    }
}
