import WSGatePolicy
import NIOHTTP1

/// Decides, from the request head alone, whether a request may become a
/// WebSocket: the route, the method, the upgrade headers, the origin.
/// Pure, so the upgrader and the rejection handler agree on every answer.
enum HandshakeCheck {
    struct Rejection: Equatable {
        var status: HTTPResponseStatus
        var reason: String
        var route: String?
        var extraHeaders: [(String, String)] = []

        static func == (a: Rejection, b: Rejection) -> Bool {
            a.status == b.status && a.reason == b.reason && a.route == b.route
        }
    }

    enum Verdict {
        case accept(RouteMatch)
        case reject(Rejection)
    }

    static func evaluate(_ head: HTTPRequestHead, routes: RouteTable) -> Verdict {
        let match: RouteMatch
        switch routes.lookup(requestTarget: head.uri) {
        case .matched(let found):
            match = found
        case .noRoute:
            return .reject(.init(status: .notFound, reason: "no route for this path"))
        case .leavesRoute(let route):
            return .reject(.init(status: .badRequest, reason: "path leaves its route once dot segments are resolved", route: route.path))
        case .invalidPath:
            return .reject(.init(status: .badRequest, reason: "path climbs above the root"))
        }
        let route = match.route.path
        let upgrade = head.headers[canonicalForm: "upgrade"].map { $0.lowercased() }
        guard upgrade.contains("websocket") else {
            return .reject(.init(status: .upgradeRequired, reason: "not a WebSocket request (Upgrade: websocket required)",
                                 route: route, extraHeaders: [("Upgrade", "websocket")]))
        }
        guard head.method == .GET else {
            return .reject(.init(status: .badRequest, reason: "WebSocket upgrade requires GET", route: route))
        }
        guard head.version.major == 1, head.version.minor >= 1 else {
            return .reject(.init(status: .badRequest, reason: "WebSocket upgrade requires HTTP/1.1", route: route))
        }
        let connection = head.headers[canonicalForm: "connection"].map { $0.lowercased() }
        guard connection.contains("upgrade") else {
            return .reject(.init(status: .badRequest, reason: "Connection: Upgrade header missing", route: route))
        }
        let versions = head.headers[canonicalForm: "sec-websocket-version"]
        guard versions.count == 1, versions[0] == "13" else {
            return .reject(.init(status: .upgradeRequired, reason: "unsupported Sec-WebSocket-Version (13 required)",
                                 route: route, extraHeaders: [("Sec-WebSocket-Version", "13")]))
        }
        let keys = head.headers["sec-websocket-key"]
        guard keys.count == 1, isValidKey(keys[0]) else {
            return .reject(.init(status: .badRequest, reason: "missing or invalid Sec-WebSocket-Key", route: route))
        }
        if let allowed = match.route.origins {
            let origin = head.headers.first(name: "origin")
            guard let origin, allowed.contains(origin) else {
                return .reject(.init(status: .forbidden, reason: "origin not allowed", route: route))
            }
        }
        return .accept(match)
    }

    /// A key is the base64 encoding of 16 bytes: 24 characters ending in `==`.
    static func isValidKey(_ key: String) -> Bool {
        let bytes = Array(key.utf8)
        guard bytes.count == 24, bytes[22] == UInt8(ascii: "="), bytes[23] == UInt8(ascii: "=") else { return false }
        return bytes[..<22].allSatisfy { b in
            (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || (b >= 48 && b <= 57) || b == 43 || b == 47
        }
    }
}
