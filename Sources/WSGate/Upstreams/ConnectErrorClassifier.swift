import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Turns NIO connect errors into close causes and readable log details
/// (`connect(127.0.0.1:9001): Connection refused`).
enum ConnectErrorClassifier {
    /// Every connect failure is retryable: nothing was sent.
    static func classify(_ error: Error, endpoint: String, timeout: TimeAmount) -> UpstreamFailure {
        var failure = classifyCause(error, endpoint: endpoint, timeout: timeout)
        failure.retryable = true
        return failure
    }

    private static func classifyCause(_ error: Error, endpoint: String, timeout: TimeAmount) -> UpstreamFailure {
        if let error = error as? ChannelError, case .connectTimeout = error {
            return UpstreamFailure(.upstreamTimeout, error: "connect(\(endpoint)): timed out after \(timeout.nanoseconds / 1_000_000) ms")
        }
        if let error = error as? NIOConnectionError {
            if error.connectionErrors.isEmpty {
                let dns = error.dnsAError ?? error.dnsAAAAError
                return UpstreamFailure(.upstreamUnreachable, error: "resolve(\(error.host)): \(dns.map { "\($0)" } ?? "no addresses")")
            }
            let first = error.connectionErrors[0]
            return UpstreamFailure(.upstreamUnreachable, error: "connect(\(first.target.gatewayDescription)): \(describe(first.error))")
        }
        if let error = error as? IOError {
            return UpstreamFailure(.upstreamUnreachable, error: "connect(\(endpoint)): \(describe(error))")
        }
        return UpstreamFailure(.upstreamUnreachable, error: "connect(\(endpoint)): \(error)")
    }

    static func describe(_ error: Error) -> String {
        if let io = error as? IOError {
            return String(cString: strerror(io.errnoCode))
        }
        return "\(error)"
    }
}

extension SocketAddress {
    /// `203.0.113.7:51234` or `[::1]:51234`.
    var gatewayDescription: String {
        switch self {
        case .v4: return "\(ipAddress ?? "?"):\(port ?? 0)"
        case .v6: return "[\(ipAddress ?? "?")]:\(port ?? 0)"
        case .unixDomainSocket: return "unix"
        }
    }
}
