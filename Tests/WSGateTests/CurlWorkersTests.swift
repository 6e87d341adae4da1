import NIOCore
import NIOPosix
import Testing
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

@Suite("HTTP upstream plumbing")
struct CurlWorkersTests {
    @Test func mediaTypeDropsParametersTrimsAndLowerCases() {
        let cases: [(String, String)] = [
            ("text/plain", "text/plain"),
            ("Text/Plain; charset=utf-8", "text/plain"),
            ("  application/JSON\t;charset=UTF-8", "application/json"),
            ("application/octet-stream", "application/octet-stream"),
            (";charset=utf-8", ""),
            ("", ""),
        ]
        for (header, expected) in cases {
            #expect(header.withCString(MediaType.parse) == expected, "\(header)")
        }
    }

    @Test func oneWorkerPerEventLoop() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 3)
        let workers = CurlWorkers(group: group)
        let loops = Array(group.makeIterator())
        let clients = loops.map { ObjectIdentifier(workers.client(for: $0)) }
        #expect(Set(clients).count == 3)
        for loop in loops {
            #expect(ObjectIdentifier(workers.client(for: loop)) == ObjectIdentifier(workers.client(for: loop)))
        }
        await workers.shutdown()
        try await group.shutdownGracefully()
    }
}
