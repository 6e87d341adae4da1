import WSGatePolicy
import CCurl
import NIOCore

/// An immutable libcurl header list (`curl_slist`), built once and shared by
/// every request that sends the same headers (e.g. all text messages of one
/// connection): no per-request list building. Freed with its last user.
final class CurlHeaderList: @unchecked Sendable {
    let list: UnsafeMutablePointer<curl_slist>?

    init(_ lines: [String]) {
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for line in lines { list = curl_slist_append(list, line) }
        // No "Expect: 100-continue" round trip for large bodies.
        list = curl_slist_append(list, "Expect:")
        self.list = list
    }

    deinit { curl_slist_free_all(list) }
}

/// One HTTP request for libcurl. Built on an event loop, executed on the
/// curl worker thread.
///
/// What the requests of one connection to one URL have in common lives in a
/// shared box (`Options`); a request is its body, header list and deadline
/// plus a reference to the box. A request is copied several times on its way
/// to the worker (the queue, the worker's batch, the transfer), and a copy
/// costs a few retains instead of a copy of a dozen fields (callgrind: about
/// 4,000 instructions per message before). The box is copy-on-write:
/// setting one of its fields on a request whose box is shared copies it
/// first, so requests never see each other's changes.
struct CurlRequest: Sendable {
    final class Options: @unchecked Sendable {
        // Mutated only while uniquely referenced (`CurlRequest.options`).
        var url: String
        var method: String
        var connectTimeoutMs: Int
        var maxResponseBytes: Int
        var tls: Route.UpstreamTLS?
        var connectTo: String?
        var captureHeader: String?
        var httpVersion: Route.HTTPVersion

        init(
            url: String, method: String, connectTimeoutMs: Int, maxResponseBytes: Int, tls: Route.UpstreamTLS?, connectTo: String?,
            captureHeader: String?, httpVersion: Route.HTTPVersion
        ) {
            self.url = url
            self.method = method
            self.connectTimeoutMs = connectTimeoutMs
            self.maxResponseBytes = maxResponseBytes
            self.tls = tls
            self.connectTo = connectTo
            self.captureHeader = captureHeader
            self.httpVersion = httpVersion
        }

        func copy() -> Options {
            Options(
                url: url, method: method, connectTimeoutMs: connectTimeoutMs, maxResponseBytes: maxResponseBytes, tls: tls,
                connectTo: connectTo, captureHeader: captureHeader, httpVersion: httpVersion)
        }
    }

    private var shared: Options
    var headers: CurlHeaderList
    /// Request body; `nil` sends none (`Content-Length: 0` for POST).
    var body: ByteBuffer?
    var totalTimeoutMs: Int
    /// When the whole request must be done, queue time included (set from
    /// the moment its message was read); nil: `totalTimeoutMs` from its start.
    var deadline: NIODeadline? = nil

    init(
        url: String, method: String, headers: CurlHeaderList, body: ByteBuffer?, connectTimeoutMs: Int, totalTimeoutMs: Int,
        deadline: NIODeadline? = nil, maxResponseBytes: Int, tls: Route.UpstreamTLS? = nil, connectTo: String? = nil,
        captureHeader: String? = nil, httpVersion: Route.HTTPVersion = .auto
    ) {
        self.shared = Options(
            url: url, method: method, connectTimeoutMs: connectTimeoutMs, maxResponseBytes: maxResponseBytes, tls: tls,
            connectTo: connectTo, captureHeader: captureHeader, httpVersion: httpVersion)
        self.headers = headers
        self.body = body
        self.totalTimeoutMs = totalTimeoutMs
        self.deadline = deadline
    }

    /// The box, made unique first: for setting one of its fields.
    private var options: Options {
        mutating get {
            if !isKnownUniquelyReferenced(&shared) { shared = shared.copy() }
            return shared
        }
    }

    var url: String {
        get { shared.url }
        set { options.url = newValue }
    }
    var method: String {
        get { shared.method }
        set { options.method = newValue }
    }
    var connectTimeoutMs: Int {
        get { shared.connectTimeoutMs }
        set { options.connectTimeoutMs = newValue }
    }
    /// The transfer is aborted when the response body exceeds this.
    var maxResponseBytes: Int {
        get { shared.maxResponseBytes }
        set { options.maxResponseBytes = newValue }
    }
    /// A route's `tls` settings for an https:// upstream.
    var tls: Route.UpstreamTLS? {
        get { shared.tls }
        set { options.tls = newValue }
    }
    /// `CURLOPT_CONNECT_TO` entry (`name:port:host:port`), used with
    /// `tls.server_name`: the URL names the server, the entry the address.
    var connectTo: String? {
        get { shared.connectTo }
        set { options.connectTo = newValue }
    }
    /// A response header to keep (`X-WSGate-Channels` of `connect_url`).
    var captureHeader: String? {
        get { shared.captureHeader }
        set { options.captureHeader = newValue }
    }

    /// `http.version`: hooks and health checks keep `auto`.
    var httpVersion: Route.HTTPVersion {
        get { shared.httpVersion }
        set { options.httpVersion = newValue }
    }

    /// The shared box, for requests that share it (`share`): a pool's
    /// per-target options are built once, not copied per message.
    var sharedOptions: Options { shared }

    mutating func share(_ options: Options) { shared = options }

    /// Requests with per-route TLS options leave them set on the easy
    /// handle, so their handle is not reused for other requests.
    var hasCustomTLS: Bool { shared.tls != nil || shared.connectTo != nil }
}

struct CurlResponse: Sendable {
    var status: Int
    /// Lower-cased media type without parameters (`text/plain`), if any.
    var contentType: String?
    var body: ByteBuffer
    /// The value of the request's `captureHeader`, when the response had it.
    var capturedHeader: String? = nil
}

/// A transfer that did not produce an HTTP response, already classified.
struct CurlFailure: Error, Sendable {
    var cause: CloseCause
    /// libcurl's message (`Failed to connect to 127.0.0.1 port 9: Connection refused`).
    var message: String
    var curlCode: Int32
    /// Not a byte of the request reached the upstream (connect refused or
    /// timed out, TLS failed): another target may be tried without the
    /// request being repeated.
    var notSent = false
}

/// The media type of a `Content-Type` header, which decides whether an HTTP
/// response becomes a text or a binary message.
enum MediaType {
    /// `Text/Plain; charset=utf-8` → `text/plain`: the type without
    /// parameters, trimmed and lower-cased. One pass over libcurl's C string
    /// (this runs on a curl worker thread for every response).
    static func parse(_ header: UnsafePointer<CChar>) -> String {
        let bytes = UnsafeRawPointer(header).assumingMemoryBound(to: UInt8.self)
        var end = 0
        while bytes[end] != 0 && bytes[end] != UInt8(ascii: ";") { end += 1 }
        var start = 0
        func isBlank(_ b: UInt8) -> Bool { b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }
        while start < end && isBlank(bytes[start]) { start += 1 }
        while end > start && isBlank(bytes[end - 1]) { end -= 1 }
        return String(unsafeUninitializedCapacity: end - start) { out in
            for i in start..<end {
                let b = bytes[i]
                out[i - start] = (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z")) ? b | 0x20 : b
            }
            return end - start
        }
    }
}
