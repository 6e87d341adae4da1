import NIOSSL
import WSGatePolicy

/// The TLS contexts built from the config: the listener's (`listen.tls`)
/// and one per `wss://` route.
enum TLSContexts {
    /// The server context for `listen.tls` (wss:// clients).
    static func serverContext(_ files: GatewayConfig.TLSFiles) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        return try NIOSSLContext(configuration: configuration)
    }

    /// The client context for a `wss://` route: the system trust store unless
    /// `ca_file` is set; full verification unless `insecure_skip_verify`.
    static func clientContext(_ tls: Route.UpstreamTLS?) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let caFile = tls?.caFile {
            configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        }
        if tls?.insecureSkipVerify == true {
            configuration.certificateVerification = .none
        }
        return try NIOSSLContext(configuration: configuration)
    }
}
