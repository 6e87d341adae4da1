import Logging
import NIOConcurrencyHelpers
import NIOCore
import WSGatePolicy

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The other instances of a cluster (`cluster.peers`), and which instance
/// answers at which address, so that a control request for a connection
/// another instance holds reaches it: a connection id starts with its
/// instance's name.
///
/// Peers are the configured `host:port` list, or every address of a DNS
/// name (a Kubernetes headless Service), re-resolved every `refresh_ms`.
/// Each peer is asked its name (`GET /@instance`) at the same pace; only
/// addresses from `cluster.peers` are ever called, with the bearer token.
final class ClusterPeers: Sendable {
    let ownInstance: String
    private let settings: GatewayConfig.Cluster
    private let curl: CurlClient
    private let token: String?
    private let resolver: HostResolver?
    private let logger: Logger
    /// Peer address (`host:port`) → its instance id, once it answered.
    private let peers = NIOLockedValueBox<[String: String?]>([:])
    private let refresh = NIOLockedValueBox<RepeatedTask?>(nil)

    init(ownInstance: String, settings: GatewayConfig.Cluster, curl: CurlClient, token: String?, resolver: HostResolver?, logger: Logger) {
        self.ownInstance = ownInstance
        self.settings = settings
        self.curl = curl
        self.token = token
        self.resolver = resolver
        self.logger = logger
        peers.withLockedValue { p in for address in settings.peers { p[address] = .some(nil) } }
    }

    var isConfigured: Bool { !settings.peers.isEmpty || settings.peersDNS != nil }

    /// Addresses of every peer but this instance.
    var addresses: [String] {
        peers.withLockedValue { p in p.filter { $0.value != ownInstance }.map(\.key).sorted() }
    }

    /// The address of the peer that is `instance`, if known.
    func address(of instance: String) -> String? {
        peers.withLockedValue { p in p.first { $0.value == instance }?.key }
    }

    func start(on eventLoop: EventLoop) {
        guard isConfigured else { return }
        let task = eventLoop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: .milliseconds(Int64(settings.refreshMs))) {
            [self] _ in self.refreshPeers(on: eventLoop)
        }
        refresh.withLockedValue { $0 = task }
    }

    func stop() {
        refresh.withLockedValue { $0?.cancel() }
    }

    private func refreshPeers(on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let listed: EventLoopFuture<[String]>
        if let dns = settings.peersDNS, let colon = dns.lastIndex(of: ":"), let resolver {
            let host = String(dns[..<colon]), port = String(dns[dns.index(after: colon)...])
            listed = resolver.resolve([host], on: eventLoop).map { answers in
                (answers.first ?? nil)?.map { $0.contains(":") ? "[\($0)]:\(port)" : "\($0):\(port)" } ?? []
            }
        } else {
            listed = eventLoop.makeSucceededFuture(settings.peers)
        }
        return listed.flatMap { [self] addresses -> EventLoopFuture<Void> in
            let asks = addresses.map { address in
                self.call(address, method: "GET", path: "/@instance", body: nil, contentType: nil, on: eventLoop)
                    .map { response -> (String, String?) in
                        guard response.status == 200,
                            let info = try? JSONDecoder().decode([String: String].self, from: Data(response.body.readableBytesView))
                        else { return (address, nil) }
                        return (address, info["instance_id"])
                    }
                    .recover { _ in (address, nil) }
            }
            return EventLoopFuture.whenAllSucceed(asks, on: eventLoop).map { answers in
                self.peers.withLockedValue { p in
                    p = [:]
                    for (address, instance) in answers { p[address] = .some(instance) }
                }
            }
        }
    }

    /// A request to a peer's control API, with the bearer token.
    func call(_ address: String, method: String, path: String, body: ByteBuffer?, contentType: String?, on eventLoop: EventLoop) -> EventLoopFuture<CurlResponse> {
        var headers = ["X-WSGate-Forwarded: 1"]
        if let token { headers.append("Authorization: Bearer \(token)") }
        if let contentType { headers.append("Content-Type: \(contentType)") }
        var request = CurlRequest(
            url: "http://\(address)\(path)", method: method, headers: CurlHeaderList(headers), body: body,
            connectTimeoutMs: 2_000, totalTimeoutMs: 5_000, maxResponseBytes: 1 << 20)
        request.captureHeader = "Content-Type"
        return curl.execute(request, on: eventLoop)
    }
}
