import NIOCore

/// Holds the client's reads from its complete upgrade request until its 101.
///
/// While the upstream connects (and `connect_url` runs), NIO's upgrade
/// handler buffers whatever the client sends after its request head, without
/// a bound. With reads held here, what the gateway holds for such a client is
/// what one read cycle had already brought in (at most `maxMessagesPerRead`
/// receive buffers); the rest waits in the kernel, which bounds it.
final class UpgradeReadGate: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny

    private var holding = false
    private var readPending = false
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func read(context: ChannelHandlerContext) {
        if holding {
            readPending = true
        } else {
            context.read()
        }
    }

    /// The request head is complete and the upgrade is under way.
    func hold() {
        holding = true
    }

    /// The 101 is out and the leg handler in place: the gate leaves the
    /// pipeline, and a held read is issued again from the tail, so that it
    /// passes the leg handler's own read gating.
    func release() {
        holding = false
        guard let context else { return }
        let channel = context.channel
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        if readPending {
            readPending = false
            channel.read()
        }
    }
}
