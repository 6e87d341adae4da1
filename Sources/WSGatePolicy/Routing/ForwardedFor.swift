/// The `X-Forwarded-For` an upstream gets, and the client address the log
/// names, from the peer's address and the header the peer sent.
///
/// At the edge a client's own `X-Forwarded-For` is a claim anyone can make:
/// from a peer that is not in `trusted_proxies` it is replaced by the peer's
/// address. From a trusted proxy it is kept and the peer appended (the usual
/// chain), and the client is the right-most address that is not itself a
/// trusted proxy: everything left of it could have been written by the
/// client.
public struct ForwardedFor: Sendable, Equatable {
    /// The header value for the upstream.
    public let header: String
    /// The client's address when it comes from the header (a trusted proxy
    /// named it); nil when the client is the peer itself.
    public let clientIP: String?

    public init(headerValues: [String], peerIP: String?, trustedProxies: [IPNetwork]) {
        let peer = peerIP ?? "unknown"
        guard !trustedProxies.isEmpty, let peerIP, trustedProxies.contains(where: { $0.contains(peerIP) }) else {
            header = peer
            clientIP = nil
            return
        }
        let prior = headerValues
            .flatMap { $0.split(separator: ",") }
            .map(HTTPText.trimmingBlanks)
            .filter { !$0.isEmpty }
        header = (prior + [peer]).joined(separator: ", ")
        // Right to left past the trusted proxies; a malformed entry stops the
        // walk (it is not an address a proxy wrote).
        var client: String? = nil
        for entry in prior.reversed() {
            client = entry
            guard IPNetwork.parseAddress(entry) != nil,
                trustedProxies.contains(where: { $0.contains(entry) })
            else { break }
        }
        clientIP = client
    }
}
