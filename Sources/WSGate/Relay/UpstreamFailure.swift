import WSGatePolicy

/// Why an upstream could not be used or stopped working, already classified
/// into a close cause.
struct UpstreamFailure: Error {
    var cause: CloseCause
    var details: CloseDetails
    /// Low-level detail for the log's `error` field.
    var error: String?

    init(_ cause: CloseCause, httpStatus: Int? = nil, error: String?) {
        self.cause = cause
        self.details = CloseDetails(httpStatus: httpStatus)
        self.error = error
    }
}
