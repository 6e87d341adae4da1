import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Resolves host names to every address they have, for `discovery: dns`.
protocol HostResolver: Sendable {
    /// One answer per host, in order: its addresses (A and AAAA, in text
    /// form), or nil when the lookup failed.
    func resolve(_ hosts: [String], on eventLoop: EventLoop) -> EventLoopFuture<[[String]?]>
    /// Stops its thread.
    func shutdown() async
}

/// The system's resolver (`getaddrinfo`: /etc/hosts, search domains, the
/// nameservers of /etc/resolv.conf), on a thread of its own because it
/// blocks.
final class SystemResolver: HostResolver {
    private let pool: NIOThreadPool

    init() {
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    func resolve(_ hosts: [String], on eventLoop: EventLoop) -> EventLoopFuture<[[String]?]> {
        pool.runIfActive(eventLoop: eventLoop) { hosts.map(Self.lookup) }
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    static func lookup(_ host: String) -> [String]? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>? = nil
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(first) }
        var addresses: [String] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            if let address = info.pointee.ai_addr, let text = Self.text(address, family: info.pointee.ai_family),
                !addresses.contains(text)
            {
                addresses.append(text)
            }
            cursor = info.pointee.ai_next
        }
        return addresses.isEmpty ? nil : addresses
    }

    private static func text(_ address: UnsafeMutablePointer<sockaddr>, family: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch family {
        case AF_INET:
            return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                return inet_ntop(AF_INET, &a, &buffer, socklen_t(buffer.count)).map { String(cString: $0) }
            }
        case AF_INET6:
            return address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                var a = sin6.pointee.sin6_addr
                return inet_ntop(AF_INET6, &a, &buffer, socklen_t(buffer.count)).map { String(cString: $0) }
            }
        default:
            return nil
        }
    }
}

/// A small DNS client (A and AAAA over UDP) that asks the servers named in
/// the config's `resolver` instead of the system's, as nginx's `resolver`
/// does: for a cluster DNS the gateway should ask directly, and for tests
/// that control the answers. Queries run on a thread of their own (they
/// block, bounded by `timeout`).
final class DNSResolver: HostResolver {
    private let servers: [(host: String, port: Int)]
    private let timeoutMs: Int32
    private let pool: NIOThreadPool

    init(servers: [(host: String, port: Int)], timeoutMs: Int = 2_000) {
        self.servers = servers
        self.timeoutMs = Int32(timeoutMs)
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    func resolve(_ hosts: [String], on eventLoop: EventLoop) -> EventLoopFuture<[[String]?]> {
        pool.runIfActive(eventLoop: eventLoop) { [self] in hosts.map(self.lookup) }
    }

    func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    /// Every A and AAAA record of `host` from the first server that answers.
    func lookup(_ host: String) -> [String]? {
        if let literal = IPLiteral.normalized(host) { return [literal] }
        for server in servers {
            var found: [String] = []
            var answered = false
            for type: UInt16 in [1, 28] {  // A, AAAA
                if let records = query(host, type: type, server: server) {
                    answered = true
                    found += records
                }
            }
            if answered { return found.isEmpty ? nil : found }
        }
        return nil
    }

    private func query(_ host: String, type: UInt16, server: (host: String, port: Int)) -> [String]? {
        let id = UInt16.random(in: 0...UInt16.max)
        var packet: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in host.split(separator: ".") where !label.isEmpty {
            let bytes = Array(label.utf8.prefix(63))
            packet.append(UInt8(bytes.count))
            packet += bytes
        }
        packet += [0, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
        guard let address = try? SocketAddress(ipAddress: server.host, port: server.port) else { return nil }
        let family: Int32 = address.protocol == .inet6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let sent = address.withSockAddr { sa, len in sendto(fd, packet, packet.count, 0, sa, socklen_t(len)) }
        guard sent == packet.count else { return nil }
        var reply = [UInt8](repeating: 0, count: 4096)
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMs) == 1 else { return nil }
        let n = recv(fd, &reply, reply.count, 0)
        guard n >= 12, reply[0] == UInt8(id >> 8), reply[1] == UInt8(id & 0xFF) else { return nil }
        return Self.parse(Array(reply[0..<n]), type: type)
    }

    /// The addresses of the answer records of `type` in a DNS response;
    /// nil for an error response (an empty answer is not an error).
    static func parse(_ r: [UInt8], type: UInt16) -> [String]? {
        let rcode = r[3] & 0x0F
        guard rcode == 0 || rcode == 3 else { return nil }  // NOERROR or NXDOMAIN (no records)
        let questions = Int(r[4]) << 8 | Int(r[5])
        let answers = Int(r[6]) << 8 | Int(r[7])
        var i = 12
        func skipName() -> Bool {
            while i < r.count {
                let len = Int(r[i])
                if len == 0 { i += 1; return true }
                if len & 0xC0 == 0xC0 { i += 2; return i <= r.count }
                i += 1 + len
            }
            return false
        }
        for _ in 0..<questions {
            guard skipName(), i + 4 <= r.count else { return nil }
            i += 4
        }
        var out: [String] = []
        for _ in 0..<answers {
            guard skipName(), i + 10 <= r.count else { break }
            let rtype = UInt16(r[i]) << 8 | UInt16(r[i + 1])
            let length = Int(r[i + 8]) << 8 | Int(r[i + 9])
            i += 10
            guard i + length <= r.count else { break }
            if rtype == type && (length == 4 || length == 16) {
                var bytes = Array(r[i..<(i + length)])
                var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
                let family = length == 4 ? AF_INET : AF_INET6
                if let text = inet_ntop(family, &bytes, &buffer, socklen_t(buffer.count)) { out.append(String(cString: text)) }
            }
            i += length
        }
        return out
    }
}

/// IP literals need no lookup.
enum IPLiteral {
    static func normalized(_ host: String) -> String? {
        (try? SocketAddress(ipAddress: host, port: 0))?.ipAddress
    }
}
