/// Matrix client for hummingbird-websocket's `WebSocketClient` (product `HummingbirdWSClient`,
/// swift-websocket underneath): `MatrixClient CASES.json` runs the cases one at a time and
/// prints one JSON line per case. ../PROTOCOL.md is the contract; this program only says what
/// the library's public API lets an application do and see, so the matrix can show where it
/// hides or changes what the gateway sent.
///
/// How the API maps onto the contract:
/// - `connect` runs our handler (a reader of `inbound.messages` beside the steps) and, once the
///   handler returns, returns the close frame the server sent: `code`/`reason` (`reason` null
///   when the frame had none). An error out of the reader leaves the handler and comes out of
///   `connect` as the library chose to say it; a failed step is recorded and the case waits on.
/// - `clean` is null: the API has no such notion. A timeout cancels `connect`, which aborts.
///
/// What the API does not offer, listed in `unsupported` when a case needs it:
/// - "protocols": `WebSocketClientConfiguration` cannot offer subprotocols nor report one
///   (so `protocol` is always "").
/// - "ping": a ping frame can be written (`.custom`), but pongs are consumed inside the
///   library's inbound stream and never reach the application, so `pongs` stays 0.
/// - "status": a failed handshake never says the HTTP status (a refused upgrade is only
///   `WebSocketClientError.webSocketUpgradeFailed`); a successful one is 101 by definition.

import Foundation
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket

struct Case: Decodable, Sendable {
    let id: String
    let url: String
    let protocols: [String]?
    let steps: [Step]?
    let timeoutMs: Int?
}

/// One step; exactly one of `send`, `expect`, `ping`, `sleepMs`, `close` is set.
struct Step: Decodable, Sendable {
    let send: String?
    let data: String?
    let hex: String?
    let `repeat`: String?
    let times: Int?
    let parts: [String]?
    let expect: Int?
    let ping: String?
    let sleepMs: Int?
    let close: Int?
    let reason: String?
}

struct Message: Sendable {
    let type: String
    let len: Int
    let fnv: String
    let data: String?
}

/// What a case learns while it runs, shared by the reader, the steps and the timeout.
actor CaseState {
    var opened = false
    var ended = false
    var messages: [Message] = []
    var errors: [String] = []
    var unsupported: [String] = []

    func open() { opened = true }
    func end() { ended = true }
    func add(_ message: Message) { messages.append(message) }
    func failed(_ error: any Error) {
        if !(error is CancellationError) { errors.append(String(describing: error)) }
    }
    func has(_ count: Int) -> Bool { messages.count >= count || ended }
    func cannot(_ what: String) {
        if !unsupported.contains(what) { unsupported.append(what) }
    }
}

let maxSize = 64 << 20  // a 1 MiB message must fit in one frame (the default is 16 KiB)
let configuration = WebSocketClientConfiguration(maxFrameSize: maxSize)
let logger: Logger = {
    var log = Logger(label: "wsgate-matrix-client")
    log.logLevel = .error  // to stderr, as LoggingSystem's default handler
    return log
}()

func fnv1a(_ bytes: [UInt8]) -> String {
    var h: UInt32 = 0x811c_9dc5
    for b in bytes { h = (h ^ UInt32(b)) &* 0x0100_0193 }
    return String(format: "%08x", h)
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

func bytes(fromHex s: String) -> [UInt8] {
    let chars = Array(s.utf8)
    return stride(from: 0, to: chars.count - 1, by: 2).map { UInt8(String(decoding: chars[$0...$0 + 1], as: UTF8.self), radix: 16)! }
}

func record(_ message: WebSocketMessage) -> Message {
    switch message {
    case .text(let s):
        let b = Array(s.utf8)
        return Message(type: "text", len: b.count, fnv: fnv1a(b), data: b.count <= 64 ? s : nil)
    case .binary(let buffer):
        let b = Array(buffer.readableBytesView)
        return Message(type: "binary", len: b.count, fnv: fnv1a(b), data: b.count <= 64 ? hex(b) : nil)
    }
}

/// Polls until `done` holds: simple, and a cancelled case ends it by throwing from the sleep.
func poll(until done: () async -> Bool) async throws {
    while await !done() { try await Task.sleep(for: .milliseconds(5)) }
}

func runSteps(_ steps: [Step], _ outbound: WebSocketOutboundWriter, _ state: CaseState) async throws {
    for step in steps {
        if await state.ended { break }
        if let kind = step.send {
            switch kind {
            case "binary":
                try await outbound.write(.binary(ByteBuffer(bytes: bytes(fromHex: step.hex ?? ""))))
            case "fragments":  // one frame per call, the last one with FIN when the closure returns
                try await outbound.withTextMessageWriter { writer in
                    for part in step.parts ?? [] { try await writer(part) }
                }
            default:
                let text = step.repeat.map { String(repeating: $0, count: step.times ?? 1) } ?? step.data ?? ""
                try await outbound.write(.text(text))
            }
        } else if let count = step.expect {
            try await poll { await state.has(count) }
        } else if let payload = step.ping {
            try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .ping, data: ByteBuffer(string: payload))))
            await state.cannot("ping")  // sent, but the pong never reaches the application
        } else if let ms = step.sleepMs {
            try await Task.sleep(for: .milliseconds(ms))
        } else if let code = step.close {
            try await outbound.close(WebSocketErrorCode(codeNumber: code), reason: step.reason)
        }
    }
}

/// What `connect` ended with, or nil when the case timed out first.
enum Outcome: Sendable {
    case closed(WebSocketCloseFrame?)
    case failed
}

func runCase(_ c: Case) async -> String {
    let start = ContinuousClock.now
    let state = CaseState()
    if !(c.protocols ?? []).isEmpty { await state.cannot("protocols") }
    let steps = c.steps ?? []

    let outcome: Outcome? = await withTaskGroup(of: Outcome?.self) { group in
        group.addTask {
            do {
                let frame = try await WebSocketClient.connect(url: c.url, configuration: configuration, logger: logger) {
                    inbound, outbound, _ in
                    await state.open()
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {  // every message, from open to end, whatever step runs
                            do {
                                for try await message in inbound.messages(maxSize: maxSize) { await state.add(record(message)) }
                            } catch {
                                await state.end()
                                throw error  // as an application would: out of the handler, out of connect
                            }
                            await state.end()
                        }
                        do { try await runSteps(steps, outbound, state) } catch { await state.failed(error) }
                        try await group.waitForAll()  // the connection has ended when the inbound stream has
                    }
                }
                return .closed(frame)
            } catch {
                await state.failed(error)
                return .failed
            }
        }
        group.addTask {
            try? await Task.sleep(for: .milliseconds(c.timeoutMs ?? 15000))
            return nil
        }
        let first = await group.next()!
        group.cancelAll()  // the timeout, or the connection: cancelling it aborts it
        return first
    }

    let elapsed = ContinuousClock.now - start
    let opened = await state.opened
    if !opened { await state.cannot("status") }
    var frame: WebSocketCloseFrame? = nil
    if case .closed(let f) = outcome { frame = f }
    let errors = await state.errors
    let unsupported = await state.unsupported
    let messages: [[String: Any]] = await state.messages.map {
        ["type": $0.type, "len": $0.len, "fnv": $0.fnv, "data": $0.data ?? NSNull()]
    }
    let fields: KeyValuePairs<String, Any> = [
        "id": c.id,
        "opened": opened,
        "status": opened ? 101 : NSNull(),
        "protocol": opened ? "" : NSNull(),
        "messages": messages,
        "pongs": 0,
        "code": frame.map { Int(UInt16(webSocketErrorCode: $0.closeCode)) } ?? NSNull(),
        "reason": frame?.reason ?? NSNull(),
        "clean": NSNull(),
        "error": errors.isEmpty ? NSNull() : errors.joined(separator: " | "),
        "unsupported": unsupported,
        "timeout": outcome == nil,
        "elapsed_ms": Int(elapsed / .milliseconds(1)),
    ]
    return "{" + fields.map { "\(json($0.key)): \(json($0.value))" }.joined(separator: ", ") + "}"
}

func json(_ value: Any) -> String {
    let data = try! JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

@main
struct MatrixClient {
    static func main() async throws {
        guard CommandLine.arguments.count == 2 else {
            FileHandle.standardError.write(Data("usage: MatrixClient CASES.json\n".utf8))
            exit(2)
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let cases = try decoder.decode([Case].self, from: Data(contentsOf: URL(fileURLWithPath: CommandLine.arguments[1])))
        for c in cases {  // unbuffered: each line goes out as its case ends
            FileHandle.standardOutput.write(Data((await runCase(c) + "\n").utf8))
        }
    }
}
