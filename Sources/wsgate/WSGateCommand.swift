import WSGatePolicy
import ArgumentParser
import Dispatch
import Logging
import NIOCore
import NIOPosix
import WSGate

#if canImport(Glibc)
import Glibc
#endif

/// The `wsgate` command line; started by main.swift.
struct WSGateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wsgate",
        abstract: "A WebSocket gateway that tells clients why their connection ended.",
        discussion: """
            Relays each client WebSocket to the upstream its route names (a ws:// backend or builtin:echo) \
            and finishes every connection with a close code that says what went wrong, logging one JSON \
            line per closed connection.
            """,
        version: WSGateVersion.string,
        subcommands: [Serve.self, CheckConfig.self, HealthCheck.self],
        defaultSubcommand: Serve.self
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Config file (default: $WSGATE_CONFIG, then config/wsgate.yaml).")
    var config: String?

    var resolvedPath: String {
        config ?? ProcessInfoLite.environment["WSGATE_CONFIG"] ?? "config/wsgate.yaml"
    }

    func load() throws(ConfigError) -> GatewayConfig {
        let path = resolvedPath
        guard let text = FileReader.read(path) else {
            throw ConfigError(problems: [ConfigProblem(path: "", message: "cannot read config file \(path)")])
        }
        return try ConfigLoader.load(yaml: text, environment: ProcessInfoLite.environment)
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the config file: exit 0, or print every problem with its key path and exit 1.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        do {
            let config = try options.load()
            print("\(options.resolvedPath): OK (\(config.routes.count) route\(config.routes.count == 1 ? "" : "s"))")
        } catch {
            for problem in error.problems { printError("\(options.resolvedPath): \(problem)") }
            throw ExitCode(1)
        }
    }
}

struct HealthCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "healthcheck",
        abstract: "Ask a running gateway's admin listener for /healthz: exit 0 when it answers 200, else 1.",
        discussion: "For container health checks: the image needs no curl. Uses admin.host/admin.port from the config (0.0.0.0 or :: means 127.0.0.1).")

    @OptionGroup var options: ConfigOption

    @Option(help: "Timeout in milliseconds.")
    var timeoutMs: Int = 2000

    func run() throws {
        let config: GatewayConfig
        do {
            config = try options.load()
        } catch {
            printError("healthcheck: \(error)")
            throw ExitCode(1)
        }
        var host = config.admin.host
        if host == "0.0.0.0" || host == "::" || host.isEmpty { host = "127.0.0.1" }
        switch HTTPProbe.get(host: host, port: config.admin.port, path: "/healthz", timeoutMs: timeoutMs) {
        case .success(200):
            print("healthy")
        case .success(let status):
            printError("healthcheck: /healthz answered \(status)")
            throw ExitCode(1)
        case .failure(let message):
            printError("healthcheck: \(message)")
            throw ExitCode(1)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway (the default command).")

    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config: GatewayConfig
        do {
            config = try options.load()
        } catch {
            for problem in error.problems {
                EventLog.startupError(path: options.resolvedPath, problem: problem)
            }
            LogSink.standardOutput.flush()
            throw ExitCode(1)
        }
        let level = Logger.Level(rawValue: config.log.level.rawValue) ?? .info
        let format = config.log.format
        let redaction = QueryRedaction(names: config.log.redactQuery)
        LogSink.standardOutput.setCapacity(config.log.bufferBytes)
        LoggingSystem.bootstrap { label in
            GatewayLogHandler(label: label, level: level, format: format, redaction: redaction)
        }
        let logger = Logger(label: "wsgate")
        signal(SIGPIPE, SIG_IGN)
        raiseFileDescriptorLimit(logger: logger)

        // Signals are caught from before the gateway listens: a SIGTERM that
        // arrives right after the `listening` line must start the drain.
        let signals = ShutdownSignal()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: config.workers.resolved(coresAvailable: System.coreCount))
        let server: GatewayServer
        do {
            server = try GatewayServer(config: config, group: group, logger: logger, eventLog: EventLog(format: format, redaction: redaction))
            _ = try await server.start()
        } catch {
            logger.error("start_failed", metadata: [
                "host": .string(config.listen.host), "port": .stringConvertible(config.listen.port), "error": .string("\(error)"),
            ])
            try? await group.shutdownGracefully()
            LogSink.standardOutput.flush()
            throw ExitCode(1)
        }

        let signalName = await signals.wait()
        logger.notice("draining", metadata: [
            "signal": .string(signalName), "connections": .stringConvertible(server.activeConnections),
            "drain_timeout_ms": .stringConvertible(config.shutdown.drainTimeoutMs),
        ])
        // A second signal during the drain exits at once.
        signals.exitOnNextSignal()
        await server.drain(timeout: .milliseconds(Int64(config.shutdown.drainTimeoutMs)))
        logger.notice("stopped", metadata: ["connections": .stringConvertible(server.activeConnections)])
        try? await group.shutdownGracefully()
        LogSink.standardOutput.flush()
    }
}

/// SIGTERM / SIGINT handling through Dispatch signal sources, installed at
/// creation; `wait()` returns the first signal's name, even if it arrived
/// before `wait()` was called.
final class ShutdownSignal: @unchecked Sendable {
    private let lock = NIOLockLite()
    private var received: String?
    private var waiter: CheckedContinuation<String, Never>?
    private var sources: [DispatchSourceSignal] = []

    init() {
        for (sig, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in self.deliver(name) }
            source.resume()
            sources.append(source)
        }
    }

    private func deliver(_ name: String) {
        let waiter = lock.withLock { () -> CheckedContinuation<String, Never>? in
            guard received == nil else { return nil }
            received = name
            defer { self.waiter = nil }
            return self.waiter
        }
        waiter?.resume(returning: name)
    }

    func wait() async -> String {
        await withCheckedContinuation { (continuation: CheckedContinuation<String, Never>) in
            let already = lock.withLock { () -> String? in
                if let received { return received }
                waiter = continuation
                return nil
            }
            if let already { continuation.resume(returning: already) }
        }
    }

    /// During the drain, a second signal exits at once.
    func exitOnNextSignal() {
        for source in sources {
            source.setEventHandler {
                LogSink.standardOutput.flush(timeout: 1)
                exit(0)
            }
        }
    }
}

/// Every proxied connection holds two sockets: raise the soft
/// `RLIMIT_NOFILE` to the hard limit and log both, so the limit in effect is
/// visible in the logs.
func raiseFileDescriptorLimit(logger: Logger) {
    var limits = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return }
    let before = limits.rlim_cur
    if limits.rlim_cur < limits.rlim_max {
        var raised = limits
        raised.rlim_cur = limits.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limits = raised }
    }
    logger.info("file_limit", metadata: [
        "soft_before": .stringConvertible(UInt64(before)), "soft": .stringConvertible(UInt64(limits.rlim_cur)),
        "hard": .stringConvertible(UInt64(limits.rlim_max)),
    ])
}

func printError(_ line: String) {
    var line = line
    line.append("\n")
    _ = line.withUTF8 { write(2, $0.baseAddress, $0.count) }
}
