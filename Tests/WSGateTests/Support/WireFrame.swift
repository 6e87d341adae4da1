import NIOCore

/// A WebSocket frame as it is on the wire, written and read by the tests
/// themselves (RFC 6455 §5.2), independent of the gateway's own encoder, so a
/// test reads like the RFC: `WireFrame.text("hi").masked(by: key)`.
struct WireFrame: Equatable, CustomStringConvertible {
    var fin = true
    var rsv: UInt8 = 0
    var opcode: UInt8
    var payload: [UInt8]
    /// The masking key this frame was (or is to be) sent with.
    var maskKey: [UInt8]?
    /// Force a longer length encoding than needed (e.g. 126 for a short payload).
    var lengthEncoding: Int? = nil

    static func text(_ s: String, fin: Bool = true) -> WireFrame { WireFrame(fin: fin, opcode: 0x1, payload: Array(s.utf8)) }
    static func binary(_ b: [UInt8], fin: Bool = true) -> WireFrame { WireFrame(fin: fin, opcode: 0x2, payload: b) }
    static func continuation(_ s: String, fin: Bool = true) -> WireFrame { WireFrame(fin: fin, opcode: 0x0, payload: Array(s.utf8)) }
    static func ping(_ s: String = "") -> WireFrame { WireFrame(opcode: 0x9, payload: Array(s.utf8)) }
    static func pong(_ s: String = "") -> WireFrame { WireFrame(opcode: 0xA, payload: Array(s.utf8)) }
    static func close(_ code: UInt16? = nil, _ reason: String = "") -> WireFrame {
        var payload: [UInt8] = []
        if let code { payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8) }
        return WireFrame(opcode: 0x8, payload: payload)
    }

    func masked(by key: [UInt8] = [0x11, 0x22, 0x33, 0x44]) -> WireFrame {
        var copy = self
        copy.maskKey = key
        return copy
    }

    var text: String { String(decoding: payload, as: UTF8.self) }

    /// The close code of a close frame, if it has one.
    var closeCode: UInt16? { opcode == 0x8 && payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : nil }
    var closeReason: String { opcode == 0x8 && payload.count > 2 ? String(decoding: payload[2...], as: UTF8.self) : "" }

    var description: String {
        "WireFrame(op: \(opcode), fin: \(fin), masked: \(maskKey != nil), \(payload.count) bytes: \(text.prefix(40)))"
    }

    /// The frame's bytes, masked when it has a key.
    var bytes: [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | (rsv << 4) | opcode]
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        let n = payload.count
        switch lengthEncoding ?? (n < 126 ? 0 : n <= 0xFFFF ? 126 : 127) {
        case 126:
            out += [maskBit | 126, UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
        case 127:
            out.append(maskBit | 127)
            out += (0..<8).reversed().map { UInt8(UInt64(n) >> (UInt64($0) * 8) & 0xFF) }
        default:
            out.append(maskBit | UInt8(n))
        }
        if let key = maskKey {
            out += key
            out += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        } else {
            out += payload
        }
        return out
    }

    func buffer() -> ByteBuffer { ByteBuffer(bytes: bytes) }

    /// Parses every complete frame in `bytes` (unmasking masked ones; the
    /// key is kept in `maskKey`). Leftover bytes are an error.
    static func parseAll(_ buffer: ByteBuffer) throws -> [WireFrame] {
        var bytes = Array(buffer.readableBytesView)
        var frames: [WireFrame] = []
        while !bytes.isEmpty {
            guard bytes.count >= 2 else { throw TestError("truncated frame header") }
            var frame = WireFrame(fin: bytes[0] & 0x80 != 0, rsv: (bytes[0] >> 4) & 0x7, opcode: bytes[0] & 0x0F, payload: [])
            var length = Int(bytes[1] & 0x7F)
            var offset = 2
            if length == 126 {
                length = Int(bytes[2]) << 8 | Int(bytes[3])
                offset = 4
            } else if length == 127 {
                length = (2..<10).reduce(0) { $0 << 8 | Int(bytes[$1]) }
                offset = 10
            }
            if bytes[1] & 0x80 != 0 {
                frame.maskKey = Array(bytes[offset..<offset + 4])
                offset += 4
            }
            guard bytes.count >= offset + length else { throw TestError("truncated frame payload") }
            frame.payload = Array(bytes[offset..<offset + length])
            if let key = frame.maskKey {
                frame.payload = frame.payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
            }
            frames.append(frame)
            bytes.removeFirst(offset + length)
        }
        return frames
    }
}

extension Array where Element == WireFrame {
    /// Several frames in one buffer, as one TCP read would deliver them.
    func buffer() -> ByteBuffer { ByteBuffer(bytes: flatMap(\.bytes)) }
}
