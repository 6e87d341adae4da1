/// The close codes wsgate sends, receives or logs, by name (RFC 6455 §7.4.1
/// and the IANA registry). Every code the gateway decides on is named here or
/// comes from configuration: no other file spells a close code as a number.
public enum CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    public static let normal: UInt16 = 1000
    /// 1001: an endpoint is going away (drain, idle timeout, the other leg gone).
    public static let goingAway: UInt16 = 1001
    /// 1002: the peer broke RFC 6455.
    public static let protocolError: UInt16 = 1002
    /// 1005: logged when a close frame had no code; never sent.
    public static let noStatus: UInt16 = 1005
    /// 1006: logged when no close frame arrived; never sent ("drop the TCP
    /// connection" when it is a `close_codes` value).
    public static let abnormal: UInt16 = 1006
    /// 1007: a text message or close reason was not UTF-8.
    public static let invalidPayload: UInt16 = 1007
    /// 1008: a policy said no (HTTP 4xx from an upstream).
    public static let policyViolation: UInt16 = 1008
    /// 1009: a message over `max_message_bytes`.
    public static let messageTooBig: UInt16 = 1009
    /// 1011: something unexpected inside the gateway or an upstream.
    public static let internalError: UInt16 = 1011
    /// 1012: the service is restarting (a `shutdown.close_code` choice).
    public static let serviceRestart: UInt16 = 1012
    /// 1013: try again later (overloaded, HTTP 503).
    public static let tryAgainLater: UInt16 = 1013
    /// 1014: the upstream failed (Bad Gateway).
    public static let badGateway: UInt16 = 1014

    /// 3000–3999: registered with IANA for libraries, frameworks and applications.
    public static let registeredRange: ClosedRange<UInt16> = 3000...3999
    /// 4000–4999: private use, chosen by the application.
    public static let privateRange: ClosedRange<UInt16> = 4000...4999

    /// Codes that may appear in a received close frame (RFC 6455 §7.4 plus
    /// the IANA-registered 1012–1014, which some libraries wrongly reject).
    public static func isValidReceived(_ code: UInt16) -> Bool {
        (normal...1003).contains(code) || (invalidPayload...badGateway).contains(code)
            || registeredRange.contains(code) || privateRange.contains(code)
    }

    /// Codes a `close_codes` override may name: those a client may receive
    /// in a frame, plus 1006 meaning "drop the TCP connection".
    public static func isAllowedOverride(_ code: Int) -> Bool {
        guard let code = UInt16(exactly: code) else { return false }
        return isValidReceived(code) || code == abnormal
    }

    /// The codes `shutdown.close_code` may name.
    public static let shutdownChoices: [UInt16] = [goingAway, serviceRestart]
}
