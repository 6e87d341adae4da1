/// An upstream without a connection of its own to close (the built-in echo,
/// HTTP, whose requests are independent): closing and aborting both just end
/// the leg, once, and tell the session.
protocol LocalUpstream: UpstreamLeg {
    var delegate: UpstreamLegDelegate? { get }
    /// Set once by `end()`.
    var hasEnded: Bool { get set }
}

extension LocalUpstream {
    func close(code: UInt16?, reason: String) { end() }

    func abort() { end() }

    func end() {
        guard !hasEnded else { return }
        hasEnded = true
        delegate?.upstreamEvent(.ended)
    }
}
