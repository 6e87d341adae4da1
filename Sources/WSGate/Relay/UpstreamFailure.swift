import WSGatePolicy

/// Why an upstream could not be used or stopped working, already classified
/// into a close cause.
struct UpstreamFailure: Error {
    var cause: CloseCause
    var details: CloseDetails
    /// Low-level detail for the log's `error` field.
    var error: String?
    /// Nothing reached the upstream's application yet (connect refused or
    /// timed out, TLS failed, the connection reset before the 101): another
    /// target of the pool may be tried.
    var retryable = false

    init(_ cause: CloseCause, httpStatus: Int? = nil, error: String?, retryable: Bool = false) {
        self.cause = cause
        self.details = CloseDetails(httpStatus: httpStatus)
        self.error = error
        self.retryable = retryable
    }
}
