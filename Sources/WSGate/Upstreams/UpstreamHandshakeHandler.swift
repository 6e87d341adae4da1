import NIOCore
import NIOHTTP1
import NIOSSL

/// Sends the upgrade request and reports non-101 answers. It stays after
/// `NIOHTTPClientUpgradeHandler`, which forwards the response here only when
/// the upgrade did not happen.
final class UpstreamHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let leg: WebSocketUpstream
    private let request: HTTPRequestHead

    init(leg: WebSocketUpstream, request: HTTPRequestHead) {
        self.leg = leg
        self.request = request
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(request)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let response) = unwrapInboundIn(data) else { return }
        if response.status == .switchingProtocols {
            leg.fail(UpstreamFailure(.upstreamProtocolError, error: "upstream sent 101 with an invalid Sec-WebSocket-Accept or Upgrade header"))
        } else {
            let code = Int(response.status.code)
            leg.fail(UpstreamFailure(.upstreamHandshakeRejected, httpStatus: code, error: "upstream answered the upgrade with HTTP \(code)"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOHTTPClientUpgradeError {
            return  // the response that caused it arrives in channelRead
        }
        if error is HTTPParserError {
            leg.fail(UpstreamFailure(.upstreamProtocolError, error: "invalid HTTP response to the upgrade: \(error)"))
            return
        }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            leg.fail(UpstreamFailure(.upstreamTLSError, error: "TLS with the upstream: \(error)", retryable: true))
            return
        }
        leg.noteIOError(error)
    }
}
