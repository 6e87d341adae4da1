import NIOCore
import NIOHTTP1
import NIOSSL
import NIOWebSocket

/// Answers every request that did not become a WebSocket (no route, not an
/// upgrade, bad headers, bad origin, malformed HTTP) with a short plain-text
/// error, logs it as a `websocket_reject` line, and closes the connection.
final class RejectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let connection: ClientConnection
    private var responded = false

    init(connection: ClientConnection) {
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !responded else { return }
        if let failure = connection.authRejection {
            // `auth.on_failure: reject`: the token was refused before the upgrade.
            var r = HandshakeCheck.Rejection(status: .unauthorized, reason: "unauthorized: \(failure)")
            r.extraHeaders = [("WWW-Authenticate", "Bearer error=\"invalid_token\"")]
            if let match = connection.gateway.routes.match(requestTarget: head.uri) { r.route = match.route.path }
            respond(context: context, r, method: head.method.rawValue, path: head.uri, origin: head.headers.first(name: "origin"))
            return
        }
        let rejection: HandshakeCheck.Rejection
        switch HandshakeCheck.evaluate(head, routes: connection.gateway.routes) {
        case .reject(let r): rejection = r
        case .accept(let match):
            // The upgrader declined a request the check accepts: can only be
            // a header NIO rejects that we don't look at.
            rejection = .init(status: .badRequest, reason: "invalid WebSocket handshake", route: match.route.path)
        }
        respond(context: context, rejection, method: head.method.rawValue, path: head.uri, origin: head.headers.first(name: "origin"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError, !responded {
            let r = parserError == .headerOverflow
                ? HandshakeCheck.Rejection(status: .requestHeaderFieldsTooLarge, reason: "request headers too large")
                : HandshakeCheck.Rejection(status: .badRequest, reason: "malformed HTTP request")
            respond(context: context, r, method: "", path: "", origin: nil, error: "\(error)")
        } else if (error is NIOSSLError || error is BoringSSLError) && !responded {
            // Not TLS, or a failed TLS handshake, on a TLS listener: nothing
            // HTTP can be answered; log and drop.
            responded = true
            connection.handshakeFinished()
            connection.leavePending()
            connection.gateway.eventLog.rejected(.init(
                status: 400, reason: "TLS handshake failed", method: "", path: "",
                clientAddress: connection.clientAddress, error: "\(error)"))
            context.close(promise: nil)
        } else if !(error is NIOWebSocketUpgradeError) {
            context.fireErrorCaught(error)
        }
    }

    private func respond(context: ChannelHandlerContext, _ rejection: HandshakeCheck.Rejection, method: String, path: String, origin: String?, error: String? = nil) {
        responded = true
        connection.handshakeFinished()
        connection.leavePending()
        connection.gateway.eventLog.rejected(.init(
            status: Int(rejection.status.code), reason: rejection.reason, method: method, path: path,
            clientAddress: connection.clientAddress, route: rejection.route, origin: origin, error: error))
        let body = "\(rejection.status.code) \(rejection.status.reasonPhrase): \(rejection.reason)\n"
        var headers = HTTPHeaders([
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", String(body.utf8.count)), ("Connection", "close"),
        ])
        for (name, value) in rejection.extraHeaders { headers.add(name: name, value: value) }
        let head = HTTPResponseHead(version: .http1_1, status: rejection.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        // Lingering close: FIN after the response, then keep reading (and
        // discarding) until the client closes, at most 2 s. Closing at once
        // with unread request bytes (e.g. oversized headers) would send a
        // TCP RST that can destroy the response before the client reads it.
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
        }
    }
}
