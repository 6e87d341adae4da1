// wsgate-bench: a closed-loop WebSocket load generator and a fast echo
// upstream, for benchmarking wsgate against direct connections and other
// proxies (driven by benchmarks/run.py). Not part of the gateway.
//
//   wsgate-bench load --url ws://127.0.0.1:8080/echo -c 50 -w 1 -s 1024 -m 200000
//       C connections, W messages of S bytes in flight each, until M messages;
//       prints one JSON line: msgs/s, p50/p99/p999 round trip (HDR histogram,
//       3 significant digits), the client's own CPU seconds, errors.
//   wsgate-bench idle --url ws://127.0.0.1:8080/echo -k 1000 [--parallel 200]
//       opens K upgraded connections (at most P connecting at once), prints
//       {"event":"idle_ready","open":N,"failed":F,...}, holds them until stdin
//       closes; each line on stdin is answered with an idle_status line.
//   wsgate-bench echo-server --port 9001     (WebSocket echo and HTTP echo, keep-alive)

import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

func usage() -> Never {
    print("""
        usage:
          wsgate-bench load --url URL [-c CONNS] [-w IN_FLIGHT] [-s BYTES] [-m MESSAGES] [--text] [--timeout SECONDS]
          wsgate-bench idle --url URL -k CONNS [--parallel 200]
          wsgate-bench echo-server [--host 127.0.0.1] [--port 0]
        """)
    exit(2)
}

let allArguments = Array(CommandLine.arguments.dropFirst())
guard let mode = allArguments.first else { usage() }
let args = Array(allArguments.dropFirst())

func option(_ names: String..., default value: String? = nil) -> String? {
    for (i, a) in args.enumerated() where names.contains(a) && i + 1 < args.count { return args[i + 1] }
    return value
}

// Idle mode holds thousands of sockets, the echo server as many again.
let fileLimit = raiseFileLimit()

let group = MultiThreadedEventLoopGroup(numberOfThreads: Int(option("--threads") ?? "") ?? System.coreCount)

switch mode {
case "load":
    guard let url = option("--url") else { usage() }
    let spec = LoadSpec(
        url: url,
        connections: Int(option("-c", "--connections") ?? "1")!,
        inFlight: Int(option("-w", "--in-flight") ?? "1")!,
        size: Int(option("-s", "--size") ?? "64")!,
        messages: Int(option("-m", "--messages") ?? "10000")!,
        text: args.contains("--text"),
        timeoutSeconds: Int64(option("--timeout") ?? "600")!)
    let result = try LoadRunner.run(spec, group: group)
    writeLine(result.json)
    if result.errors > 0 { exit(1) }
case "idle":
    guard let url = option("--url"), let k = Int(option("-k") ?? "") else { usage() }
    try IdleRunner.run(url: url, count: k, parallel: Int(option("--parallel") ?? "200")!, fileLimit: fileLimit, group: group)
case "echo-server":
    let port = try EchoServer.start(host: option("--host") ?? "127.0.0.1", port: Int(option("--port") ?? "0")!, group: group)
    writeLine(#"{"event":"listening","port":\#(port),"nofile":\#(fileLimit)}"#)
    while true { sleep(3600) }
default:
    usage()
}

/// Unbuffered line output, so a driver script sees lines immediately.
func writeLine(_ line: String) {
    var line = line
    line.append("\n")
    _ = line.withUTF8 { write(1, $0.baseAddress, $0.count) }
}
