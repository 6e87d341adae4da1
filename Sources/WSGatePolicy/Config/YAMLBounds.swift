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
        var i = 0
        var line = 1
        var previous: UInt8 = UInt8(ascii: "\n")  // the last byte that is not a space on this line
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "\n"):
                line += 1
                previous = b
                i += 1
            case UInt8(ascii: "'"), UInt8(ascii: "\""):
                // A quoted scalar: skip to its end ('' and \\" escapes).
                i += 1
                while i < bytes.count {
                    if bytes[i] == UInt8(ascii: "\n") { line += 1 }
                    if b == UInt8(ascii: "\""), bytes[i] == UInt8(ascii: "\\") { i += 2; continue }
                    if bytes[i] == b {
                        if b == UInt8(ascii: "'"), i + 1 < bytes.count, bytes[i + 1] == b { i += 2; continue }
                        break
                    }
                    i += 1
                }
                i += 1
                previous = b
            case UInt8(ascii: "#") where previous == UInt8(ascii: "\n") || i == 0 || bytes[i - 1] == UInt8(ascii: " ") || bytes[i - 1] == UInt8(ascii: "\t"):
                while i < bytes.count, bytes[i] != UInt8(ascii: "\n") { i += 1 }
            case UInt8(ascii: "*") where isTokenStart(previous, i == 0 ? UInt8(ascii: "\n") : bytes[i - 1]):
                let explicitKey = previous == UInt8(ascii: "?")
                i += 1
                while i < bytes.count, !isEnd(bytes[i]) { i += 1 }
                var j = i
                while j < bytes.count, bytes[j] == UInt8(ascii: " ") || bytes[j] == UInt8(ascii: "\t") { j += 1 }
                if explicitKey || (j < bytes.count && bytes[j] == UInt8(ascii: ":")) {
                    return "line \(line): an alias used as a mapping key (keys must be plain names)"
                }
                previous = UInt8(ascii: "*")
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                i += 1
            default:
                previous = b
                i += 1
            }
        }
        return nil
    }

    /// An alias starts a token: at the start of a line or after an
    /// indicator, and after white space (`/chat/*` is a plain scalar).
    private static func isTokenStart(_ previous: UInt8, _ before: UInt8) -> Bool {
        let indicators: [UInt8] = [UInt8(ascii: "\n"), UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","), UInt8(ascii: "?"),
                                   UInt8(ascii: "-"), UInt8(ascii: ":")]
        let spaceOrIndicator = before == UInt8(ascii: " ") || before == UInt8(ascii: "\t") || indicators.contains(before)
        return spaceOrIndicator && indicators.contains(previous)
    }

    private static func isEnd(_ b: UInt8) -> Bool {
        b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r")
            || b == UInt8(ascii: ",") || b == UInt8(ascii: "[") || b == UInt8(ascii: "]") || b == UInt8(ascii: "{")
            || b == UInt8(ascii: "}")
    }
}
