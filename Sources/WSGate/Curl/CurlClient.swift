import WSGatePolicy
import CCurl
import CCurlShim
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One libcurl multi handle, driven by one worker thread. `CurlWorkers`
/// makes one per event loop; every HTTP upstream request of that loop's
/// sessions goes through it.
///
/// Why a dedicated thread rather than libcurl on the event loops: libcurl
/// handles may only be touched from one thread, and a thread that owns every
/// handle, fed by a locked queue and woken through an eventfd, keeps libcurl
/// entirely off the event loops (no blocking, no locks there beyond the
/// enqueue) and is simple to reason about. The thread drives libcurl with
/// the multi_socket API over its own epoll (`wsgate_curl_loop_*` in the C
/// shim): one `curl_multi_socket_action` per ready socket, instead of
/// `curl_multi_perform` + `curl_multi_poll`, which walk every transfer and
/// every socket on each wake-up and made the worker the bottleneck at a few
/// dozen concurrent requests. Completions go back to the requesting Session's event loop through
/// its promise. One multi handle also means one connection cache: keep-alive
/// connections are reused across all client connections of the loop.
///
/// Requests beyond `maxInFlight` wait in the queue *before* they are added to
/// the multi handle, because `CURLOPT_TIMEOUT_MS` counts time spent waiting
/// for a connection slot inside libcurl.
final class CurlClient: @unchecked Sendable {
    private struct Pending {
        var request: CurlRequest
        var promise: EventLoopPromise<CurlResponse>
    }

    private let multi: UnsafeMutableRawPointer
    private let loop: OpaquePointer
    private let lock = NIOLock()
    private var queue: [Pending] = []  // guarded by lock
    private var stopping = false  // guarded by lock
    private let maxInFlight: Int
    private let pool = NIOThreadPool(numberOfThreads: 1)
    private let stopped: EventLoopPromise<Void>

    // Worker-thread state.
    private var running: [UnsafeMutableRawPointer: Transfer] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []
    /// Each easy handle's error buffer, allocated with the handle.
    private var errorBuffers: [UnsafeMutableRawPointer: UnsafeMutablePointer<CChar>] = [:]

    private static let globalInit: Void = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
    }()

    init(maxInFlight: Int = 512, eventLoop: EventLoop) {
        _ = Self.globalInit
        self.maxInFlight = maxInFlight
        self.multi = curl_multi_init()!
        self.loop = wsgate_curl_loop_create(multi)!
        self.stopped = eventLoop.makePromise()
        // Keep as many idle keep-alive connections as we may have transfers.
        wsgate_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, maxInFlight)
        // No per-host cap inside libcurl: the cap is ours, before the queue.
        wsgate_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0)
        wsgate_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        pool.start()
        pool.submit { [self] _ in
            self.run()
        }
    }

    /// Queues a request; the future completes on `eventLoop`.
    func execute(_ request: CurlRequest, on eventLoop: EventLoop) -> EventLoopFuture<CurlResponse> {
        let promise = eventLoop.makePromise(of: CurlResponse.self)
        let (accepted, wake) = lock.withLock { () -> (Bool, Bool) in
            guard !stopping else { return (false, false) }
            // Only the first request into an empty queue needs to wake the
            // worker: it drains the whole queue each time round its loop.
            let wasEmpty = queue.isEmpty
            queue.append(Pending(request: request, promise: promise))
            return (true, wasEmpty)
        }
        if wake {
            wsgate_curl_loop_wakeup(loop)
        } else if !accepted {
            promise.fail(CurlFailure(cause: .internalError, message: "HTTP client stopped", curlCode: -1))
        }
        return promise.futureResult
    }

    /// Finishes in-flight transfers (each bounded by its own timeout), fails
    /// queued ones, then stops the worker.
    func shutdown() async {
        lock.withLock { stopping = true }
        wsgate_curl_loop_wakeup(loop)
        try? await stopped.futureResult.get()
        try? await pool.shutdownGracefully()
    }

    // MARK: Worker thread

    private func run() {
        while true {
            let (batch, stop) = lock.withLock { () -> ([Pending], Bool) in
                let room = maxInFlight - running.count
                let take = min(room, queue.count)
                let batch = Array(queue.prefix(take))
                queue.removeFirst(take)
                if stopping {
                    let rest = queue
                    queue = []
                    for p in rest {
                        p.promise.fail(CurlFailure(cause: .shutdown, message: "gateway shutting down", curlCode: -1))
                    }
                }
                return (batch, stopping)
            }
            for pending in batch { start(pending) }
            if !batch.isEmpty { wsgate_curl_loop_kick(loop) }
            collectFinished()
            if stop && running.isEmpty { break }
            wsgate_curl_loop_run_once(loop, 1000)
            collectFinished()
        }
        for handle in idleHandles { curl_easy_cleanup(handle) }
        idleHandles = []
        for buffer in errorBuffers.values { buffer.deallocate() }
        errorBuffers = [:]
        wsgate_curl_loop_destroy(loop)
        curl_multi_cleanup(multi)
        stopped.succeed(())
    }

    /// A handle from the pool, or a new one with the options every transfer
    /// shares set once (handles are reused without `curl_easy_reset`).
    private func makeHandle() -> UnsafeMutableRawPointer {
        if let handle = idleHandles.popLast() { return handle }
        let h = curl_easy_init()!
        wsgate_curl_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        "http,https".withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_PROTOCOLS_STR, $0) }
        // Upstreams are internal services: never route them through an
        // HTTP(S)_PROXY from the environment.
        "*".withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_NOPROXY, $0) }
        wsgate_curl_easy_setopt_long(h, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
        wsgate_curl_easy_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        wsgate_curl_easy_setopt_long(h, CURLOPT_FOLLOWLOCATION, 0)
        wsgate_curl_easy_setopt_write_function(h, transferWriteCallback)
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        wsgate_curl_easy_setopt_ptr(h, CURLOPT_ERRORBUFFER, errorBuffer)
        errorBuffers[h] = errorBuffer
        return h
    }

    private func releaseHandle(_ handle: UnsafeMutableRawPointer) {
        if idleHandles.count < 256 {
            idleHandles.append(handle)
        } else {
            curl_easy_cleanup(handle)
            errorBuffers.removeValue(forKey: handle)?.deallocate()
        }
    }

    private func start(_ pending: Pending) {
        let handle = makeHandle()
        let transfer = Transfer(request: pending.request, promise: pending.promise, errorBuffer: errorBuffers[handle]!)
        transfer.configure(handle)
        running[handle] = transfer
        curl_multi_add_handle(multi, handle)
    }

    /// Completes finished transfers. Results are handed to each event loop
    /// in one batch per round (one cross-thread wake-up per loop, not per
    /// request).
    private func collectFinished() {
        var left: Int32 = 0
        var batches: [ObjectIdentifier: (EventLoop, [() -> Void])] = [:]
        while let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle else { continue }
            let code = message.pointee.data.result
            curl_multi_remove_handle(multi, handle)
            var reusable = true
            if let transfer = running.removeValue(forKey: handle) {
                let complete = transfer.finish(handle: handle, code: code)
                let loop = transfer.promise.futureResult.eventLoop
                batches[ObjectIdentifier(loop), default: (loop, [])].1.append(complete)
                reusable = !transfer.request.hasCustomTLS
            }
            if reusable {
                releaseHandle(handle)
            } else {
                curl_easy_cleanup(handle)
                errorBuffers.removeValue(forKey: handle)?.deallocate()
            }
        }
        for (_, (loop, completions)) in batches {
            let box = UnsafeTransfer(completions)
            loop.execute { for complete in box.value { complete() } }
        }
    }
}

/// One request in flight on the worker thread: owns its header list, body
/// copy and error buffer for as long as libcurl may read them.
private final class Transfer {
    let request: CurlRequest
    let promise: EventLoopPromise<CurlResponse>
    var responseBody: ByteBuffer
    var oversized = false
    private var bodyCopy: UnsafeMutableRawBufferPointer?
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private var connectToList: UnsafeMutablePointer<curl_slist>?

    init(request: CurlRequest, promise: EventLoopPromise<CurlResponse>, errorBuffer: UnsafeMutablePointer<CChar>) {
        self.request = request
        self.promise = promise
        self.responseBody = ByteBufferAllocator().buffer(capacity: 0)
        self.errorBuffer = errorBuffer
        errorBuffer.pointee = 0
    }

    deinit {
        bodyCopy?.deallocate()
        curl_slist_free_all(connectToList)
    }

    /// Sets every per-transfer option (the handle may carry a previous
    /// transfer's values: each one is overwritten here).
    func configure(_ h: UnsafeMutableRawPointer) {
        request.url.withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_URL, $0) }  // copied by libcurl
        if request.method == "POST" {
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, nil)  // POSTFIELDS implies POST
        } else {
            request.method.withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, $0) }
        }
        wsgate_curl_easy_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeoutMs)
        wsgate_curl_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, request.totalTimeoutMs)
        // Body: copied once into memory that lives until the transfer ends
        // (libcurl does not copy POSTFIELDS).
        let length = request.body?.readableBytes ?? 0
        if let body = request.body, length > 0 {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 1)
            body.withUnsafeReadableBytes { copy.copyMemory(from: $0) }
            bodyCopy = copy
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_POSTFIELDS, copy.baseAddress)
        } else {
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_POSTFIELDS, emptyCString)
        }
        wsgate_curl_easy_setopt_off_t(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(length))
        wsgate_curl_easy_setopt_ptr(h, CURLOPT_HTTPHEADER, request.headers.list)
        wsgate_curl_easy_setopt_ptr(h, CURLOPT_WRITEDATA, Unmanaged.passUnretained(self).toOpaque())
        if let tls = request.tls {
            if let caFile = tls.caFile {
                caFile.withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_CAINFO, $0) }
            }
            if tls.insecureSkipVerify {
                wsgate_curl_easy_setopt_long(h, CURLOPT_SSL_VERIFYPEER, 0)
                wsgate_curl_easy_setopt_long(h, CURLOPT_SSL_VERIFYHOST, 0)
            }
        }
        if let connectTo = request.connectTo {
            connectToList = curl_slist_append(nil, connectTo)
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_CONNECT_TO, connectToList)
        }
    }

    func finish(handle: UnsafeMutableRawPointer, code: CURLcode) -> () -> Void {
        let promise = self.promise
        if code == CURLE_OK {
            var status = 0
            wsgate_curl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
            var typePointer: UnsafePointer<CChar>? = nil
            wsgate_curl_easy_getinfo_string(handle, CURLINFO_CONTENT_TYPE, &typePointer)
            let contentType = typePointer.map(MediaType.parse)
            let response = CurlResponse(status: status, contentType: contentType, body: responseBody)
            return { promise.succeed(response) }
        }
        let detail = errorBuffer.pointee != 0 ? String(cString: errorBuffer) : String(cString: curl_easy_strerror(code))
        let failure = oversized
            ? CurlFailure(cause: .upstreamProtocolError, message: "response body over \(request.maxResponseBytes) bytes", curlCode: Int32(code.rawValue))
            : CurlFailure(cause: CurlErrorClassifier.cause(code), message: detail, curlCode: Int32(code.rawValue))
        return { promise.fail(failure) }
    }
}

/// Moves non-Sendable closures to the event loop that runs them; they only
/// capture Sendable values (promises and results).
private struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A static, never freed "" for bodiless requests.
nonisolated(unsafe) private let emptyCString: UnsafeMutablePointer<CChar> = {
    let p = UnsafeMutablePointer<CChar>.allocate(capacity: 1)
    p.initialize(to: 0)
    return p
}()

/// libcurl's write callback: appends to the transfer's body, refusing more
/// than `maxResponseBytes` (returning a short count makes libcurl abort the
/// transfer with CURLE_WRITE_ERROR).
private let transferWriteCallback: wsgate_curl_data_cb = { data, size, count, userdata in
    let transfer = Unmanaged<Transfer>.fromOpaque(userdata!).takeUnretainedValue()
    let bytes = size * count
    if transfer.responseBody.readableBytes + bytes > transfer.request.maxResponseBytes {
        transfer.oversized = true
        return 0
    }
    if let data {
        transfer.responseBody.writeBytes(UnsafeRawBufferPointer(start: data, count: bytes))
    }
    return bytes
}

/// CURLcode → close cause (the contract's §4 rows for HTTP upstreams).
enum CurlErrorClassifier {
    static func cause(_ code: CURLcode) -> CloseCause {
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_CONNECT:
            return .upstreamUnreachable
        case CURLE_OPERATION_TIMEDOUT:
            return .upstreamTimeout
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER,
            CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_PINNEDPUBKEYNOTMATCH,
            CURLE_SSL_INVALIDCERTSTATUS, CURLE_SSL_ENGINE_NOTFOUND, CURLE_SSL_ENGINE_SETFAILED,
            CURLE_SSL_ENGINE_INITFAILED, CURLE_SSL_CRL_BADFILE, CURLE_SSL_SHUTDOWN_FAILED, CURLE_USE_SSL_FAILED:
            return .upstreamTLSError
        case CURLE_OUT_OF_MEMORY, CURLE_BAD_FUNCTION_ARGUMENT, CURLE_UNKNOWN_OPTION, CURLE_FAILED_INIT:
            return .internalError
        default:
            // CURLE_GOT_NOTHING, CURLE_WEIRD_SERVER_REPLY, CURLE_RECV_ERROR,
            // CURLE_SEND_ERROR, CURLE_PARTIAL_FILE, CURLE_HTTP2*, …
            return .upstreamProtocolError
        }
    }
}
