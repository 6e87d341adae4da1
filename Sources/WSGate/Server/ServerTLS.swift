import NIOCore
import NIOSSL
import WSGatePolicy

/// The listener's TLS context (`listen.tls`: wss:// clients terminate here).
enum ServerTLS {
    /// The server context for `listen.tls` (wss:// clients). A client that
    /// never answers our TLS `close_notify` is dropped after `shutdownTimeout`
    /// (`close_handshake_ms`), not NIOSSL's default 5 s: the close line and
    /// the connection's slot wait for it.
    static func context(_ files: GatewayConfig.TLSFiles, shutdownTimeout: TimeAmount) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.shutdownTimeout = shutdownTimeout
        return try NIOSSLContext(configuration: configuration)
    }
}
