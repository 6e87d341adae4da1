/// Close reasons travel in a control frame: at most 125 payload bytes, two of
/// which are the code. This cuts a reason to 123 bytes without splitting a
/// UTF-8 sequence (a split sequence would make the frame invalid and the
/// client would fail the connection with 1007 instead of reading it).
public enum CloseReason {
    public static let maxBytes = 123

    public static func truncate(_ reason: String, maxBytes: Int = CloseReason.maxBytes) -> String {
        if reason.utf8.count <= maxBytes { return reason }
        var result = ""
        var used = 0
        for scalar in reason.unicodeScalars {
            let size = UTF8.width(scalar)
            if used + size > maxBytes { break }
            result.unicodeScalars.append(scalar)
            used += size
        }
        return result
    }
}
