import NIOCore
import NIOHTTP1

/// Bounds what a client can make the gateway hold before its 101, in bytes.
///
/// It sits in front of NIO's HTTP decoder, whose own limit is llhttp's
/// ~80 KiB of headers, and counts:
/// - the request head (request line and headers, up to the empty line): over
///   `limits.max_header_bytes` the client gets 431 (nginx allows 8 KiB per
///   line, HAProxy 16 KiB in all; 16 KiB is the default here);
/// - bytes after the head, until the upgrade is done. A client must wait for
///   the 101 before it sends frames (RFC 6455 §4.1); a little early data is
///   tolerated, because some clients pipeline their first message. Over
///   `maxEarlyBytes` the rest is discarded and the connection is closed
///   right after its 101 (`client_message_too_big`, 1009), so an early
///   flood costs at most that much memory (the read gate stops reading once
///   the head is in; this catches what one read cycle had brought in).
///
/// It leaves the pipeline when the connection is upgraded.
final class RequestHeadLimiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// What the gateway holds of the bytes a client sent after its request
    /// head and before its 101.
    static let maxEarlyBytes = 65_536

    private let maxHeadBytes: Int
    private var headBytes = 0
    /// Consecutive line ends seen at the end of the head so far (`\r` ignored).
    private var lineEnds = 0
    private var headComplete = false
    private var earlyBytes = 0
    private(set) var overflowed = false
    private var refused = false

    init(maxHeadBytes: Int) {
        self.maxHeadBytes = maxHeadBytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if refused || overflowed { return }  // discarded: the connection is being refused or closed
        var buffer = unwrapInboundIn(data)
        if !headComplete {
            let headEnd = scanHead(buffer.readableBytesView)
            let counted = headEnd ?? buffer.readableBytes
            headBytes += counted
            if headBytes > maxHeadBytes {
                refused = true
                context.fireErrorCaught(HTTPParserError.headerOverflow)
                return
            }
            guard let headEnd else {
                context.fireChannelRead(data)
                return
            }
            headComplete = true
            let rest = buffer.readableBytes - headEnd
            if rest == 0 {
                context.fireChannelRead(data)
                return
            }
            let head = buffer.readSlice(length: headEnd)!
            context.fireChannelRead(wrapInboundOut(head))
            guard admitEarly(buffer.readableBytes) else { return }
            context.fireChannelRead(wrapInboundOut(buffer))
            return
        }
        guard admitEarly(buffer.readableBytes) else { return }
        context.fireChannelRead(data)
    }

    /// Counts bytes after the head; false once over the bound.
    private func admitEarly(_ count: Int) -> Bool {
        earlyBytes += count
        if earlyBytes > Self.maxEarlyBytes {
            overflowed = true
            return false
        }
        return true
    }

    /// The number of bytes of `bytes` up to and including the empty line
    /// that ends the head, or nil when it does not end in them.
    private func scanHead(_ bytes: ByteBufferView) -> Int? {
        var offset = 0
        for byte in bytes {
            offset += 1
            switch byte {
            case UInt8(ascii: "\n"):
                lineEnds += 1
                if lineEnds == 2 { return offset }
            case UInt8(ascii: "\r"):
                break
            default:
                lineEnds = 0
            }
        }
        return nil
    }
}
