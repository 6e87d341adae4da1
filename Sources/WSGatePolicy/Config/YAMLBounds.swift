import Yams

/// What a config file may cost to read, whatever its aliases do.
///
/// YAML aliases share a node, so a few lines (`&a [*b, *b, …]`, nine levels
/// deep: "billion laughs") stand for billions of values. Walking them is
/// bounded here (`maxNodes`, counted as expanded, and the count stops at the
/// bound), and an alias used as a mapping key is refused before Yams sees
/// it: its duplicate-key check hashes the expanded key, which takes
/// exponential time. Both were found by the config fuzzer
/// (tests/hostile/test_config_fuzz.py).
enum YAMLBounds {
    /// Values once aliases are expanded: a config with a thousand routes
    /// has a few tens of thousands.
    static let maxNodes = 200_000

    static func fits(_ root: Node) -> Bool {
        var budget = maxNodes
        return visit(root, &budget)
    }

    private static func visit(_ node: Node, _ budget: inout Int) -> Bool {
        budget -= 1
        guard budget >= 0 else { return false }
        switch node {
        case .scalar, .alias:
            return true
        case .sequence(let sequence):
            for item in sequence where !visit(item, &budget) { return false }
            return true
        case .mapping(let mapping):
            for (key, value) in mapping where !visit(key, &budget) || !visit(value, &budget) { return false }
            return true
        }
    }

    /// A description of the first alias used as a mapping key (`? *a` or
    /// `*a : 1`), or nil. A scan of the text that knows quotes and
    /// comments; config keys are names, so refusing these costs nothing.
    static func aliasUsedAsKey(_ text: String) -> String? {
        let bytes = Array(text.utf8)
        let space = UInt8(ascii: " "), tab = UInt8(ascii: "\t"), newline = UInt8(ascii: "\n")
        func isBlank(_ b: UInt8) -> Bool { b == space || b == tab || b == newline || b == UInt8(ascii: "\r") }
        var i = 0
        var line = 1
        // The previous byte, and whether a token may start here: after white
        // space that follows an indicator or a line start, or right after a
        // flow indicator (`[`, `{`, `,`). Inside plain text (`/chat/*`,
        // `ws://h/x?*`) it may not.
        var previous = newline
        var atTokenStart = true
        // An explicit key (`? `) whose key has not appeared yet: it may be on
        // the next line.
        var explicitKeyPending = false
        while i < bytes.count {
            let b = bytes[i]
            if isBlank(b) {
                if b == newline { line += 1 }
                // White space: a token may start after it only when what came
                // before was an indicator or the start of a line.
                if previous == newline || [UInt8(ascii: "?"), UInt8(ascii: "-"), UInt8(ascii: ":"), UInt8(ascii: "["),
                    UInt8(ascii: "{"), UInt8(ascii: ",")].contains(previous) || atTokenStart
                {
                    atTokenStart = true
                }
                if b == newline {
                    previous = newline
                    atTokenStart = true
                }
                i += 1
                continue
            }
            switch b {
            case UInt8(ascii: "#") where atTokenStart || previous == newline:
                while i < bytes.count, bytes[i] != newline { i += 1 }
                continue
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                explicitKeyPending = false
                // A quoted scalar: skip to its end ('' and \" escapes).
                i += 1
                while i < bytes.count {
                    if bytes[i] == newline { line += 1 }
                    if b == UInt8(ascii: "\""), bytes[i] == UInt8(ascii: "\\") { i += 2; continue }
                    if bytes[i] == b {
                        if b == UInt8(ascii: "'"), i + 1 < bytes.count, bytes[i + 1] == b { i += 2; continue }
                        break
                    }
                    i += 1
                }
                i += 1
                previous = b
                atTokenStart = false
                continue
            case UInt8(ascii: "?") where atTokenStart && (i + 1 == bytes.count || isBlank(bytes[i + 1])):
                explicitKeyPending = true
                previous = b
                atTokenStart = false
                i += 1
                continue
            case UInt8(ascii: "*") where atTokenStart:
                i += 1
                while i < bytes.count, !isEnd(bytes[i]) { i += 1 }
                var j = i
                while j < bytes.count, bytes[j] == space || bytes[j] == tab { j += 1 }
                if explicitKeyPending || (j < bytes.count && bytes[j] == UInt8(ascii: ":")) {
                    return "line \(line): an alias used as a mapping key (keys must be plain names)"
                }
                previous = UInt8(ascii: "*")
                atTokenStart = false
                continue
            case UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","):
                // Flow indicators: a token may follow at once.
                explicitKeyPending = false
                previous = b
                atTokenStart = true
                i += 1
                continue
            default:
                explicitKeyPending = false
                previous = b
                atTokenStart = false
                i += 1
            }
        }
        return nil
    }

    private static func isEnd(_ b: UInt8) -> Bool {
        b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r")
            || b == UInt8(ascii: ",") || b == UInt8(ascii: "[") || b == UInt8(ascii: "]") || b == UInt8(ascii: "{")
            || b == UInt8(ascii: "}")
    }
}
