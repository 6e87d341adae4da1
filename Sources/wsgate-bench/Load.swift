import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

#if canImport(Glibc)
import Glibc
#endif

struct LoadSpec {
    var url: String
    var connections: Int
    var inFlight: Int
    var size: Int
    var messages: Int
    var text: Bool
}

struct LoadResult {
    var messages: Int
    var seconds: Double
    var latenciesNs: [UInt64]
    var cpuSeconds: Double
    var errors: Int

    func percentile(_ p: Double) -> Double {
        guard !latenciesNs.isEmpty else { return 0 }
        let i = min(latenciesNs.count - 1, Int((Double(latenciesNs.count) * p).rounded(.up)) - 1)
        return Double(latenciesNs[max(0, i)]) / 1000
    }

    var json: String {
        let rate = seconds > 0 ? Double(messages) / seconds : 0
        return """
            {"messages":\(messages),"seconds":\(fmt(seconds)),"msgs_per_s":\(fmt(rate)),\
            "p50_us":\(fmt(percentile(0.5))),"p99_us":\(fmt(percentile(0.99))),"p999_us":\(fmt(percentile(0.999))),\
            "client_cpu_s":\(fmt(cpuSeconds)),"errors":\(errors)}
            """
    }
}

func fmt(_ d: Double) -> String { String((d * 1000).rounded() / 1000) }

func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

struct ParsedURL {
    var host: String
    var port: Int
    var path: String

    init(_ url: String) {
        var rest = Substring(url)
        if let r = rest.firstRange(of: "://") { rest = rest[r.upperBound...] }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            port = Int(authority[authority.index(after: colon)...]) ?? 80
        } else {
            host = String(authority)
            port = 80
        }
    }
}

/// Opens one upgraded WebSocket client channel and installs `handler`.
func connectWebSocket(url: ParsedURL, group: EventLoopGroup, handler: @escaping @Sendable () -> ChannelHandler & Sendable) -> EventLoopFuture<Channel> {
    ClientBootstrap(group: group)
        .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 26, automaticErrorHandling: false) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(handler())
                    }
                }
                let encoder = HTTPRequestEncoder()
                let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                let upgradeHandler = NIOHTTPClientUpgradeHandler(upgraders: [upgrader], httpHandlers: [encoder, decoder], upgradeCompletionHandler: { _ in })
                try channel.pipeline.syncOperations.addHandlers([encoder, decoder, upgradeHandler, RequestWriter(url: url)])
            }
        }
        .connect(host: url.host, port: url.port)
}

final class RequestWriter: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let url: ParsedURL
    init(url: ParsedURL) { self.url = url }
    func channelActive(context: ChannelHandlerContext) {
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.path, headers: ["Host": "\(url.host):\(url.port)"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }
}

/// Per-connection closed loop: keeps `inFlight` messages outstanding until
/// its quota is sent, records each round trip (responses come back in order).
final class LoadHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let quota: Int
    let inFlight: Int
    let payload: ByteBuffer
    let opcode: WebSocketOpcode
    let done: EventLoopPromise<[UInt64]>
    var sent = 0
    var received = 0
    var sendTimes: CircularBuffer<UInt64>
    var latencies: [UInt64] = []
    var keyState: UInt32 = 0x9E37_79B9

    init(quota: Int, inFlight: Int, payload: ByteBuffer, opcode: WebSocketOpcode, done: EventLoopPromise<[UInt64]>) {
        self.quota = quota
        self.inFlight = inFlight
        self.payload = payload
        self.opcode = opcode
        self.done = done
        self.sendTimes = CircularBuffer(initialCapacity: inFlight)
        latencies.reserveCapacity(quota)
    }

    func nextKey() -> WebSocketMaskingKey {
        // A load generator needs no unpredictable keys; xorshift is enough.
        keyState ^= keyState << 13; keyState ^= keyState >> 17; keyState ^= keyState << 5
        let k = keyState
        return [UInt8(truncatingIfNeeded: k), UInt8(truncatingIfNeeded: k >> 8), UInt8(truncatingIfNeeded: k >> 16), UInt8(truncatingIfNeeded: k >> 24)]
    }

    func handlerAdded(context: ChannelHandlerContext) {
        while sent < quota && sent - received < inFlight { sendOne(context: context) }
        context.flush()
    }

    func sendOne(context: ChannelHandlerContext) {
        sent += 1
        sendTimes.append(monotonicNs())
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, maskKey: nextKey(), data: payload)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            guard frame.fin else { return }
            received += 1
            if let start = sendTimes.popFirst() { latencies.append(monotonicNs() &- start) }
            if sent < quota { sendOne(context: context) }
            if received >= quota {
                done.succeed(latencies)
                var close = context.channel.allocator.buffer(capacity: 2)
                close.writeInteger(UInt16(1000))
                context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: nextKey(), data: close)), promise: nil)
            }
        case .connectionClose:
            if received < quota { done.fail(BenchError("server closed the connection after \(received)/\(quota) replies")) }
            context.close(promise: nil)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.fail(BenchError("connection closed after \(received)/\(quota) replies"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

enum LoadRunner {
    static func run(_ spec: LoadSpec, group: EventLoopGroup) throws -> LoadResult {
        let url = ParsedURL(spec.url)
        let bytes: [UInt8] = (0..<spec.size).map { spec.text ? UInt8(97 + $0 % 26) : UInt8(truncatingIfNeeded: $0) }
        let payload = ByteBufferAllocator().buffer(bytes: bytes)
        let perConnection = max(1, spec.messages / spec.connections)
        let cpuBefore = processCPUSeconds()
        var futures: [EventLoopFuture<[UInt64]>] = []
        var channels: [Channel] = []
        let start = monotonicNs()
        for _ in 0..<spec.connections {
            let loop = group.next()
            let done = loop.makePromise(of: [UInt64].self)
            let channel = try connectWebSocket(url: url, group: loop) {
                LoadHandler(quota: perConnection, inFlight: spec.inFlight, payload: payload, opcode: spec.text ? .text : .binary, done: done)
            }.wait()
            channels.append(channel)
            futures.append(done.futureResult)
        }
        var latencies: [UInt64] = []
        var errors = 0
        for f in futures {
            do { latencies += try f.wait() } catch { errors += 1 }
        }
        let seconds = Double(monotonicNs() - start) / 1e9
        for c in channels { c.close(promise: nil) }
        latencies.sort()
        return LoadResult(messages: latencies.count, seconds: seconds, latenciesNs: latencies, cpuSeconds: processCPUSeconds() - cpuBefore, errors: errors)
    }
}

/// Holds K upgraded connections open until SIGTERM / stdin EOF.
final class IdleHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    let ready: EventLoopPromise<Void>
    init(ready: EventLoopPromise<Void>) { self.ready = ready }
    func handlerAdded(context: ChannelHandlerContext) { ready.succeed(()) }
}

enum IdleRunner {
    static func run(url: String, count: Int, group: EventLoopGroup) throws {
        let parsed = ParsedURL(url)
        var channels: [Channel] = []
        var failed = 0
        for _ in 0..<count {
            let loop = group.next()
            let ready = loop.makePromise(of: Void.self)
            do {
                let channel = try connectWebSocket(url: parsed, group: loop) { IdleHandler(ready: ready) }.wait()
                try ready.futureResult.wait()
                channels.append(channel)
            } catch {
                failed += 1
            }
        }
        writeLine(#"{"event":"idle_ready","open":\#(channels.count),"failed":\#(failed)}"#)
        // Hold until stdin closes (the driver script controls the lifetime).
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(0, &buffer, 64) > 0 {}
        for c in channels { c.close(promise: nil) }
    }
}
