import Dispatch
import Histogram
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
    var timeoutSeconds: Int64
}

/// Round-trip latencies in nanoseconds, 3 significant digits. Values above the
/// trackable range (a minute) are clamped to it.
typealias LatencyHistogram = Histogram<UInt64>
let latencyCeilingNs: UInt64 = 60_000_000_000

func makeLatencyHistogram() -> LatencyHistogram {
    LatencyHistogram(lowestDiscernibleValue: 1, highestTrackableValue: latencyCeilingNs, numberOfSignificantValueDigits: .three)
}

struct LoadResult {
    var connections: Int
    var messages: Int
    var seconds: Double
    var histogram: LatencyHistogram
    var cpuSeconds: Double
    var errors: Int
    var errorSamples: [String]

    func percentileUs(_ p: Double) -> Double {
        histogram.totalCount == 0 ? 0 : Double(histogram.valueAtPercentile(p)) / 1000
    }

    var json: String {
        let rate = seconds > 0 ? Double(messages) / seconds : 0
        let maxUs = histogram.totalCount == 0 ? 0 : Double(histogram.max) / 1000
        let meanUs = histogram.totalCount == 0 ? 0 : histogram.mean / 1000
        let samples = errorSamples.map(jsonString).joined(separator: ",")
        return """
            {"connections":\(connections),"messages":\(messages),"seconds":\(fmt(seconds)),"msgs_per_s":\(fmt(rate)),\
            "p50_us":\(fmt(percentileUs(50))),"p99_us":\(fmt(percentileUs(99))),"p999_us":\(fmt(percentileUs(99.9))),\
            "max_us":\(fmt(maxUs)),"mean_us":\(fmt(meanUs)),\
            "client_cpu_s":\(fmt(cpuSeconds)),"errors":\(errors),"error_samples":[\(samples)]}
            """
    }
}

func fmt(_ d: Double) -> String {
    guard d.isFinite else { return "0" }
    return String((d * 1000).rounded() / 1000)
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case _ where u.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

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

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit (idle
/// mode holds thousands of sockets). Returns the resulting soft limit.
@discardableResult
func raiseFileLimit() -> UInt64 {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
    }
    return UInt64(limit.rlim_cur)
}

struct ParsedURL: Sendable {
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

/// Opens one WebSocket client channel on `loop`, installs `handler` once the
/// upgrade completes, and succeeds only then. Fails on a refused or timed-out
/// connect, a non-101 answer, or a close before the upgrade; never waits longer
/// than `timeout` overall.
func connectWebSocket(url: ParsedURL, loop: EventLoop, timeout: TimeAmount = .seconds(15),
                      handler: @escaping @Sendable () -> ChannelHandler & Sendable) -> EventLoopFuture<Channel> {
    let upgraded = loop.makePromise(of: Void.self)
    let deadline = loop.scheduleTask(in: timeout) { upgraded.fail(BenchError("upgrade timed out")) }
    upgraded.futureResult.whenComplete { _ in deadline.cancel() }
    let connected = ClientBootstrap(group: loop)
        .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
        .connectTimeout(timeout)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                let writer = RequestWriter(url: url, upgraded: upgraded)
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 26, automaticErrorHandling: false) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        // The HTTP part is over: frames go straight to the WebSocket handlers.
                        channel.pipeline.syncOperations.removeHandler(writer, promise: nil)
                        try channel.pipeline.syncOperations.addHandler(handler())
                        upgraded.succeed(())
                    }
                }
                let encoder = HTTPRequestEncoder()
                let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                let upgradeHandler = NIOHTTPClientUpgradeHandler(upgraders: [upgrader], httpHandlers: [encoder, decoder], upgradeCompletionHandler: { _ in })
                try channel.pipeline.syncOperations.addHandlers([encoder, decoder, upgradeHandler, writer])
            }
        }
        .connect(host: url.host, port: url.port)
    connected.whenFailure { upgraded.fail($0) }
    return connected.flatMap { channel in
        channel.closeFuture.whenComplete { _ in upgraded.fail(BenchError("connection closed before the upgrade")) }
        return upgraded.futureResult.map { channel }.flatMapErrorThrowing { error in
            channel.close(promise: nil)
            throw error
        }
    }
}

/// Sends the upgrade request; turns a non-101 answer or a pipeline error
/// before the upgrade into a failed upgrade.
final class RequestWriter: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let url: ParsedURL
    let upgraded: EventLoopPromise<Void>
    init(url: ParsedURL, upgraded: EventLoopPromise<Void>) {
        self.url = url
        self.upgraded = upgraded
    }
    func channelActive(context: ChannelHandlerContext) {
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.path, headers: ["Host": "\(url.host):\(url.port)"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data), head.status != .switchingProtocols {
            upgraded.fail(BenchError("upgrade refused: HTTP \(head.status.code)"))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        upgraded.fail(error)
        context.close(promise: nil)
    }
}

/// Tells every load handler to start sending (all connections begin together).
struct StartLoad: Sendable {}

/// Per-connection closed loop: keeps `inFlight` messages outstanding until
/// its quota is sent, records each round trip (responses come back in order)
/// in its own histogram; histograms are merged after the run, so the hot
/// path takes no lock.
final class LoadHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let quota: Int
    let inFlight: Int
    let payload: ByteBuffer
    let opcode: WebSocketOpcode
    let done: EventLoopPromise<LatencyHistogram>
    var sent = 0
    var received = 0
    var sendTimes: CircularBuffer<UInt64>
    var histogram = makeLatencyHistogram()
    var keyState: UInt32 = 0x9E37_79B9

    init(quota: Int, inFlight: Int, payload: ByteBuffer, opcode: WebSocketOpcode, done: EventLoopPromise<LatencyHistogram>) {
        self.quota = quota
        self.inFlight = inFlight
        self.payload = payload
        self.opcode = opcode
        self.done = done
        self.sendTimes = CircularBuffer(initialCapacity: inFlight)
    }

    func nextKey() -> WebSocketMaskingKey {
        // A load generator needs no unpredictable keys; xorshift is enough.
        keyState ^= keyState << 13; keyState ^= keyState >> 17; keyState ^= keyState << 5
        let k = keyState
        return [UInt8(truncatingIfNeeded: k), UInt8(truncatingIfNeeded: k >> 8), UInt8(truncatingIfNeeded: k >> 16), UInt8(truncatingIfNeeded: k >> 24)]
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is StartLoad else { return context.fireUserInboundEventTriggered(event) }
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
            guard received < quota else { return }
            received += 1
            if let start = sendTimes.popFirst() {
                histogram.record(min(monotonicNs() &- start, latencyCeilingNs))
            }
            if sent < quota { sendOne(context: context) }
            if received >= quota {
                done.succeed(histogram)
                var close = context.channel.allocator.buffer(capacity: 2)
                close.write(webSocketErrorCode: .normalClosure)
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

/// Counts errors by description, keeping a few samples.
final class ErrorLog: Sendable {
    private let state = NIOLockedValueBox<(count: Int, samples: [String: Int])>((0, [:]))
    func add(_ error: Error) {
        state.withLockedValue { s in
            s.count += 1
            let d = "\(error)"
            if s.samples[d] != nil || s.samples.count < 8 { s.samples[d, default: 0] += 1 }
        }
    }
    var count: Int { state.withLockedValue { $0.count } }
    var samples: [String] {
        state.withLockedValue { s in s.samples.sorted { $0.value > $1.value }.map { "\($0.key) (x\($0.value))" } }
    }
}

enum LoadRunner {
    static func run(_ spec: LoadSpec, group: EventLoopGroup) throws -> LoadResult {
        let url = ParsedURL(spec.url)
        let bytes: [UInt8] = (0..<spec.size).map { spec.text ? UInt8(97 + $0 % 26) : UInt8(truncatingIfNeeded: $0) }
        let payload = ByteBufferAllocator().buffer(bytes: bytes)
        let perConnection = max(1, spec.messages / spec.connections)
        let errors = ErrorLog()

        // Connect and upgrade every connection concurrently; load starts once all are up.
        var pending: [(EventLoopFuture<Channel>, EventLoopFuture<LatencyHistogram>)] = []
        for _ in 0..<spec.connections {
            let loop = group.next()
            let done = loop.makePromise(of: LatencyHistogram.self)
            let channel = connectWebSocket(url: url, loop: loop) {
                LoadHandler(quota: perConnection, inFlight: spec.inFlight, payload: payload, opcode: spec.text ? .text : .binary, done: done)
            }
            channel.whenFailure { done.fail($0) }
            pending.append((channel, done.futureResult))
        }
        var running: [(Channel, EventLoopFuture<LatencyHistogram>)] = []
        for (channel, done) in pending {
            do { running.append((try channel.wait(), done)) } catch { errors.add(error) }
        }

        let cpuBefore = processCPUSeconds()
        let start = monotonicNs()
        for (channel, done) in running {
            let deadline = channel.eventLoop.scheduleTask(in: .seconds(spec.timeoutSeconds)) {
                channel.close(promise: nil)
            }
            done.whenComplete { _ in deadline.cancel() }
            channel.pipeline.fireUserInboundEventTriggered(StartLoad())
        }
        var merged = makeLatencyHistogram()
        for (_, done) in running {
            do { merged.add(try done.wait()) } catch { errors.add(error) }
        }
        let seconds = Double(monotonicNs() - start) / 1e9
        let cpu = processCPUSeconds() - cpuBefore
        for (channel, _) in running { channel.close(promise: nil) }
        return LoadResult(connections: running.count, messages: Int(merged.totalCount), seconds: seconds, histogram: merged,
                          cpuSeconds: cpu, errors: errors.count, errorSamples: errors.samples)
    }
}

/// An idle connection: answers pings (none are expected from the proxies
/// measured) and a close, sends nothing else.
final class IdleHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let key: WebSocketMaskingKey = [0x12, 0x34, 0x56, 0x78]
        switch frame.opcode {
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: key, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: key, data: frame.unmaskedData)))
                .whenComplete { _ in channel.close(promise: nil) }
        default:
            break
        }
    }
}

/// Holds K upgraded connections open until stdin closes, connecting at most
/// `parallel` at a time. Every line read from stdin is answered with a status
/// line (how many are still open).
enum IdleRunner {
    static func run(url: String, count: Int, parallel: Int, fileLimit: UInt64, group: EventLoopGroup) throws {
        let parsed = ParsedURL(url)
        let errors = ErrorLog()
        let slots = DispatchSemaphore(value: max(1, parallel))
        let finished = DispatchGroup()
        let channels = NIOLockedValueBox<[Channel]>([])
        channels.withLockedValue { $0.reserveCapacity(count) }
        let start = monotonicNs()
        for _ in 0..<count {
            slots.wait()
            finished.enter()
            connectWebSocket(url: parsed, loop: group.next()) { IdleHandler() }.whenComplete { result in
                switch result {
                case .success(let channel): channels.withLockedValue { $0.append(channel) }
                case .failure(let error): errors.add(error)
                }
                slots.signal()
                finished.leave()
            }
        }
        finished.wait()
        let seconds = Double(monotonicNs() - start) / 1e9
        let open = channels.withLockedValue { $0.count }
        for s in errors.samples { FileHandleStderr.write("idle: connect failed: \(s)\n") }
        let samples = errors.samples.map(jsonString).joined(separator: ",")
        writeLine(#"{"event":"idle_ready","open":\#(open),"failed":\#(errors.count),"seconds":\#(fmt(seconds)),"nofile":\#(fileLimit),"errors":[\#(samples)]}"#)
        // Hold until stdin closes (the driver script controls the lifetime).
        while readLine() != nil {
            let active = channels.withLockedValue { $0.filter { $0.isActive }.count }
            writeLine(#"{"event":"idle_status","open":\#(active),"closed":\#(open - active)}"#)
        }
        let all = channels.withLockedValue { $0 }
        for c in all { c.close(promise: nil) }
    }
}

enum FileHandleStderr {
    static func write(_ s: String) {
        var s = s
        _ = s.withUTF8 { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
