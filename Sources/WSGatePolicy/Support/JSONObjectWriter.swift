/// Builds one JSON object in insertion order (log lines keep a stable,
/// documented field order, which `JSONSerialization` would not).
public struct JSONObjectWriter {
    private var out = "{"
    private var first = true

    public init() {}

    private mutating func key(_ name: String) {
        if !first { out.append(",") }
        first = false
        JSONText.appendQuoted(name, to: &out)
        out.append(":")
    }

    public mutating func field(_ name: String, _ value: String?) {
        key(name)
        if let value { JSONText.appendQuoted(value, to: &out) } else { out.append("null") }
    }

    public mutating func field(_ name: String, _ value: Int?) {
        key(name)
        out.append(value.map { String($0) } ?? "null")
    }

    public mutating func field(_ name: String, _ value: Bool) {
        key(name)
        out.append(value ? "true" : "false")
    }

    /// Appends an already-encoded JSON value.
    public mutating func field(_ name: String, rawJSON: String) {
        key(name)
        out.append(rawJSON)
    }

    public mutating func finish() -> String {
        out.append("}")
        return out
    }
}
