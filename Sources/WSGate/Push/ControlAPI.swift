import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import WSGatePolicy
import WSGateProtocol

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The control API of contract §8, compatible with AWS API Gateway's
/// `@connections`: a backend speaks first, closes a connection, or
/// broadcasts to a channel.
///
/// - `POST /@connections/{id}`: the body is one message to that client
///   (binary for `Content-Type: application/octet-stream`, else text, which
///   must be UTF-8). 200 sent; 410 unknown or closed; 413 over
///   `max_message_bytes`; 429 when the client is not taking what it is sent
///   (its channel is over its high-water mark): the pusher backs off instead
///   of the gateway queueing without bound.
/// - `GET /@connections/{id}`: 200 with the connection's JSON; 410 unknown.
/// - `DELETE /@connections/{id}?code=4001&reason=…`: closes it with that code
///   (1000 or 3000–4999, default 1000), cause `kicked`; 204; 410 unknown.
/// - `POST /channels/{name}`: one message to every subscriber;
///   200 `{"delivered": N}`.
///
/// A pushed message is one frame, written on the connection's event loop
/// between relayed frames, in order of arrival; never split. Requests need
/// `Authorization: Bearer <token>` once a token is configured (compared in
/// constant time); without one, they are only served on a loopback
/// listener.
final class ControlAPI: Sendable {
    let registry: SessionRegistry
    let channels: ChannelRegistry
    let instanceID: String
    let maxMessageBytes: Int
    private let token: String?
    private let loopbackOnly: Bool
    /// The other instances, when `cluster.peers` names them.
    let cluster: ClusterPeers?

    init(
        registry: SessionRegistry, channels: ChannelRegistry, instanceID: String, maxMessageBytes: Int, token: String?,
        listenerIsLoopback: Bool, cluster: ClusterPeers? = nil
    ) {
        self.cluster = cluster
        self.registry = registry
        self.channels = channels
        self.instanceID = instanceID
        self.maxMessageBytes = maxMessageBytes
        self.token = token
        self.loopbackOnly = token == nil && !listenerIsLoopback
    }

    struct Response {
        var status: HTTPResponseStatus
        var body: String = ""
        var contentType = "application/json"
    }

    /// Whether `path` is one of the API's.
    static func handles(_ path: Substring) -> Bool {
        path.hasPrefix("/@connections/") || path.hasPrefix("/%40connections/") || path.hasPrefix("/channels/") || path == "/@instance"
    }

    func respond(_ head: HTTPRequestHead, body: ByteBuffer?, bodyTooBig: Bool, on eventLoop: EventLoop) -> EventLoopFuture<Response> {
        if loopbackOnly {
            return eventLoop.makeSucceededFuture(Self.error(.forbidden, "the control API needs control.token_env on a listener that is not on loopback"))
        }
        if let token, !Self.authorized(head.headers.first(name: "authorization"), token: token) {
            return eventLoop.makeSucceededFuture(Self.error(.unauthorized, "missing or wrong bearer token"))
        }
        let (path, query) = Self.split(head.uri)
        if path == "/@instance" {
            // Peers ask who answers here.
            var w = JSONObjectWriter()
            w.field("instance_id", instanceID)
            return eventLoop.makeSucceededFuture(Response(status: .ok, body: w.finish()))
        }
        let forwarded = head.headers.first(name: "x-wsgate-forwarded") != nil
        if path.hasPrefix("/channels/") {
            guard head.method == .POST else { return eventLoop.makeSucceededFuture(Self.error(.methodNotAllowed, "use POST")) }
            let name = Self.percentDecoded(path.dropFirst("/channels/".count))
            guard !name.isEmpty else { return eventLoop.makeSucceededFuture(Self.error(.notFound, "no channel name")) }
            return publish(to: name, head: head, body: body, bodyTooBig: bodyTooBig, fanOut: !forwarded, on: eventLoop)
        }
        let prefix = path.hasPrefix("/@connections/") ? "/@connections/".count : "/%40connections/".count
        let id = Self.percentDecoded(path.dropFirst(prefix))
        let instance = id.split(separator: ".", maxSplits: 1).first.map(String.init) ?? ""
        if instance != instanceID, !forwarded, let cluster {
            // Another instance holds it: its answer is relayed; an instance
            // that is not a peer (or gone) has no such connection.
            guard let address = cluster.address(of: instance) else {
                return eventLoop.makeSucceededFuture(Self.error(.gone, "no such connection (instance \(instance) is not a peer)"))
            }
            if bodyTooBig { return eventLoop.makeSucceededFuture(Self.error(.payloadTooLarge, "the message is over max_message_bytes")) }
            return cluster.call(
                address, method: head.method.rawValue, path: head.uri, body: body, contentType: head.headers.first(name: "content-type"),
                on: eventLoop
            ).map { response in
                Response(
                    status: HTTPResponseStatus(statusCode: response.status), body: String(buffer: response.body),
                    contentType: response.capturedHeader ?? "application/json")
            }.recover { error in
                Self.error(.gone, "instance \(instance) did not answer: \((error as? CurlFailure)?.message ?? "\(error)")")
            }
        }
        guard let session = registry.session(id: id) else {
            return eventLoop.makeSucceededFuture(Self.error(.gone, "no such connection"))
        }
        switch head.method {
        case .POST:
            switch message(head, body: body, bodyTooBig: bodyTooBig) {
            case .failure(let e): return eventLoop.makeSucceededFuture(e.response)
            case .success(let (payload, binary)):
                return session.eventLoop.submit { session.push(payload, binary: binary) }.map { result in
                    switch result {
                    case .sent: return Response(status: .ok, body: #"{"sent":true}"#)
                    case .gone: return Self.error(.gone, "the connection is closed")
                    case .busy: return Self.error(.tooManyRequests, "the client is not reading; try again later")
                    }
                }.hop(to: eventLoop)
            }
        case .GET:
            return session.eventLoop.submit { Self.describe(session) }.map { Response(status: .ok, body: $0) }.hop(to: eventLoop)
        case .DELETE:
            let code: UInt16
            if let text = query["code"] {
                guard let c = UInt16(text), c == CloseCode.normal || (3000...4999).contains(c) else {
                    return eventLoop.makeSucceededFuture(Self.error(.badRequest, "code must be 1000 or 3000-4999"))
                }
                code = c
            } else {
                code = CloseCode.normal
            }
            let reason = CloseReason.truncate(query["reason"] ?? "")
            return session.eventLoop.submit { session.kick(code: code, reason: reason) }.map { kicked in
                kicked ? Response(status: .noContent) : Self.error(.gone, "the connection is closed")
            }.hop(to: eventLoop)
        default:
            return eventLoop.makeSucceededFuture(Self.error(.methodNotAllowed, "use POST, GET or DELETE"))
        }
    }

    /// The request's body as one message: binary or UTF-8 text.
    private func message(_ head: HTTPRequestHead, body: ByteBuffer?, bodyTooBig: Bool) -> Result<(ByteBuffer, Bool), ResponseError> {
        if bodyTooBig { return .failure(ResponseError(Self.error(.payloadTooLarge, "the message is over max_message_bytes (\(maxMessageBytes))"))) }
        let payload = body ?? ByteBuffer()
        let binary = head.headers.first(name: "content-type")?.lowercased().hasPrefix("application/octet-stream") ?? false
        if !binary {
            var validator = UTF8Validator()
            let ok = payload.withUnsafeReadableBytes { validator.feed($0) } && validator.isComplete
            if !ok { return .failure(ResponseError(Self.error(.badRequest, "a text message must be UTF-8 (send binary as application/octet-stream)"))) }
        }
        return .success((payload, binary))
    }

    struct ResponseError: Error {
        var response: Response
        init(_ response: Response) { self.response = response }
    }

    /// Delivers to this instance's subscribers and, unless the request came
    /// from a peer, asks every peer to do the same; the counts are summed
    /// and a peer that failed is named in the answer (not retried).
    private func publish(
        to channel: String, head: HTTPRequestHead, body: ByteBuffer?, bodyTooBig: Bool, fanOut: Bool, on eventLoop: EventLoop
    ) -> EventLoopFuture<Response> {
        let (payload, binary): (ByteBuffer, Bool)
        switch message(head, body: body, bodyTooBig: bodyTooBig) {
        case .failure(let e): return eventLoop.makeSucceededFuture(e.response)
        case .success(let m): (payload, binary) = m
        }
        // One frame for everyone, and one task per event loop (not per
        // subscriber): a publish to thousands costs a few hops, not
        // thousands of promises.
        let frame = Session.frame(payload, binary: binary)
        let size = payload.readableBytes
        var byLoop: [ObjectIdentifier: (EventLoop, [Session])] = [:]
        for session in channels.subscribers(of: channel) {
            byLoop[ObjectIdentifier(session.eventLoop), default: (session.eventLoop, [])].1.append(session)
        }
        let results = byLoop.values.map { loop, sessions in
            loop.submit { () -> (Int, Int) in
                var delivered = 0, busy = 0
                for session in sessions {
                    switch session.push(frame: frame, payloadBytes: size) {
                    case .sent: delivered += 1
                    case .busy: busy += 1
                    case .gone: break
                    }
                }
                return (delivered, busy)
            }
        }
        let local = EventLoopFuture.whenAllSucceed(results, on: eventLoop).map { counts -> (Int, Int) in
            counts.reduce((0, 0)) { ($0.0 + $1.0, $0.1 + $1.1) }
        }
        let peers = fanOut ? (cluster?.addresses ?? []) : []
        let remote = peers.map { address in
            cluster!.call(address, method: "POST", path: head.uri, body: payload, contentType: head.headers.first(name: "content-type"), on: eventLoop)
                .map { response -> PeerCount in
                    guard response.status == 200,
                        let counts = try? JSONDecoder().decode([String: Int].self, from: Data(response.body.readableBytesView))
                    else { return .failed("\(address): HTTP \(response.status)") }
                    return .counted(counts["delivered"] ?? 0, counts["busy"] ?? 0)
                }
                .recover { error in .failed("\(address): \((error as? CurlFailure)?.message ?? "\(error)")") }
        }
        return local.and(EventLoopFuture.whenAllSucceed(remote, on: eventLoop)).map { local, remote in
            var (delivered, busy) = local
            var failed: [String] = []
            for result in remote {
                switch result {
                case .counted(let d, let b):
                    delivered += d
                    busy += b
                case .failed(let why):
                    failed.append(why)
                }
            }
            var w = JSONObjectWriter()
            w.field("delivered", delivered)
            w.field("busy", busy)
            if fanOut && !peers.isEmpty || !failed.isEmpty {
                w.field("peers_failed", rawJSON: "[" + failed.map(JSONText.quoted).joined(separator: ",") + "]")
            }
            return Response(status: .ok, body: w.finish())
        }
    }

    /// A peer's part of a channel publish.
    enum PeerCount {
        case counted(Int, Int)
        case failed(String)
    }

    // MARK: Helpers

    static func describe(_ session: Session) -> String {
        var w = JSONObjectWriter()
        w.field("connection_id", session.id)
        w.field("route", session.routePath)
        w.field("client_addr", session.clientAddress)
        w.field("connected_at", Timestamp.iso8601(millisecondsSinceEpoch: session.connectedAt))
        w.field("last_active_at", Timestamp.iso8601(millisecondsSinceEpoch: session.lastActiveAt))
        w.field("subject", session.subject)
        w.field("channels", rawJSON: "[" + session.channels.map(JSONText.quoted).joined(separator: ",") + "]")
        return w.finish()
    }

    static func error(_ status: HTTPResponseStatus, _ message: String) -> Response {
        var w = JSONObjectWriter()
        w.field("error", message)
        return Response(status: status, body: w.finish())
    }

    /// `Bearer <token>`, compared in constant time (no early exit that a
    /// timing attack could read).
    static func authorized(_ header: String?, token: String) -> Bool {
        guard let header, header.count > 7, header.prefix(7).lowercased() == "bearer " else { return false }
        let given = Array(header.dropFirst(7).utf8), expected = Array(token.utf8)
        var diff = UInt8(given.count == expected.count ? 0 : 1)
        for i in 0..<expected.count { diff |= expected[i] ^ (i < given.count ? given[i] : 0) }
        return diff == 0
    }

    static func split(_ uri: String) -> (Substring, [String: String]) {
        let parts = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var query: [String: String] = [:]
        if parts.count > 1 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query[percentDecoded(kv[0])] = kv.count > 1 ? percentDecoded(kv[1].replacingOccurrences(of: "+", with: " ")[...]) : ""
            }
        }
        return (parts[0], query)
    }

    static func percentDecoded(_ text: Substring) -> String { HTTPText.percentDecoded(text) }
}
