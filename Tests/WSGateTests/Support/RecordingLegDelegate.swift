import NIOCore
@testable import WSGate
@testable import WSGatePolicy
@testable import WSGateProtocol

/// A `WebSocketLegDelegate` that writes down what the leg handler told it,
/// in order, so a test can compare it with what RFC 6455 says should happen.
final class RecordingLegDelegate: WebSocketLegDelegate {
    enum Call: Equatable {
        case frames([WireFrame], messages: Int, payloadBytes: Int)
        case close(code: UInt16?, reason: String)
        case violation(FrameViolation, framingBroken: Bool)
        case readComplete
        case writability(Bool)
        case error(String)
        case activity
    }

    var calls: [Call] = []
    /// What `legMayRead` answers (backpressure from the other leg).
    var mayRead = true

    /// Every data frame relayed so far, in order.
    var relayed: [WireFrame] {
        calls.flatMap { call -> [WireFrame] in
            if case .frames(let frames, _, _) = call { return frames }
            return []
        }
    }

    func legFrames(_ batch: FrameBatch) {
        calls.append(.frames((try? WireFrame.parseAll(batch.bytes)) ?? [], messages: batch.messages, payloadBytes: batch.payloadBytes))
    }

    func legClose(code: UInt16?, reason: String) { calls.append(.close(code: code, reason: reason)) }
    func legViolation(_ violation: FrameViolation, framingBroken: Bool) { calls.append(.violation(violation, framingBroken: framingBroken)) }
    func legReadComplete() { calls.append(.readComplete) }
    func legWritabilityChanged(_ writable: Bool) { calls.append(.writability(writable)) }
    func legError(_ error: Error) { calls.append(.error("\(error)")) }
    var legMayRead: Bool { mayRead }
    func legActivity() { calls.append(.activity) }
}

/// Counts `read()` calls that pass it toward the socket: a leg that holds
/// reads for backpressure must not let them through.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var reads = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}
