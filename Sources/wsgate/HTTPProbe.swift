#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking HTTP/1.0 GET for `wsgate healthcheck`: one request to
/// the admin listener on loopback, with a deadline. No event loop, no
/// dependencies, nothing to start up: a health check should be cheap.
enum HTTPProbe {
    enum Outcome {
        case success(Int)
        case failure(String)
    }

    static func get(host: String, port: Int, path: String, timeoutMs: Int) -> Outcome {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
            return .failure("cannot resolve \(host)")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { return .failure("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            return .failure("connect(\(host):\(port)): \(String(cString: strerror(errno)))")
        }
        let request = "GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n"
        let sent = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        guard sent > 0 else { return .failure("send: \(String(cString: strerror(errno)))") }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return .failure("no answer from \(host):\(port)") }
        // "HTTP/1.1 200 OK"
        let line = String(decoding: buffer[..<n], as: UTF8.self)
        let parts = line.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            return .failure("not an HTTP answer")
        }
        return .success(status)
    }
}
