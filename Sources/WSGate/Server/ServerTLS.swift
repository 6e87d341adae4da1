import NIOSSL
import WSGatePolicy

/// The listener's TLS context (`listen.tls`: wss:// clients terminate here).
enum ServerTLS {
    /// The server context for `listen.tls` (wss:// clients).
    static func context(_ files: GatewayConfig.TLSFiles) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: configuration)
    }
}
