import NIOCore
import NIOSSL
import WSGatePolicy

/// The TLS client context toward a `wss://` upstream.
enum UpstreamTLSContext {
    /// The client context for a `wss://` route: the system trust store unless
    /// `ca_file` is set; full verification unless `insecure_skip_verify`.
    /// An upstream that never answers our TLS `close_notify` is dropped
    /// after `shutdownTimeout` (`close_handshake_ms`).
    static func clientContext(_ tls: Route.UpstreamTLS?, shutdownTimeout: TimeAmount) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.shutdownTimeout = shutdownTimeout
        if let caFile = tls?.caFile {
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        }
        if tls?.insecureSkipVerify == true {
            configuration.certificateVerification = .none
        }
        return try NIOSSLContext(configuration: configuration)
    }
}
