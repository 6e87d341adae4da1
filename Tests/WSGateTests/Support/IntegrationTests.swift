import Testing

/// The parent of the suites that start gateways on real sockets. They run
/// one after the other, never beside each other, so that no case's timing
/// depends on another suite's load on the shared event-loop group.
@Suite("Integration", .serialized)
enum IntegrationTests {}
