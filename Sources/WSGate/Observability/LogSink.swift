import Dispatch
import NIOConcurrencyHelpers
import WSGatePolicy

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where log lines go: a bounded buffer that a writer thread of its own
/// empties into a file descriptor (stdout by default).
///
/// Why a thread: a log line is written from an event loop (every close
/// line), and `write(2)` to a pipe blocks when the reader stalls (a log
/// shipper that falls behind, `docker logs` paused, a terminal on hold).
/// Written in place, one stalled stdout would freeze every event loop and
/// `/healthz` with it. Here a line is a copy into memory under a lock (no
/// system call); the writer thread does the blocking.
///
/// Bound: `capacity` bytes of lines wait at most. When the buffer is full a
/// line is dropped and counted (`wsgate_log_lines_dropped_total`); once the
/// writer gets going again it writes one `log_lines_dropped` line with the
/// count, so a gap in the log is never silent. Lines are whole: each is one
/// `write(2)` unit appended after the previous one, never interleaved.
///
/// `flush` waits (boundedly) for the buffer to be written: before the
/// process exits.
public final class LogSink: @unchecked Sendable {
    public static let standardOutput = LogSink(fileDescriptor: 1)

    /// Bytes of lines that may wait for the writer.
    public static let defaultCapacity = 4 << 20

    private let fd: Int32
    private let capture: (@Sendable (String) -> Void)?

    private let lock = NIOLock()
    // Guarded by lock:
    private var capacity: Int
    private var buffer: [UInt8] = []
    private var writing = false
    private var droppedSinceReport = 0
    private var droppedTotal = 0
    private var droppedReported = 0  // to the metrics
    private var writerStarted = false

    private let wakeup = DispatchSemaphore(value: 0)

    public init(fileDescriptor: Int32, capacity: Int = LogSink.defaultCapacity) {
        self.fd = fileDescriptor
        self.capacity = capacity
        self.capture = nil
    }

    /// A sink that hands each line to `capture` instead of writing it (tests,
    /// embedding), synchronously.
    public init(capture: @escaping @Sendable (String) -> Void) {
        self.fd = -1
        self.capacity = .max
        self.capture = capture
    }

    public func writeLine(_ line: String) {
        if let capture {
            capture(line)
            return
        }
        var line = line
        let (accepted, wake, startWriter) = line.withUTF8 { bytes -> (Bool, Bool, Bool) in
            lock.withLock {
                guard buffer.count + bytes.count + 1 <= capacity else {
                    droppedSinceReport += 1
                    droppedTotal += 1
                    return (false, false, false)
                }
                let wasEmpty = buffer.isEmpty
                buffer.append(contentsOf: bytes)
                buffer.append(UInt8(ascii: "\n"))
                let start = !writerStarted
                writerStarted = true
                return (true, wasEmpty, start)
            }
        }
        if startWriter { startWriterThread() }
        if accepted && wake { wakeup.signal() }
    }

    /// `log.buffer_bytes`, set once the config is loaded.
    public func setCapacity(_ bytes: Int) {
        lock.withLock { capacity = bytes }
    }

    /// Lines dropped since the last call (for the metrics counter).
    public func takeDroppedCount() -> Int {
        lock.withLock {
            let n = droppedTotal - droppedReported
            droppedReported = droppedTotal
            return n
        }
    }

    /// Waits until every buffered line is written, at most `timeout` seconds
    /// (stdout may be stuck for good).
    public func flush(timeout: Double = 5) {
        guard capture == nil else { return }
        let deadline = DispatchTime.now() + timeout
        while DispatchTime.now() < deadline {
            let idle = lock.withLock { buffer.isEmpty && !writing && droppedSinceReport == 0 }
            if idle { return }
            wakeup.signal()
            usleep(1_000)
        }
    }

    private func startWriterThread() {
        let thread = Thread { [self] in self.runWriter() }
        thread.start()
    }

    private func runWriter() {
        while true {
            wakeup.wait()
            while true {
                let (taken, dropped) = lock.withLock { () -> ([UInt8], Int) in
                    // Producers go on appending to a fresh buffer while this
                    // one is written (the hand-over shares storage: no copy).
                    let taken = buffer
                    buffer = []
                    let d = droppedSinceReport
                    droppedSinceReport = 0
                    writing = !taken.isEmpty || d > 0
                    return (taken, d)
                }
                if taken.isEmpty && dropped == 0 { break }
                writeAll(taken)
                if dropped > 0 { writeAll(Array(LogSink.droppedLine(dropped).utf8)) }
                lock.withLock { writing = false }
            }
        }
    }

    static func droppedLine(_ count: Int) -> String {
        "{\"ts\":\"\(Timestamp.iso8601(millisecondsSinceEpoch: Timestamp.nowMilliseconds()))\",\"level\":\"warning\",\"event\":\"log_lines_dropped\",\"count\":\(count)}\n"
    }

    private func writeAll(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n > 0 {
                    offset += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return  // stdout gone: nothing sensible left to do with a log line
                }
            }
        }
    }
}

/// A plain thread for the writer: it blocks in `write(2)` and must not take
/// a thread from any pool.
private final class Thread: @unchecked Sendable {
    private let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        var tid = pthread_t()
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&tid, nil, { arg in
            let thread = Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue()
            thread.body()
            return nil
        }, box)
        pthread_detach(tid)
    }
}
