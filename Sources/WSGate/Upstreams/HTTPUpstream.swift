import WSGatePolicy
import WSGateProtocol
import CoreMetrics
import Logging
import NIOCore
import NIOWebSocket

/// An `http://` / `https://` upstream: every complete client message becomes
/// one HTTP request made with libcurl; a 2xx response body becomes one
/// message back. Requests of one connection run concurrently (up to
/// `maxInFlight`), responses are delivered strictly in message order.
final class HTTPUpstream: LocalUpstream, @unchecked Sendable {
    /// One message's request, in order; `result` is set when it completes.
    private final class Slot {
        var ticket: CurlClient.Ticket = 0
        var result: Result<CurlResponse, Error>?
    }

    /// More than this many requests in flight on one connection: stop reading
    /// the client until responses come back (backpressure).
    static let maxInFlight = 32

    private(set) weak var delegate: UpstreamLegDelegate?
    var hasEnded = false
    private let eventLoop: EventLoop
    private let client: CurlClient
    private let url: URLParts
    private let route: Route
    private let settings: SessionSettings
    private let timeouts: (connectMs: Int, requestMs: Int)
    /// Headers every request of this connection carries.
    private let commonHeaders: [String]
    private let urlString: String
    private let connectTo: String?
    private lazy var textHeaders = CurlHeaderList(commonHeaders + ["Content-Type: text/plain; charset=utf-8", "X-WSGate-Message-Type: text"])
    private lazy var binaryHeaders = CurlHeaderList(commonHeaders + ["Content-Type: application/octet-stream", "X-WSGate-Message-Type: binary"])
    /// Every message's request is one of these with its body and deadline
    /// set: the options box is built once per connection, not per message.
    private lazy var textTemplate = request(url: urlString, headers: textHeaders, body: nil)
    private lazy var binaryTemplate = request(url: urlString, headers: binaryHeaders, body: nil)
    private let logger: Logger
    /// `wsgate_http_upstream_request_seconds`.
    var requestTimer: CoreMetrics.Timer?

    /// A fragmented message being put together (single-frame messages,
    /// the usual case, go on as a slice of the client's batch, uncopied).
    private var message: ByteBuffer?
    private var messageIsText = false
    /// Client frames waiting for a request slot (`submitWaiting`), and when
    /// the oldest of them was read: their `http_request_ms` runs from then.
    private var waiting: FrameReader?
    private var waitingSince = NIODeadline.now()
    /// From `connect_url`'s `X-WSGate-Channels`.
    private(set) var subscribedChannels: [String] = []
    /// The `connect_url` request while it runs (cancelled if the client goes).
    private var connectTicket: CurlClient.Ticket?
    private var inFlight = CircularBuffer<Slot>()
    private let allocator = ByteBufferAllocator()

    /// The route's pool: each request goes to the target it chooses.
    private let pool: UpstreamPool?
    private let hashKey: String?
    /// Per target: the request URL and the `CURLOPT_CONNECT_TO` entry.
    private var addressing: [String: (url: String, connectTo: String?)] = [:]
    /// Per target: the options of its requests (the route's, addressed to it).
    private var targetOptions: [String: CurlRequest.Options] = [:]
    /// The target of the last request and every connect attempt so far (the
    /// log line's `target` and `attempts`).
    private var lastTarget: PoolState.Target?
    private var attempts = 0

    init(
        eventLoop: EventLoop, client: CurlClient, url: URLParts, route: Route, commonHeaders: [String], config: GatewayConfig,
        logger: Logger, pool: UpstreamPool? = nil, hashKey: String? = nil
    ) {
        self.eventLoop = eventLoop
        self.client = client
        self.url = url
        self.route = route
        self.settings = SessionSettings(config: config)
        self.timeouts = (config.timeouts.upstreamConnectMs, config.timeouts.httpRequestMs)
        self.commonHeaders = commonHeaders
        (self.urlString, self.connectTo) = Self.addressing(url, dial: nil, serverName: route.tls?.serverName)
        self.logger = logger
        self.pool = pool
        self.hashKey = hashKey
    }

    /// The URL libcurl is given and where it really connects: the URL names
    /// the server (Host, SNI, verification: `tls.server_name` or the URL's
    /// host), `CONNECT_TO` sends the connection to the address to dial.
    static func addressing(_ url: URLParts, dial: (host: String, port: Int)?, serverName: String?) -> (url: String, connectTo: String?) {
        var named = url
        if url.isTLS, let serverName { named.host = serverName }
        let (host, port) = dial ?? (url.host, url.port)
        guard named.host != host || named.port != port else { return (named.description, nil) }
        func bracketed(_ h: String) -> String { h.contains(":") ? "[\(h)]" : h }
        return (named.description, "\(bracketed(named.host)):\(named.port):\(bracketed(host)):\(port)")
    }

    private func options(for target: PoolState.Target, from request: CurlRequest) -> CurlRequest.Options {
        if let known = targetOptions[target.id] { return known }
        var addressed = request
        (addressed.url, addressed.connectTo) = addressing(for: target)
        targetOptions[target.id] = addressed.sharedOptions
        return addressed.sharedOptions
    }

    private func addressing(for target: PoolState.Target) -> (url: String, connectTo: String?) {
        if let known = addressing[target.id] { return known }
        let memberURL = UpstreamFactory.url(url, for: target)
        let result = Self.addressing(memberURL, dial: (target.address, target.port), serverName: route.tls?.serverName)
        addressing[target.id] = result
        return result
    }

    var dialled: DialReport? {
        guard pool != nil else { return nil }
        return DialReport(target: lastTarget?.id, attempts: attempts, url: lastTarget.map { UpstreamFactory.url(url, for: $0) })
    }

    private func request(url: String, headers: CurlHeaderList, body: ByteBuffer?) -> CurlRequest {
        var request = CurlRequest(
            url: url, method: route.http.method, headers: headers, body: body,
            connectTimeoutMs: timeouts.connectMs, totalTimeoutMs: timeouts.requestMs,
            maxResponseBytes: settings.maxMessageBytes)
        if url == urlString {  // the route's upstream
            request.tls = route.tls
            request.connectTo = connectTo
            request.httpVersion = route.http.version
        } else if let tls = route.tls {
            // Hooks trust what the route trusts; `server_name` names the
            // upstream, not the hook's host.
            var hookTLS = tls
            hookTLS.serverName = nil
            request.tls = hookTLS
        }
        return request
    }

    // MARK: Connecting: the optional connect_url hook

    func connect(delegate: UpstreamLegDelegate) -> EventLoopFuture<String?> {
        self.delegate = delegate
        guard let connectURL = route.http.connectURL else {
            return eventLoop.makeSucceededFuture(nil)
        }
        var hook = request(url: connectURL, headers: CurlHeaderList(commonHeaders), body: nil)
        hook.method = "POST"
        hook.captureHeader = "X-WSGate-Channels"
        let call = client.start(hook, on: eventLoop)
        connectTicket = call.ticket
        return call.future.always { [self] _ in self.connectTicket = nil }.flatMapThrowing { response -> String? in
            switch response.status {
            case 200..<300:
                // The backend may subscribe the connection to channels.
                self.subscribedChannels = HTTPText.list(response.capturedHeader ?? "")
                return nil
            case 400...:
                throw UpstreamFailure(.upstreamHTTPError, httpStatus: response.status, error: "connect_url answered HTTP \(response.status)")
            default:
                throw UpstreamFailure(.upstreamProtocolError, httpStatus: response.status, error: "connect_url answered HTTP \(response.status)")
            }
        }.flatMapErrorThrowing { error in
            if let failure = error as? CurlFailure {
                throw UpstreamFailure(failure.cause, error: "connect_url: \(failure.message)")
            }
            throw error
        }
    }

    func startRelaying() {}

    // MARK: Messages

    /// Unmasked frames: each message's payload is read straight out of them.
    var clientFrameFormat: ClientFrameFormat { .plainFrames }

    func send(_ batch: FrameBatch) {
        guard !hasEnded else { return }
        // The batch holds complete, validated, unmasked frames.
        if waiting == nil {
            waiting = FrameReader(maxFrameBytes: .max)
            waitingSince = .now()
        }
        waiting!.append(batch.bytes)
        submitWaiting()
    }

    /// Starts requests for the waiting frames while there are slots and the
    /// client takes responses: the cap holds per message, not per client
    /// read. What is left waits for a slot (or for the client to read), and
    /// the client is not read meanwhile.
    private func submitWaiting() {
        while !hasEnded, inFlight.count < Self.maxInFlight, delegate?.mayReadUpstream ?? false,
            case .frame(let header, let payload, _)? = waiting?.next()
        {
            if header.opcodeBits != 0 {  // text or binary: a new message
                messageIsText = header.opcodeBits == 0x1
                if header.fin {
                    submit(payload, isText: messageIsText)
                    continue
                }
                message = allocator.buffer(capacity: payload.readableBytes)
            }
            message?.writeImmutableBuffer(payload)
            if header.fin, let body = message {
                message = nil
                submit(body, isText: messageIsText)
            }
        }
        if waiting?.bufferedBytes == 0 || hasEnded { waiting = nil }
    }

    private func submit(_ body: ByteBuffer, isText: Bool) {
        let slot = Slot()
        inFlight.append(slot)
        let started = waitingSince  // when this message was read
        var request = isText ? textTemplate : binaryTemplate
        request.body = body
        request.deadline = started + .milliseconds(Int64(timeouts.requestMs))
        send(request, slot: slot, started: started, tried: [])
    }

    /// Sends one message's request to a target of the pool (or the route's
    /// one upstream). A request that did not reach its target (refused, timed
    /// out or failed TLS before a byte was sent) goes to the next target; one
    /// that may have reached a backend is never repeated.
    private func send(_ template: CurlRequest, slot: Slot, started: NIODeadline, tried: Set<String>) {
        var request = template
        var target: PoolState.Target? = nil
        if let pool, let chosen = pool.choose(hashKey: hashKey, tried: tried) {
            target = chosen
            request.share(options(for: chosen, from: template))
            pool.connectionStarted(chosen.id)
            lastTarget = chosen
        }
        attempts += 1
        let call = client.start(request, on: eventLoop)
        slot.ticket = call.ticket
        call.future
            .assumeIsolatedUnsafeUnchecked()
            .whenComplete { [self] result in
                if let pool = self.pool, let target {
                    var failure: UpstreamFailure? = nil
                    if case .failure(let error) = result, let curl = error as? CurlFailure, curl.cause != .clientGone, curl.cause != .shutdown,
                        curl.cause != .overloaded, curl.notSent
                    {
                        failure = UpstreamFailure(curl.cause, error: curl.message, retryable: true)
                    }
                    pool.requestFinished(target, failure: failure, on: self.eventLoop)
                    if failure != nil, !self.hasEnded, tried.count + 1 < pool.maxAttempts, NIODeadline.now() < template.deadline ?? .distantFuture {
                        return self.send(template, slot: slot, started: started, tried: tried.union([target.id]))
                    }
                }
                self.requestTimer?.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
                slot.result = result.mapError { $0 }
                self.deliverCompleted()
            }
    }

    /// Delivers finished responses from the head of the queue, in order.
    private func deliverCompleted() {
        let wasWritable = isWritable
        var delivered = false
        while let head = inFlight.first, let result = head.result {
            inFlight.removeFirst()
            guard !hasEnded, let delegate else { continue }
            switch result {
            case .success(let response):
                switch response.status {
                case 200..<300:
                    if response.status != 204 && response.body.readableBytes > 0 {
                        delegate.upstreamSent(frame(for: response))
                        delivered = true
                    }
                case 400...:
                    if route.http.onError == .reply {
                        delegate.upstreamSent(errorMessage(status: response.status))
                        delivered = true
                    } else {
                        delegate.upstreamEvent(.failed(UpstreamFailure(
                            .upstreamHTTPError, httpStatus: response.status,
                            error: "\(route.http.method) \(url) answered HTTP \(response.status)")))
                    }
                default:
                    delegate.upstreamEvent(.failed(UpstreamFailure(
                        .upstreamProtocolError, httpStatus: response.status,
                        error: "\(route.http.method) \(url) answered HTTP \(response.status), which is neither a success nor an error")))
                }
            case .failure(let error):
                let failure = error as? CurlFailure
                delegate.upstreamEvent(.failed(UpstreamFailure(
                    failure?.cause ?? .internalError, error: failure.map { "\(route.http.method) \(url): \($0.message)" } ?? "\(error)")))
            }
        }
        if delivered { delegate?.upstreamReadComplete() }
        submitWaiting()
        if !wasWritable && isWritable { delegate?.upstreamBecameWritable() }
    }

    /// Text when the response says it is text (`text/*`, `application/json`)
    /// and the body is valid UTF-8, else binary.
    private func frame(for response: CurlResponse) -> FrameBatch {
        var isText = false
        if let type = response.contentType, type.hasPrefix("text/") || type == "application/json" {
            var validator = UTF8Validator()
            isText = response.body.withUnsafeReadableBytes { validator.feed($0) } && validator.isComplete
        }
        return message(isText ? .text : .binary, response.body)
    }

    private func errorMessage(status: Int) -> FrameBatch {
        let json = #"{"error":{"status":\#(status),"cause":"upstream_http_error"}}"#
        return message(.text, allocator.buffer(string: json))
    }

    /// One unfragmented, unmasked message as it goes to the client.
    private func message(_ opcode: WebSocketOpcode, _ payload: ByteBuffer) -> FrameBatch {
        let bytes = MaskedFrameWriter.serialize(
            fin: true, opcode: opcode, payload: payload, payloadMaskedWith: nil, newKey: nil, allocator: allocator)
        return FrameBatch(bytes: bytes, messages: 1, payloadBytes: payload.readableBytes)
    }

    /// The client may be read while no frames wait for a request slot, a
    /// slot is free, and the client takes the responses (its channel is
    /// writable): replies never queue without bound for a client that does
    /// not read. At most `maxInFlight` responses are held for it.
    var isWritable: Bool {
        !hasEnded && waiting == nil && inFlight.count < Self.maxInFlight && (delegate?.mayReadUpstream ?? false)
    }

    func flush() {}

    // MARK: Ending

    func close(code: UInt16?, reason: String) { finish() }

    func abort() { finish() }

    /// The connection is ending: requests that are queued or running for it
    /// are cancelled, so that no backend work outlives the client.
    private func finish() {
        var tickets = inFlight.compactMap { $0.result == nil ? $0.ticket : nil }
        if let connectTicket { tickets.append(connectTicket) }
        client.cancel(tickets)
        waiting = nil
        end()
    }

    func clientBecameWritable() {
        submitWaiting()
        if isWritable { delegate?.upstreamBecameWritable() }
    }

    // MARK: The disconnect_url hook

    func connectionFinished(_ event: CloseEvent) {
        guard let disconnectURL = route.http.disconnectURL else { return }
        var hook = request(url: disconnectURL, headers: CurlHeaderList(commonHeaders + ["Content-Type: application/json"]), body: allocator.buffer(string: event.jsonLine()))
        hook.method = "POST"
        hook.maxResponseBytes = 65536
        let logger = self.logger
        client.execute(hook, on: eventLoop).whenComplete { result in
            var problem: String?
            switch result {
            case .success(let response) where (200..<300).contains(response.status): break
            case .success(let response): problem = "HTTP \(response.status)"
            case .failure(let error): problem = (error as? CurlFailure)?.message ?? "\(error)"
            }
            if let problem {
                logger.warning("disconnect_hook_failed", metadata: [
                    "connection_id": .string(event.connectionID), "url": .string(disconnectURL), "error": .string(problem),
                ])
            }
        }
    }
}
