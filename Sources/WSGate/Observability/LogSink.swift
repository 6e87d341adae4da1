import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where log lines go: one `write(2)` per line to a file descriptor (stdout by
/// default), so lines from different threads never interleave and nothing
/// sits in a stdio buffer when the process exits.
///
/// A lock serialises writers. It is taken once per log line (per connection
/// close, per warning), never per frame.
public final class LogSink: Sendable {
    public static let standardOutput = LogSink(fileDescriptor: 1)

    private let fd: Int32
    private let lock = NIOLock()
    private let capture: (@Sendable (String) -> Void)?

    public init(fileDescriptor: Int32) {
        self.fd = fileDescriptor
        self.capture = nil
    }

    /// A sink that hands each line to `capture` instead of writing it (tests,
    /// embedding).
    public init(capture: @escaping @Sendable (String) -> Void) {
        self.fd = -1
        self.capture = capture
    }

    public func writeLine(_ line: String) {
        if let capture {
            capture(line)
            return
        }
        var line = line
        line.append("\n")
        lock.withLock {
            line.withUTF8 { buffer in
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
}
