import NIOSSL

/// Checks that PEM files load, with readable errors for `check-config`
/// (the contexts themselves are built by the gateway, `TLSContexts`).
public enum PEMFiles {
    /// nil when `path` holds at least one PEM certificate.
    public static func checkCertificates(_ path: String) -> String? {
        do {
            let certificates = try NIOSSLCertificate.fromPEMFile(path)
            return certificates.isEmpty ? "no PEM certificate in \(path)" : nil
        } catch {
            return "cannot load PEM certificates from \(path): \(error)"
        }
    }

    /// nil when `path` holds a PEM private key.
    public static func checkPrivateKey(_ path: String) -> String? {
        do {
            _ = try NIOSSLPrivateKey(file: path, format: .pem)
            return nil
        } catch {
            return "cannot load a PEM private key from \(path): \(error)"
        }
    }
}
