import WSGatePolicy
import NIOCore

/// Timeouts and limits a Session and its legs use, converted once from config.
struct SessionSettings: Sendable {
    var maxMessageBytes: Int
    var closeHandshake: TimeAmount
    var upstreamConnect: TimeAmount
    var upstreamHandshake: TimeAmount
    var idleTimeout: TimeAmount

    init(config: GatewayConfig) {
        maxMessageBytes = config.limits.maxMessageBytes
        closeHandshake = .milliseconds(Int64(config.timeouts.closeHandshakeMs))
        upstreamConnect = .milliseconds(Int64(config.timeouts.upstreamConnectMs))
        upstreamHandshake = .milliseconds(Int64(config.timeouts.upstreamHandshakeMs))
        idleTimeout = .milliseconds(Int64(config.limits.idleTimeoutMs))
    }

    /// Receive buffers start small and grow with the traffic (NIO's adaptive
    /// allocator grows them when a read fills one). Each channel keeps its
    /// last buffer for reuse, so the starting size is what an idle
    /// connection holds: 256 bytes instead of NIO's default 2048, per socket
    /// (client and upstream alike). An upstream's 101 and a small upgrade
    /// request fit; a larger request takes one more read and leaves the
    /// buffer at 512.
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536)
}
