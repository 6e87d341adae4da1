import WSGatePolicy
import Logging

/// A swift-log `LogHandler` that writes one JSON object per line (or a plain
/// text line for humans with `log.format: text`).
///
/// JSON lines look like `{"ts":…,"level":"info","event":"listening","port":8080}`:
/// the log message becomes `event`, metadata become fields. Integer and
/// boolean metadata (`.stringConvertible`) are written as JSON numbers and
/// booleans so that tools can filter on them.
public struct GatewayLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let format: GatewayConfig.LogFormat
    let sink: LogSink
    /// `log.redact_query`, applied to every string value (URLs in warnings).
    let redaction: QueryRedaction

    public init(label: String, level: Logger.Level, format: GatewayConfig.LogFormat, sink: LogSink = .standardOutput, redaction: QueryRedaction = QueryRedaction()) {
        self.logLevel = level
        self.format = format
        self.sink = sink
        self.redaction = redaction
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { $1 } }
        if let extra = event.metadata { all.merge(extra) { $1 } }
        if redaction.isEnabled {
            for (key, value) in all {
                if case .string(let text) = value { all[key] = .string(redaction.redact(text)) }
            }
        }
        let line: String
        switch format {
        case .json:
            line = Self.jsonLine(level: event.level, message: "\(event.message)", metadata: all)
        case .text:
            line = Self.textLine(level: event.level, message: "\(event.message)", metadata: all)
        }
        sink.writeLine(line)
    }

    static func levelName(_ level: Logger.Level) -> String {
        level == .critical ? "error" : level.rawValue
    }

    public static func jsonLine(level: Logger.Level, message: String, metadata: Logger.Metadata, timestamp: UInt64 = Timestamp.nowMilliseconds()) -> String {
        var w = JSONObjectWriter()
        w.field("ts", Timestamp.iso8601(millisecondsSinceEpoch: timestamp))
        w.field("level", levelName(level))
        w.field("event", message)
        for key in metadata.keys.sorted() where !["ts", "level", "event"].contains(key) {
            w.field(key, rawJSON: json(metadata[key]!))
        }
        return w.finish()
    }

    static func json(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s): return JSONText.quoted(s)
        case .stringConvertible(let c):
            if let b = c as? Bool { return b ? "true" : "false" }
            if c is Int || c is Int64 || c is UInt64 || c is Int32 || c is UInt16 || c is UInt32 || c is UInt {
                return c.description
            }
            return JSONText.quoted(c.description)
        case .array(let items): return "[" + items.map(json).joined(separator: ",") + "]"
        case .dictionary(let dict):
            var w = JSONObjectWriter()
            for key in dict.keys.sorted() { w.field(key, rawJSON: json(dict[key]!)) }
            return w.finish()
        }
    }

    public static func textLine(level: Logger.Level, message: String, metadata: Logger.Metadata, timestamp: UInt64 = Timestamp.nowMilliseconds()) -> String {
        var line = "\(Timestamp.iso8601(millisecondsSinceEpoch: timestamp)) \(levelName(level).uppercased()) \(message)"
        for key in metadata.keys.sorted() {
            line += " \(key)=\(text(metadata[key]!))"
        }
        return line
    }

    static func text(_ value: Logger.MetadataValue) -> String {
        switch value {
        case .string(let s):
            // Quote when needed so a value can't fake another key or a new line.
            let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F && $0 != "\"" && $0 != "=" }
            return plain ? s : JSONText.quoted(s)
        case .stringConvertible(let c): return text(.string(c.description))
        case .array, .dictionary: return json(value)
        }
    }
}
