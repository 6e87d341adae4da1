import NIOCore
import NIOPosix

/// One `CurlClient` (a libcurl multi handle and its worker thread) per
/// event loop; an HTTP upstream uses the worker of its session's loop.
///
/// Why per loop: on the WS→HTTP path the worker thread does most of the
/// gateway's work (libcurl's request set-up, status and header parsing, the
/// socket calls: about two thirds of the gateway's CPU samples under load),
/// so a single worker caps the path at one core however many event loops
/// feed it. Pairing workers with loops spreads that work the way
/// connections are spread, and each completion hops back to one loop only.
/// Each worker keeps its own keep-alive connection cache.
final class CurlWorkers: Sendable {
    private let byLoop: [ObjectIdentifier: CurlClient]
    private let all: [CurlClient]

    init(group: EventLoopGroup) {
        var loops: [EventLoop] = []
        if let multi = group as? MultiThreadedEventLoopGroup {
            loops = Array(multi.makeIterator())
        }
        if loops.isEmpty { loops = [group.next()] }
        var byLoop: [ObjectIdentifier: CurlClient] = [:]
        var all: [CurlClient] = []
        for loop in loops {
            let client = CurlClient(eventLoop: loop)
            byLoop[ObjectIdentifier(loop)] = client
            all.append(client)
        }
        self.byLoop = byLoop
        self.all = all
    }

    /// The worker paired with `eventLoop` (the first one for a loop from
    /// elsewhere, which the gateway never does).
    func client(for eventLoop: EventLoop) -> CurlClient {
        byLoop[ObjectIdentifier(eventLoop)] ?? all[0]
    }

    /// Finishes in-flight transfers on every worker (each bounded by its own
    /// timeouts), then stops them; the workers drain concurrently.
    func shutdown() async {
        await withTaskGroup(of: Void.self) { group in
            for client in all {
                group.addTask { await client.shutdown() }
            }
        }
    }
}
