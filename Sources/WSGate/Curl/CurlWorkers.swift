import NIOCore

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
        let loops = Array(group.makeIterator())
        let all = loops.map { CurlClient(eventLoop: $0) }
        self.all = all
        self.byLoop = Dictionary(uniqueKeysWithValues: zip(loops.map(ObjectIdentifier.init), all))
    }

    /// The worker paired with `eventLoop` (the first one for a loop from
    /// elsewhere, which the gateway never does).
    func client(for eventLoop: EventLoop) -> CurlClient {
        byLoop[ObjectIdentifier(eventLoop)] ?? all[0]
    }

    /// Lets in-flight transfers on every worker finish until `abortAt`,
    /// aborts the rest, then stops the workers; they drain concurrently.
    func shutdown(abortAt: NIODeadline = .distantFuture) async {
        await withTaskGroup(of: Void.self) { group in
            for client in all {
                group.addTask { await client.shutdown(abortAt: abortAt) }
            }
        }
    }
}
