import WSGatePolicy
import WSGateProtocol
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// A `ws://` upstream: a NIO WebSocket client on the client channel's event
/// loop, relaying frames both ways as a full endpoint (it masks what it sends,
/// answers pings, validates what it receives, completes close handshakes).
final class WebSocketUpstream: UpstreamLeg, WebSocketLegDelegate, @unchecked Sendable {
    enum State {
        case idle
        case connecting
        case handshaking(Channel)
        case open(Channel)
        /// We sent a close frame and wait for the reply and the server's FIN.
        case closing(Channel)
        case ended
    }

    /// Hears how the connection ends (a pool's attempt, or the session).
    private weak var delegate: UpstreamLegDelegate?
    /// Hears the data: the connect delegate, or the session once a pool
    /// hands it over (`relayData(to:)`).
    private weak var relay: UpstreamLegDelegate?
    private let eventLoop: EventLoop
    private let url: URLParts
    /// Needed for the handshake only; released once it is sent.
    private var requestHeaders: HTTPHeaders
    private let offeredProtocols: [String]
    private let settings: SessionSettings
    private var state = State.idle
    private var handler: WebSocketLegHandler?
    private var handshakePromise: EventLoopPromise<String?>?
    private var handshakeTimer: Scheduled<Void>?
    private var closeTimer: Scheduled<Void>?
    private var lastIOError: String?
    private var aborted = false
    private let tls: NIOSSLContext?
    private let serverName: String?

    /// Where to connect when it is not the URL's host (a pool target found
    /// by DNS: the URL keeps the name, for Host and SNI).
    private let dialAddress: (host: String, port: Int)?

    init(
        eventLoop: EventLoop, url: URLParts, requestHeaders: HTTPHeaders, offeredProtocols: [String], settings: SessionSettings,
        tls: NIOSSLContext? = nil, serverName: String? = nil, dialAddress: (host: String, port: Int)? = nil
    ) {
        self.dialAddress = dialAddress
        self.tls = tls
        // SNI and verification name: the configured one, else the URL's host
        // unless it is an IP address (NIOSSL then checks the address).
        self.serverName = serverName ?? (Self.isIPAddress(url.host) ? nil : url.host)
        self.eventLoop = eventLoop
        self.url = url
        self.requestHeaders = requestHeaders
        self.offeredProtocols = offeredProtocols
        self.settings = settings
    }

    private var endpoint: String {
        let (host, port) = dialAddress ?? (url.host, url.port)
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }

    // MARK: Connecting

    func relayData(to relay: UpstreamLegDelegate) { self.relay = relay }

    func connect(delegate: UpstreamLegDelegate) -> EventLoopFuture<String?> {
        self.delegate = delegate
        self.relay = delegate
        let promise = eventLoop.makePromise(of: String?.self)
        handshakePromise = promise
        state = .connecting
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.requestTarget, headers: requestHeaders)
        requestHeaders = HTTPHeaders()
        let tls = self.tls
        let serverName = self.serverName
        ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.upstreamConnect)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            // An upstream host that vanishes without a FIN is found by the
            // kernel, as a vanished client is.
            .channelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .channelOption(ChannelOptions.recvAllocator, value: SessionSettings.receiveBuffers)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    let encoder = HTTPRequestEncoder()
                    let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                    let upgrader = FramelessClientUpgrader { [self] channel, response in
                        self.upgraded(channel: channel, response: response)
                    }
                    let upgradeHandler = NIOHTTPClientUpgradeHandler(
                        upgraders: [upgrader], httpHandlers: [encoder, decoder], upgradeCompletionHandler: { _ in })
                    let handshake = UpstreamHandshakeHandler(leg: self, request: head)
                    try channel.pipeline.syncOperations.addHandlers([encoder, decoder, upgradeHandler, handshake])
                }
            }
            .connect(host: dialAddress?.host ?? url.host, port: dialAddress?.port ?? url.port)
            .assumeIsolatedUnsafeUnchecked()
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    self.connected(channel)
                case .failure(let error):
                    self.fail(ConnectErrorClassifier.classify(error, endpoint: self.endpoint, timeout: self.settings.upstreamConnect))
                }
            }
        return promise.futureResult
    }

    private func connected(_ channel: Channel) {
        if aborted {
            channel.close(promise: nil)
            return
        }
        state = .handshaking(channel)
        channel.closeFuture.assumeIsolatedUnsafeUnchecked().whenComplete { [self] _ in self.channelClosed() }
        handshakeTimer = eventLoop.scheduleTask(in: settings.upstreamHandshake) { [self] in
            let ms = self.settings.upstreamHandshake.nanoseconds / 1_000_000
            self.fail(UpstreamFailure(.upstreamTimeout, error: "upstream handshake with \(self.endpoint) timed out after \(ms) ms", retryable: true))
        }
    }

    /// The upgrade succeeded: swap in the frame handler.
    private func upgraded(channel: Channel, response: HTTPResponseHead) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture { [self] in
            let chosen = response.headers.first(name: "sec-websocket-protocol")
            if let chosen, !self.offeredProtocols.contains(chosen) {
                throw UpstreamFailure(.upstreamProtocolError, error: "upstream chose subprotocol \(chosen) that the client did not offer")
            }
            // No frame codec from NIO (`FramelessClientUpgrader`): the leg
            // handler frames the stream itself and writes bytes.
            let handler = WebSocketLegHandler(role: .client, delegate: self, maxMessageBytes: self.settings.maxMessageBytes)
            try channel.pipeline.syncOperations.addHandler(handler)
            self.handler = handler
            if let handshake = try? channel.pipeline.syncOperations.handler(type: UpstreamHandshakeHandler.self) {
                channel.pipeline.syncOperations.removeHandler(handshake, promise: nil)
            }
            self.handshakeTimer?.cancel()
            self.state = .open(channel)
            let promise = self.handshakePromise
            self.handshakePromise = nil
            promise?.succeed(chosen)
        }.flatMapErrorThrowing { [self] error in
            self.fail(error as? UpstreamFailure ?? UpstreamFailure(.upstreamProtocolError, error: "\(error)"))
            throw error
        }
    }

    /// Connect or handshake failed.
    func fail(_ failure: UpstreamFailure) {
        handshakeTimer?.cancel()
        guard let promise = handshakePromise else { return }
        handshakePromise = nil
        switch state {
        case .handshaking(let channel), .open(let channel), .closing(let channel):
            channel.close(promise: nil)
        case .idle, .connecting, .ended:
            break
        }
        state = .ended
        promise.fail(failure)
        delegate?.upstreamEvent(.ended)
    }

    func legError(_ error: Error) {
        noteIOError(error)
    }

    func noteIOError(_ error: Error) {
        if lastIOError == nil { lastIOError = "\(endpoint): \(error)" }
    }

    private func channelClosed() {
        handshakeTimer?.cancel()
        closeTimer?.cancel()
        switch state {
        case .handshaking:
            // Reset before the 101: the upstream's application never answered.
            fail(UpstreamFailure(.upstreamProtocolError, error: lastIOError ?? "upstream \(endpoint) closed the connection during the handshake", retryable: true))
            return
        case .open:
            state = .ended
            delegate?.upstreamEvent(.failed(UpstreamFailure(.upstreamReset, error: lastIOError ?? "upstream \(endpoint) closed TCP without a close frame")))
        case .closing, .idle, .connecting:
            state = .ended
        case .ended:
            return
        }
        handler = nil
        delegate?.upstreamEvent(.ended)
    }

    // MARK: UpstreamLeg

    func startRelaying() {
        handler?.resumeReading()
    }

    /// The client leg masks the frames with fresh keys while copying them
    /// out of its read buffer: they go on as they are.
    var clientFrameFormat: ClientFrameFormat { .maskedFrames }

    func send(_ batch: FrameBatch) {
        guard case .open = state, let handler else { return }
        handler.writeFrames(batch.bytes)
    }

    func flush() {
        handler?.flush()
    }

    var isWritable: Bool {
        if case .open(let channel) = state { return channel.isWritable }
        return false
    }

    func clientBecameWritable() {
        handler?.resumeReading()
    }

    func close(code: UInt16?, reason: String) {
        switch state {
        case .open(let channel):
            state = .closing(channel)
            handler?.sendClose(code: code, reason: reason)
            delegate?.upstreamEvent(.closeSent(code: code, reason: reason))
            startCloseTimer(channel)
        case .idle, .connecting, .handshaking:
            abort()
        case .closing, .ended:
            break
        }
    }

    func abort() {
        aborted = true
        switch state {
        case .idle, .connecting:
            // `connected` closes the channel if the connect still succeeds.
            if let promise = handshakePromise {
                handshakePromise = nil
                promise.fail(UpstreamFailure(.internalError, error: "aborted"))
            }
            state = .ended
            delegate?.upstreamEvent(.ended)
        case .handshaking(let channel), .open(let channel), .closing(let channel):
            channel.close(promise: nil)
        case .ended:
            break
        }
    }

    private func startCloseTimer(_ channel: Channel) {
        closeTimer?.cancel()
        closeTimer = eventLoop.scheduleTask(in: settings.closeHandshake) {
            channel.close(promise: nil)
        }
    }

    // MARK: Events from the frame handler (WebSocketLegDelegate)

    var legMayRead: Bool { relay?.mayReadUpstream ?? true }

    /// Validated data frames from the server, as they go to the client.
    func legFrames(_ batch: FrameBatch) {
        guard case .open = state else { return }
        relay?.upstreamSent(batch)
    }

    func legReadComplete() {
        relay?.upstreamReadComplete()
    }

    func legWritabilityChanged(_ writable: Bool) {
        if writable { relay?.upstreamBecameWritable() }
    }

    /// The upstream sent a close frame.
    func legClose(code: UInt16?, reason: String) {
        switch state {
        case .open(let channel):
            // Answer it, then wait for the server to close TCP.
            state = .closing(channel)
            handler?.sendClose(code: code, reason: code == nil ? "" : reason)
            startCloseTimer(channel)
            delegate?.upstreamEvent(.closeReceived(code: code, reason: reason))
        case .closing:
            // The reply to ours; the server closes TCP next (timer as backstop).
            break
        default:
            break
        }
    }

    /// The upstream broke the protocol; `framingBroken` when NIO's decoder
    /// can no longer be parsed.
    func legViolation(_ violation: FrameViolation, framingBroken: Bool) {
        guard case .open(let channel) = state else {
            if case .closing(let channel) = state, framingBroken { channel.close(promise: nil) }
            return
        }
        state = .closing(channel)
        let (code, detail) = ViolationPolicy.upstreamClose(violation)
        handler?.sendClose(code: code, reason: "") { _ in
            // RFC 6455 §7.1.7, failing the connection: the close frame says
            // why, then the TCP connection goes. Nothing more is read from a
            // server that broke the protocol, so its reply is not awaited.
            channel.close(promise: nil)
        }
        delegate?.upstreamEvent(.closeSent(code: code, reason: ""))
        startCloseTimer(channel)
        delegate?.upstreamEvent(.failed(UpstreamFailure(.upstreamProtocolError, error: "upstream \(endpoint): \(detail)")))
    }
}
