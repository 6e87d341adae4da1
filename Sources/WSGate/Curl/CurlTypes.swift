import NIOCore

/// One HTTP request for libcurl. Built on an event loop, executed on the
/// curl worker thread.
struct CurlRequest: Sendable {
    var url: String
    var method: String
    /// Full header lines (`Name: value`).
    var headers: [String]
    /// Request body; `nil` sends none (`Content-Length: 0` for POST).
    var body: ByteBuffer?
    var connectTimeoutMs: Int
    var totalTimeoutMs: Int
    /// The transfer is aborted when the response body exceeds this.
    var maxResponseBytes: Int
}

struct CurlResponse: Sendable {
    var status: Int
    /// Lower-cased media type without parameters (`text/plain`), if any.
    var contentType: String?
    var body: ByteBuffer
}

/// A transfer that did not produce an HTTP response, already classified.
struct CurlFailure: Error, Sendable {
    var cause: CloseCause
    /// libcurl's message (`Failed to connect to 127.0.0.1 port 9: Connection refused`).
    var message: String
    var curlCode: Int32
}
