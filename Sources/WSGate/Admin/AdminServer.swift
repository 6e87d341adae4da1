import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// What the admin listener reports: readiness and the metrics text.
protocol AdminStatus: Sendable {
    /// True once a drain started: `/readyz` answers 503.
    var isDraining: Bool { get }
    /// Why `/readyz` answers 503 (draining, keys not loaded), or nil.
    var notReadyReason: String? { get }
    /// The Prometheus text for `/metrics`.
    func metricsText() -> String
    /// `GET /upstreams`: every route's targets, health, ejection, load.
    func upstreamsJSON() -> String
}

/// The admin listener (`admin.host:admin.port`, loopback by default):
/// `GET /healthz` (200 while the process runs), `GET /readyz` (200 while
/// accepting, 503 while draining), `GET /metrics` (Prometheus text format),
/// `GET /upstreams` (the pools' targets, JSON).
/// Control plane only: plain NIO HTTP/1.1, one small response per request.
///
/// Bounded like the client listener, on a smaller scale: at most
/// `maxConnections` at once (more are closed unread), and a connection that
/// sends nothing for `idleTimeout` is closed. Request heads are bounded by
/// NIO's HTTP parser (about 80 KiB).
final class AdminServer: Sendable {
    static let maxConnections = 128
    static let idleTimeout = TimeAmount.seconds(30)

    private let status: AdminStatus
    private let host: String
    private let port: Int
    private let logger: Logger
    private let channel = NIOLockedValueBox<Channel?>(nil)
    private let open = NIOLockedValueBox(0)
    /// The control API, when it is served here.
    private let control: ControlAPI?
    /// False for the control API's own listener (`control:`).
    private let servesAdmin: Bool
    private let name: String

    init(status: AdminStatus, host: String, port: Int, logger: Logger, control: ControlAPI? = nil, servesAdmin: Bool = true) {
        self.status = status
        self.host = host
        self.port = port
        self.logger = logger
        self.control = control
        self.servesAdmin = servesAdmin
        self.name = servesAdmin ? "admin" : "control"
    }

    func start(group: EventLoopGroup) async throws -> Int {
        let status = self.status
        let open = self.open
        let control = self.control
        let servesAdmin = self.servesAdmin
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let admitted = open.withLockedValue { n -> Bool in
                        guard n < Self.maxConnections else { return false }
                        n += 1
                        return true
                    }
                    guard admitted else {
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in open.withLockedValue { $0 -= 1 } }
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(status: status, control: control, servesAdmin: servesAdmin))
                }
            }
            .bind(host: host, port: port).get()
        self.channel.withLockedValue { $0 = channel }
        let port = channel.localAddress?.port ?? self.port
        logger.info("\(name)_listening", metadata: [
            "host": .string(host), "port": .stringConvertible(port),
        ])
        return port
    }

    func stop() async {
        let channel = self.channel.withLockedValue { $0 }
        try? await channel?.close()
    }
}

private final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let gateway: AdminStatus
    private let control: ControlAPI?
    private let servesAdmin: Bool
    private var request: HTTPRequestHead?
    /// A control request's body, up to `max_message_bytes`.
    private var body: ByteBuffer?
    private var bodyTooBig = false

    init(status: AdminStatus, control: ControlAPI?, servesAdmin: Bool) {
        self.gateway = status
        self.control = control
        self.servesAdmin = servesAdmin
    }

    /// Idle for `AdminServer.idleTimeout`: closed.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// A malformed or oversized request: nothing sensible to answer on a
    /// control-plane connection; it is closed.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
            body = nil
            bodyTooBig = false
        case .body(var part):
            guard let control, !bodyTooBig else { return }
            if (body?.readableBytes ?? 0) + part.readableBytes > control.maxMessageBytes {
                bodyTooBig = true  // the rest is read and dropped; the answer is 413
                body = nil
            } else if body == nil {
                body = part
            } else {
                body!.writeBuffer(&part)
            }
        case .end:
            guard let head = request else { return }
            request = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first ?? Substring(head.uri)
            if let control, ControlAPI.handles(path) {
                let channel = context.channel
                let loop = context.eventLoop
                control.respond(head, body: body, bodyTooBig: bodyTooBig, on: loop).whenSuccess { response in
                    Self.write(response, head: head, channel: channel)
                }
                body = nil
                return
            }
            if !servesAdmin {
                Self.write(ControlAPI.error(.notFound, "not found"), head: head, channel: context.channel)
                return
            }
            respond(context: context, head: head)
        }
    }

    /// A control API answer (written from a future's callback, on the loop).
    private static func write(_ response: ControlAPI.Response, head: HTTPRequestHead, channel: Channel) {
        var headers = HTTPHeaders([("Content-Type", response.contentType), ("Content-Length", String(response.body.utf8.count))])
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers)), promise: nil)
        if !response.body.isEmpty {
            channel.write(HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(string: response.body))), promise: nil)
        }
        let keepAlive = head.isKeepAlive
        channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        var contentType = "text/plain; charset=utf-8"
        let body: String
        switch (head.method, path) {
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            status = .ok
            body = "ok\n"
        case (.GET, "/readyz"), (.HEAD, "/readyz"):
            if let reason = gateway.notReadyReason {
                status = .serviceUnavailable
                body = reason == "draining" ? "draining\n" : "not ready: \(reason)\n"
            } else {
                status = .ok
                body = "ready\n"
            }
        case (.GET, "/metrics"):
            status = .ok
            contentType = "text/plain; version=0.0.4; charset=utf-8"
            body = gateway.metricsText()
        case (.GET, "/upstreams"):
            status = .ok
            contentType = "application/json"
            body = gateway.upstreamsJSON() + "\n"
        case (_, "/healthz"), (_, "/readyz"), (_, "/metrics"), (_, "/upstreams"):
            status = .methodNotAllowed
            body = "method not allowed\n"
        default:
            status = .notFound
            body = "not found\n"
        }
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", String(body.utf8.count))])
        if !head.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        }
        let keepAlive = head.isKeepAlive
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
