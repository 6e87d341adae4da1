import WSGatePolicy
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The client-facing listener: accepts TCP connections, runs the HTTP/1.1
/// upgrade, and hands upgraded connections to Sessions.
public final class GatewayServer: Sendable {
    let gateway: GatewayContext
    let group: EventLoopGroup
    private let serverChannel = NIOLockedValueBox<Channel?>(nil)
    private let admin: AdminServer
    /// The other instances (`cluster.peers`).
    private let cluster: ClusterPeers?
    /// The control API's own listener (`control:`), if configured.
    private let controlServer: AdminServer?
    private let adminPortBox = NIOLockedValueBox<Int?>(nil)

    /// Throws when a TLS certificate, key or CA file cannot be loaded.
    public init(config: GatewayConfig, group: EventLoopGroup, logger: Logger, eventLog: EventLog) throws {
        self.gateway = try GatewayContext(config: config, eventLog: eventLog, logger: logger, group: group)
        self.group = group
        let token = config.control?.tokenEnv.flatMap { getenv($0) }.map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        let gateway = self.gateway
        var cluster: ClusterPeers? = nil
        if !config.cluster.peers.isEmpty || config.cluster.peersDNS != nil, let curl = gateway.upstreams.curl?.client(for: group.next()) {
            cluster = ClusterPeers(
                ownInstance: gateway.instanceID, settings: config.cluster, curl: curl, token: token,
                resolver: gateway.upstreams.resolver, logger: logger)
        }
        self.cluster = cluster
        let api = { (host: String) -> ControlAPI in
            ControlAPI(
                registry: gateway.registry, channels: gateway.environment.channels, instanceID: gateway.instanceID,
                maxMessageBytes: config.limits.maxMessageBytes, token: token,
                listenerIsLoopback: host == "localhost" || host == "::1" || host.hasPrefix("127."), cluster: cluster)
        }
        if let control = config.control {
            self.admin = AdminServer(status: gateway, host: config.admin.host, port: config.admin.port, logger: logger)
            self.controlServer = AdminServer(
                status: gateway, host: control.host, port: control.port, logger: logger, control: api(control.host), servesAdmin: false)
        } else {
            self.admin = AdminServer(
                status: gateway, host: config.admin.host, port: config.admin.port, logger: logger, control: api(config.admin.host))
            self.controlServer = nil
        }
    }

    /// The admin listener's bound port, once started.
    public var adminPort: Int? { adminPortBox.withLockedValue { $0 } }

    /// The number of upgraded connections still open.
    public var activeConnections: Int { gateway.registry.count }

    /// Binds and starts accepting; returns the bound port.
    public func start() async throws -> Int {
        let gateway = self.gateway
        let serverTLS = gateway.serverTLS
        for route in gateway.config.routes where route.tls?.insecureSkipVerify == true {
            gateway.logger.warning("tls_verification_disabled", metadata: [
                "route": .string(route.path), "upstream": .string(route.upstream.description),
            ])
        }
        // Token verifiers: keys from files and the environment load now (a
        // bad one stops the start); JWKS URLs are fetched in the background.
        for route in gateway.config.routes {
            guard let auth = route.auth else { continue }
            let loop = group.next()
            let verifier = try await JWTVerifier(
                route: route.path, settings: auth, curl: gateway.upstreams.curl?.client(for: loop), eventLoop: loop,
                logger: gateway.logger)
            verifier.start()
            gateway.verifiers.withLockedValue { $0[route.path] = verifier }
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            // Half-open clients (vanished without FIN) are eventually found by the kernel.
            .childChannelOption(ChannelOptions.socketOption(.so_keepalive), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
            .childChannelOption(ChannelOptions.recvAllocator, value: SessionSettings.receiveBuffers)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let serverTLS {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverTLS))
                    }
                    guard gateway.pendingHandshakes.enter() else {
                        // Over limits.max_pending_handshakes: nothing of this
                        // connection is read or held.
                        gateway.eventLog.rejected(.init(
                            status: 503, reason: "too many pending handshakes", method: "", path: "",
                            clientAddress: channel.remoteAddress?.gatewayDescription ?? "unknown"))
                        gateway.metrics.handshakesRefused.increment()
                        channel.close(promise: nil)
                        return
                    }
                    let limiter = RequestHeadLimiter(maxHeadBytes: gateway.config.limits.maxHeaderBytes)
                    try channel.pipeline.syncOperations.addHandler(limiter)
                    let gate = UpgradeReadGate()
                    try channel.pipeline.syncOperations.addHandler(gate)
                    let connection = ClientConnection(gateway: gateway, channel: channel, limiter: limiter, readGate: gate)
                    let upgrader = FramelessServerUpgrader(
                        shouldUpgrade: { _, head in connection.shouldUpgrade(head) },
                        upgradePipelineHandler: { channel, _ in connection.upgraded(channel: channel) })
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: false,
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }),
                        withErrorHandling: false)
                    try channel.pipeline.syncOperations.addHandler(RejectHandler(connection: connection))
                }
            }
        let channel = try await bootstrap.bind(host: gateway.config.listen.host, port: gateway.config.listen.port).get()
        serverChannel.withLockedValue { $0 = channel }
        let port = channel.localAddress?.port ?? gateway.config.listen.port
        gateway.upstreams.startPools(group: group)
        gateway.logger.info("listening", metadata: [
            "host": .string(gateway.config.listen.host), "port": .stringConvertible(port),
            "routes": .stringConvertible(gateway.config.routes.count), "tls": .stringConvertible(serverTLS != nil),
            "workers": .stringConvertible(group.makeIterator().reduce(0) { n, _ in n + 1 }),
        ])
        do {
            let adminPort = try await admin.start(group: group)
            adminPortBox.withLockedValue { $0 = adminPort }
            _ = try await controlServer?.start(group: group)
            cluster?.start(on: group.next())
        } catch {
            try? await channel.close()
            throw error
        }
        return port
    }

    /// Stops accepting new connections.
    public func stopAccepting() async {
        let channel = serverChannel.withLockedValue { $0 }
        try? await channel?.close()
    }

    /// Graceful drain: every client gets `shutdown.close_code`; after
    /// `timeout`, whatever is left is dropped. Returns within `timeout` plus
    /// about a second, whatever the upstreams do: every session has logged
    /// its close line by then (forced ones included), and HTTP requests and
    /// `disconnect_url` hooks still running are aborted.
    public func drain(timeout: TimeAmount) async {
        gateway.startDraining()  // /readyz answers 503 from now on
        await stopAccepting()
        let sessions = gateway.registry.all.shuffled()
        let spread = Double(gateway.config.shutdown.spreadMs)
        for (i, session) in sessions.enumerated() {
            if spread > 0 {
                // Stratified jitter: the i-th close falls at a random point of
                // the i-th of n equal slices of the window, so the closes are
                // uniform over it, never bunched.
                let ms = spread * (Double(i) + Double.random(in: 0..<1)) / Double(sessions.count)
                session.eventLoop.scheduleTask(in: .microseconds(Int64(ms * 1000))) { session.shutdown() }
            } else {
                session.eventLoop.execute { session.shutdown() }
            }
        }
        let deadline = NIODeadline.now() + timeout
        while gateway.registry.count > 0 && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        if gateway.registry.count > 0 {
            for session in gateway.registry.all {
                session.eventLoop.execute { session.forceClose() }
            }
            let grace = NIODeadline.now() + .milliseconds(300)
            while gateway.registry.count > 0 && NIODeadline.now() < grace {
                try? await Task.sleep(nanoseconds: 10_000_000)
            }
        }
        // The hooks of the last connections (disconnect_url) and anything
        // still running get a bounded share, then are aborted.
        await gateway.upstreams.stopPools()
        for verifier in gateway.verifiers.withLockedValue({ Array($0.values) }) { verifier.stop() }
        await gateway.upstreams.curl?.shutdown(abortAt: max(deadline, .now()) + .milliseconds(500))
        cluster?.stop()
        await admin.stop()
        await controlServer?.stop()
    }
}
