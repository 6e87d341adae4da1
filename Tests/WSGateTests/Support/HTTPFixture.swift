import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A real HTTP/1.1 server on loopback for HTTP-upstream tests. The request
/// path picks the behaviour:
/// `/echo` (body back, request Content-Type), `/json`, `/binary`, `/empty` (204),
/// `/status/N`, `/slow/MS` (answers after MS ms), `/garbage` (not HTTP),
/// `/big/N` (N-byte body), `/record` (stores the body, 200 empty).
final class HTTPFixture: Sendable {
    let channel: Channel
    let recorded = NIOLockedValueBox<[(path: String, headers: HTTPHeaders, body: String)]>([])
    var port: Int { channel.localAddress!.port! }

    private init(channel: Channel) { self.channel = channel }

    static func start(group: EventLoopGroup) async throws -> HTTPFixture {
        let box = NIOLockedValueBox<HTTPFixture?>(nil)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(GarbageSniffer())
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(FixtureHTTPHandler(fixture: { box.withLockedValue { $0 } }))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let fixture = HTTPFixture(channel: channel)
        box.withLockedValue { $0 = fixture }
        return fixture
    }

    func stop() async { try? await channel.close() }
}

/// Answers `POST /garbage` with bytes that are not HTTP, before the HTTP
/// codec sees the request.
private final class GarbageSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if buffer.getString(at: buffer.readerIndex, length: min(14, buffer.readableBytes))?.hasPrefix("POST /garbage") == true {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: "\u{1}\u{2}garbage, not HTTP at all\r\n\r\n")))
                .whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.fireChannelRead(data)
    }
}

private final class FixtureHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let fixture: @Sendable () -> HTTPFixture?
    var head: HTTPRequestHead?
    var body = ByteBuffer()

    init(fixture: @escaping @Sendable () -> HTTPFixture?) { self.fixture = fixture }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body.clear()
        case .body(var chunk):
            body.writeBuffer(&chunk)
        case .end:
            guard let head else { return }
            respond(context: context, head: head, body: body)
        }
    }

    func respond(context: ChannelHandlerContext, head: HTTPRequestHead, body: ByteBuffer) {
        let parts = head.uri.split(separator: "/").map(String.init)
        let text = body.getString(at: body.readerIndex, length: body.readableBytes) ?? ""
        func send(_ status: Int, _ type: String?, _ payload: ByteBuffer) {
            var headers = HTTPHeaders([("Content-Length", String(payload.readableBytes))])
            if let type { headers.add(name: "Content-Type", value: type) }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers))), promise: nil)
            if payload.readableBytes > 0 { context.write(wrapOutboundOut(.body(.byteBuffer(payload))), promise: nil) }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        let alloc = context.channel.allocator
        switch parts.first ?? "" {
        case "echo":
            send(200, head.headers.first(name: "content-type"), body)
        case "json":
            send(200, "application/json; charset=utf-8", alloc.buffer(string: #"{"ok":true}"#))
        case "binary":
            send(200, "application/octet-stream", alloc.buffer(bytes: [0, 1, 2, 0xFF]))
        case "empty":
            send(204, nil, alloc.buffer(capacity: 0))
        case "status":
            send(Int(parts[1]) ?? 500, "text/plain", alloc.buffer(string: "status body"))
        case "slow":
            let ms = Int64(parts[1]) ?? 1000
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: .milliseconds(ms)) {
                handler.value.respondNow(context: loopBound.value, text: text)
            }
        case "big":
            send(200, "application/octet-stream", alloc.buffer(bytes: [UInt8](repeating: 0x61, count: Int(parts[1]) ?? 1)))
        case "record":
            fixture()?.recorded.withLockedValue { $0.append((head.uri, head.headers, text)) }
            send(Int(parts.count > 1 ? parts[1] : "200") ?? 200, nil, alloc.buffer(capacity: 0))
        default:
            send(404, "text/plain", alloc.buffer(string: "no such fixture"))
        }
    }

    func respondNow(context: ChannelHandlerContext, text: String) {
        let payload = context.channel.allocator.buffer(string: text)
        let headers = HTTPHeaders([("Content-Length", String(payload.readableBytes)), ("Content-Type", "text/plain")])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(payload))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
