import WSGatePolicy
import CCurl
import CCurlShim
#if canImport(Glibc)
import Glibc
#endif
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
///
/// Bounds: the queue holds at most `maxQueued` requests and `maxQueuedBytes`
/// of request bodies; a request over either fails at once with `overloaded`
/// (the client gets 1013) instead of waiting behind everyone. A request's
/// `http_request_ms` runs from its `deadline`, set when its message was read,
/// so time spent queued counts. A request whose connection is gone is
/// cancelled (`cancel`): taken out of the queue, or removed from the multi
/// handle mid-transfer, so that no backend work outlives its client.
final class CurlClient: @unchecked Sendable {
    /// Names one request, for `cancel`.
    typealias Ticket = UInt64

    private struct Pending {
        var ticket: Ticket
        var request: CurlRequest
        var promise: EventLoopPromise<CurlResponse>
    }

    private let multi: UnsafeMutableRawPointer
    private let loop: OpaquePointer
    private let lock = NIOLock()
    // Guarded by lock:
    private var queue = CircularBuffer<Pending>()
    private var queuedBytes = 0
    private var toCancel: [Ticket] = []
    private var stopping = false
    /// When stopping: transfers still running at this time are aborted.
    private var abortAt: NIODeadline = .distantFuture
    private var nextTicket: Ticket = 1

    private let maxInFlight: Int
    let maxQueued: Int
    let maxQueuedBytes: Int
    private let pool = NIOThreadPool(numberOfThreads: 1)
    private let stopped: EventLoopPromise<Void>

    // Worker-thread state.
    /// Transfers on the multi handle, by ticket (for `cancel`). libcurl
    /// hands a finished transfer back by its easy handle, whose
    /// `CURLOPT_PRIVATE` points at the `Transfer`: no second map.
    private var running: [Ticket: Transfer] = [:]
    private var idleHandles: [EasyHandle] = []
    /// Responses of one round, delivered to their event loops together.
    private var completed: [Completion] = []
    private var mediaTypes = MediaTypeCache()

    private static let globalInit: Void = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
    }()

    init(maxInFlight: Int = 512, maxQueued: Int = 4096, maxQueuedBytes: Int = 64 << 20, eventLoop: EventLoop) {
        _ = Self.globalInit
        self.maxInFlight = maxInFlight
        self.maxQueued = maxQueued
        self.maxQueuedBytes = maxQueuedBytes
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
        start(request, on: eventLoop).future
    }

    /// Queues a request; its ticket can cancel it. The future completes on
    /// `eventLoop`; it fails at once with `overloaded` when the queue is full.
    func start(_ request: CurlRequest, on eventLoop: EventLoop) -> (ticket: Ticket, future: EventLoopFuture<CurlResponse>) {
        let promise = eventLoop.makePromise(of: CurlResponse.self)
        let bodyBytes = request.body?.readableBytes ?? 0
        enum Admission { case queued(wake: Bool), stopped, full }
        let (ticket, admission) = lock.withLock { () -> (Ticket, Admission) in
            guard !stopping else { return (0, .stopped) }
            guard queue.count < maxQueued, queuedBytes + bodyBytes <= maxQueuedBytes else { return (0, .full) }
            let ticket = nextTicket
            nextTicket += 1
            // Only the first request into an empty queue needs to wake the
            // worker: it drains the whole queue each time round its loop.
            let wasEmpty = queue.isEmpty
            queue.append(Pending(ticket: ticket, request: request, promise: promise))
            queuedBytes += bodyBytes
            return (ticket, .queued(wake: wasEmpty))
        }
        switch admission {
        case .queued(let wake):
            if wake { wsgate_curl_loop_wakeup(loop) }
        case .stopped:
            promise.fail(CurlFailure(cause: .shutdown, message: "gateway shutting down", curlCode: -1))
        case .full:
            promise.fail(CurlFailure(
                cause: .overloaded, message: "HTTP request queue full (\(maxQueued) requests or \(maxQueuedBytes) bytes waiting)",
                curlCode: -1))
        }
        return (ticket, promise.futureResult)
    }

    /// Cancels requests whose connection is gone: queued ones never start,
    /// running ones are removed from the multi handle. Their futures fail
    /// (nobody is waiting for them any more).
    func cancel(_ tickets: [Ticket]) {
        guard !tickets.isEmpty else { return }
        let (dropped, wake) = lock.withLock { () -> ([Pending], Bool) in
            let wanted = Set(tickets)
            var dropped: [Pending] = []
            if !queue.isEmpty {
                var kept = CircularBuffer<Pending>(initialCapacity: queue.count)
                for p in queue {
                    if wanted.contains(p.ticket) {
                        dropped.append(p)
                        queuedBytes -= p.request.body?.readableBytes ?? 0
                    } else {
                        kept.append(p)
                    }
                }
                queue = kept
            }
            let queuedTickets = Set(dropped.map(\.ticket))
            let rest = tickets.filter { !queuedTickets.contains($0) }
            toCancel.append(contentsOf: rest)
            return (dropped, !rest.isEmpty)
        }
        for p in dropped { p.promise.fail(Self.cancelled) }
        if wake { wsgate_curl_loop_wakeup(loop) }
    }

    private static let cancelled = CurlFailure(cause: .clientGone, message: "cancelled: the client connection ended", curlCode: -1)

    /// Fails queued requests, lets running transfers finish until
    /// `deadline`, aborts what is still running then, and stops the worker.
    func shutdown(abortAt deadline: NIODeadline = .distantFuture) async {
        lock.withLock {
            stopping = true
            abortAt = deadline
        }
        wsgate_curl_loop_wakeup(loop)
        try? await stopped.futureResult.get()
        try? await pool.shutdownGracefully()
    }

    // MARK: Worker thread

    private func run() {
        while true {
            let (batch, cancels, stop, abortAt) = lock.withLock { () -> ([Pending], [Ticket], Bool, NIODeadline) in
                let room = maxInFlight - running.count
                let take = min(room, queue.count)
                var batch: [Pending] = []
                batch.reserveCapacity(take)
                for _ in 0..<take {
                    let p = queue.removeFirst()
                    queuedBytes -= p.request.body?.readableBytes ?? 0
                    batch.append(p)
                }
                if stopping {
                    for p in queue {
                        p.promise.fail(CurlFailure(cause: .shutdown, message: "gateway shutting down", curlCode: -1))
                    }
                    queue.removeAll()
                    queuedBytes = 0
                }
                let cancels = toCancel
                toCancel = []
                return (batch, cancels, stopping, self.abortAt)
            }
            for ticket in cancels { abortTransfer(ticket: ticket, failure: Self.cancelled) }
            for pending in batch { start(pending) }
            if !batch.isEmpty { wsgate_curl_loop_kick(loop) }
            collectFinished()
            if stop && NIODeadline.now() >= abortAt {
                let failure = CurlFailure(cause: .shutdown, message: "aborted: the gateway's drain ended", curlCode: -1)
                for ticket in Array(running.keys) { abortTransfer(ticket: ticket, failure: failure) }
            }
            if stop && running.isEmpty { break }
            // Wake at least every 100 ms while stopping, to see the abort deadline.
            wsgate_curl_loop_run_once(loop, stop ? 100 : 1000)
            collectFinished()
        }
        idleHandles = []  // each cleans up its handle
        wsgate_curl_loop_destroy(loop)
        curl_multi_cleanup(multi)
        stopped.succeed(())
    }

    /// Takes a running transfer off the multi handle and fails its promise.
    private func abortTransfer(ticket: Ticket, failure: CurlFailure) {
        guard let transfer = running.removeValue(forKey: ticket) else { return }  // finished already
        curl_multi_remove_handle(multi, transfer.easy.pointer)
        let promise = transfer.promise
        promise.futureResult.eventLoop.execute { promise.fail(failure) }
        retire(transfer)
    }

    /// A finished or aborted transfer's handle goes back to the pool, unless
    /// it carries per-route TLS options (then it is cleaned up with its last
    /// reference).
    private func retire(_ transfer: Transfer) {
        if !transfer.request.hasCustomTLS && idleHandles.count < 256 {
            idleHandles.append(transfer.easy)
        }
    }

    /// A handle from the pool, or a new one with the options every transfer
    /// shares set once (handles are reused without `curl_easy_reset`).
    private func makeHandle() -> EasyHandle {
        if let handle = idleHandles.popLast() { return handle }
        let easy = EasyHandle()
        let h = easy.pointer
        wsgate_curl_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        "http,https".withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_PROTOCOLS_STR, $0) }
        // Upstreams are internal services: never route them through an
        // HTTP(S)_PROXY from the environment.
        "*".withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_NOPROXY, $0) }
        wsgate_curl_easy_setopt_long(h, CURLOPT_TCP_KEEPALIVE, 1)
        wsgate_curl_easy_setopt_long(h, CURLOPT_FOLLOWLOCATION, 0)
        wsgate_curl_easy_setopt_write_function(h, transferWriteCallback)
        wsgate_curl_easy_setopt_ptr(h, CURLOPT_ERRORBUFFER, easy.errorBuffer)
        return easy
    }

    private func start(_ pending: Pending) {
        var request = pending.request
        if let deadline = request.deadline {
            // http_request_ms counts from when the message was read.
            let left = (deadline - .now()).nanoseconds / 1_000_000
            guard left > 0 else {
                let failure = CurlFailure(
                    cause: .upstreamTimeout, message: "no response within \(request.totalTimeoutMs) ms (the request waited in the gateway's queue)",
                    curlCode: Int32(CURLE_OPERATION_TIMEDOUT.rawValue))
                let promise = pending.promise
                promise.futureResult.eventLoop.execute { promise.fail(failure) }
                return
            }
            request.totalTimeoutMs = min(request.totalTimeoutMs, Int(left))
        }
        let transfer = Transfer(request: request, promise: pending.promise, easy: makeHandle())
        let handle = transfer.easy.pointer
        transfer.configure(handle)
        // Unretained: `running` keeps the transfer while libcurl has it.
        wsgate_curl_easy_setopt_ptr(handle, CURLOPT_PRIVATE, Unmanaged.passUnretained(transfer).toOpaque())
        let added = curl_multi_add_handle(multi, handle)
        guard added == CURLM_OK else {
            let failure = CurlFailure(
                cause: .internalError, message: "curl_multi_add_handle: \(String(cString: curl_multi_strerror(added)))", curlCode: -1)
            let promise = pending.promise
            promise.futureResult.eventLoop.execute { promise.fail(failure) }
            retire(transfer)
            return
        }
        transfer.ticket = pending.ticket
        running[pending.ticket] = transfer
    }

    /// Completes finished transfers. Results are handed to each event loop
    /// in one batch per round (one cross-thread wake-up per loop, not per
    /// request); with one client per event loop that is one loop.
    private func collectFinished() {
        var left: Int32 = 0
        while let message = curl_multi_info_read(multi, &left) {
            guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle else { continue }
            let code = message.pointee.data.result
            curl_multi_remove_handle(multi, handle)
            var owner: UnsafeMutableRawPointer? = nil
            wsgate_curl_easy_getinfo_ptr(handle, CURLINFO_PRIVATE, &owner)
            guard let owner, let transfer = running.removeValue(forKey: Unmanaged<Transfer>.fromOpaque(owner).takeUnretainedValue().ticket)
            else { continue }  // aborted meanwhile: not ours any more
            completed.append(Completion(promise: transfer.promise, result: transfer.finish(handle: handle, code: code, mediaTypes: &mediaTypes)))
            retire(transfer)
        }
        guard !completed.isEmpty else { return }
        let batch = completed
        completed = []
        let loop = batch[0].promise.futureResult.eventLoop
        if batch.allSatisfy({ $0.promise.futureResult.eventLoop === loop }) {
            loop.execute { Completion.deliver(batch) }
        } else {
            var byLoop: [ObjectIdentifier: (EventLoop, [Completion])] = [:]
            for completion in batch {
                let loop = completion.promise.futureResult.eventLoop
                byLoop[ObjectIdentifier(loop), default: (loop, [])].1.append(completion)
            }
            for (_, (loop, completions)) in byLoop { loop.execute { Completion.deliver(completions) } }
        }
    }
}

/// A finished transfer's outcome, on its way to the promise's event loop.
private struct Completion: Sendable {
    let promise: EventLoopPromise<CurlResponse>
    let result: Result<CurlResponse, CurlFailure>

    static func deliver(_ batch: [Completion]) {
        for completion in batch {
            switch completion.result {
            case .success(let response): completion.promise.succeed(response)
            case .failure(let failure): completion.promise.fail(failure)
            }
        }
    }
}

/// An easy handle with its error buffer; cleaned up with its last reference
/// (the pool of idle handles, or the transfer using it).
private final class EasyHandle {
    let pointer: UnsafeMutableRawPointer
    let errorBuffer: UnsafeMutablePointer<CChar>

    init() {
        pointer = curl_easy_init()!
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
    }

    deinit {
        curl_easy_cleanup(pointer)
        errorBuffer.deallocate()
    }
}

/// The last `Content-Type` values seen and what `MediaType.parse` made of
/// them: an upstream sends the same one on every response, and comparing
/// bytes is cheaper than parsing and building a String each time.
private struct MediaTypeCache {
    private var raw: [UInt8] = []
    private var parsed = ""

    mutating func mediaType(_ header: UnsafePointer<CChar>) -> String {
        let length = strlen(header)
        let same = length == raw.count && raw.withUnsafeBytes { memcmp($0.baseAddress!, header, length) == 0 }
        if !same {
            raw = Array(UnsafeRawBufferPointer(start: header, count: length))
            parsed = MediaType.parse(header)
        }
        return parsed
    }
}

/// One request in flight on the worker thread: owns its header list, body
/// copy and error buffer for as long as libcurl may read them.
private final class Transfer {
    let request: CurlRequest
    let promise: EventLoopPromise<CurlResponse>
    let easy: EasyHandle
    var ticket: CurlClient.Ticket = 0
    var responseBody: ByteBuffer
    var oversized = false
    private var bodyCopy: UnsafeMutableRawBufferPointer?
    private var errorBuffer: UnsafeMutablePointer<CChar> { easy.errorBuffer }
    private var connectToList: UnsafeMutablePointer<curl_slist>?

    init(request: CurlRequest, promise: EventLoopPromise<CurlResponse>, easy: EasyHandle) {
        self.request = request
        self.promise = promise
        self.easy = easy
        self.responseBody = ByteBufferAllocator().buffer(capacity: 0)
        easy.errorBuffer.pointee = 0
    }

    deinit {
        bodyCopy?.deallocate()
        curl_slist_free_all(connectToList)
    }

    /// Sets every per-transfer option (the handle may carry a previous
    /// transfer's values: each one is overwritten here).
    func configure(_ h: UnsafeMutableRawPointer) {
        request.url.withCString { _ = wsgate_curl_easy_setopt_ptr(h, CURLOPT_URL, $0) }  // copied by libcurl
        switch request.httpVersion {
        case .auto where request.url.utf8.starts(with: "https:".utf8):
            wsgate_curl_easy_setopt_long(h, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_2TLS))
            wsgate_curl_easy_setopt_long(h, CURLOPT_PIPEWAIT, 0)
        case .auto, .http1:
            // `auto` to http:// is HTTP/1.1 too, said so here rather than left
            // to 2TLS: libcurl would otherwise hand this transfer a cleartext
            // HTTP/2 connection that an `h2c` route opened to the same origin.
            wsgate_curl_easy_setopt_long(h, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
            wsgate_curl_easy_setopt_long(h, CURLOPT_PIPEWAIT, 0)
        case .h2c:
            wsgate_curl_easy_setopt_long(h, CURLOPT_HTTP_VERSION, h2cVersionOption)
            // Wait for a stream on the upstream's connection rather than
            // opening another connection while the first is being set up.
            wsgate_curl_easy_setopt_long(h, CURLOPT_PIPEWAIT, 1)
        }
        wsgate_curl_easy_setopt_ptr(h, CURLOPT_CONNECT_TO, nil)  // a previous transfer's may be set
        if request.method == "GET" {
            // Health checks: a plain GET, no body (POSTFIELDS of the next
            // transfer on this handle switches it back to POST).
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_CUSTOMREQUEST, nil)
            wsgate_curl_easy_setopt_long(h, CURLOPT_HTTPGET, 1)
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_HTTPHEADER, request.headers.list)
            wsgate_curl_easy_setopt_ptr(h, CURLOPT_WRITEDATA, Unmanaged.passUnretained(self).toOpaque())
            configureTLSAndAddress(h)
            return
        }
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
        configureTLSAndAddress(h)
    }

    private func configureTLSAndAddress(_ h: UnsafeMutableRawPointer) {
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

    func finish(handle: UnsafeMutableRawPointer, code: CURLcode, mediaTypes: inout MediaTypeCache) -> Result<CurlResponse, CurlFailure> {
        if code == CURLE_OK {
            var status = 0
            wsgate_curl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
            var typePointer: UnsafePointer<CChar>? = nil
            wsgate_curl_easy_getinfo_string(handle, CURLINFO_CONTENT_TYPE, &typePointer)
            let contentType = typePointer.map { mediaTypes.mediaType($0) }
            var response = CurlResponse(status: status, contentType: contentType, body: responseBody)
            if let name = request.captureHeader {
                var header: UnsafeMutablePointer<curl_header>? = nil
                if curl_easy_header(handle, name, 0, UInt32(CURLH_HEADER), -1, &header) == CURLHE_OK, let value = header?.pointee.value {
                    response.capturedHeader = String(cString: value)
                }
            }
            return .success(response)
        }
        let detail = errorBuffer.pointee != 0 ? String(cString: errorBuffer) : String(cString: curl_easy_strerror(code))
        var failure = oversized
            ? CurlFailure(cause: .upstreamProtocolError, message: "response body over \(request.maxResponseBytes) bytes", curlCode: Int32(code.rawValue))
            : CurlFailure(cause: CurlErrorClassifier.cause(code), message: detail, curlCode: Int32(code.rawValue))
        // CURLINFO_REQUEST_SIZE: bytes of request sent; 0 means the upstream
        // cannot have seen it.
        var sent = 0
        wsgate_curl_easy_getinfo_long(handle, CURLINFO_REQUEST_SIZE, &sent)
        failure.notSent = sent == 0 && !oversized
        return .failure(failure)
    }
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
/// What `http.version: h2c` asks libcurl for. HTTP/2 with prior knowledge
/// where libcurl can reuse such a connection; libcurl before 8.0 fails every
/// request after the first on a prior-knowledge connection ("Error in the
/// HTTP2 framing layer", curl issue #10634, fixed in 8.0.0; Debian 12 ships
/// 7.88.1), so there each new connection starts as HTTP/1.1 with
/// `Upgrade: h2c` and carries its later requests as HTTP/2 streams.
let h2cVersionOption: Int = {
    guard let info = curl_version_info(CURLVERSION_FIRST) else { return Int(CURL_HTTP_VERSION_2_0) }
    return info.pointee.version_num >= 0x08_00_00 ? Int(CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE) : Int(CURL_HTTP_VERSION_2_0)
}()

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
