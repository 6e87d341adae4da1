// swift-tools-version:6.0
import PackageDescription

/// The relay's own modules skip Swift's dynamic exclusivity checks in
/// release builds: in them the checks cost a tenth of the instructions per
/// relayed message (callgrind, `benchmarks/callgrind.py`: 39.5k → 35.3k in
/// scenario b). The static checks stay, and debug builds (every test) keep
/// the dynamic ones too, so an overlapping access is still caught where it
/// can be. Dependencies are built as they come.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

/// How the release binary is linked, for a smaller start-up footprint. A
/// static-stdlib executable is 140 MB; at every start the loader read all of
/// its 116k relative relocations (2.7 MB of RELA) and mapped a dynamic symbol
/// table of 32k entries (1 MB with its hash table), because Swift's
/// `static-stdlib-args.lnk` passes `-export-dynamic`: every symbol of the
/// package's own objects and dependencies was exported (the runtime's are
/// not, `--exclude-libs ALL`), though nothing looks them up.
/// - LLD with `-z pack-relative-relocs` stores the relocations as DT_RELR
///   (22 KB). This needs glibc ≥ 2.36 where the binary runs, as Debian 12 and
///   the image's runtime stage have (an older glibc refuses it at start,
///   naming `GLIBC_ABI_DT_RELR`), and `ld.lld`, which swift.org toolchains
///   and the official Swift images ship.
/// - `--no-export-dynamic` exports nothing the program does not need.
/// The binary stays position-independent (ASLR). RSS right after start-up on
/// `config/wsgate.yaml`: 29.5 → 25.0 MB (README, Performance). Debug builds,
/// which link Swift dynamically, are linked as before.
let lean: [LinkerSetting] = [
    .unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"],
                 .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "wsgate",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "wsgate", targets: ["wsgate"]),
        .executable(name: "wsgate-bench", targets: ["wsgate-bench"]),
        .library(name: "WSGate", targets: ["WSGate"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // JWT verification at the handshake (route `auth.jwt`): JWKS, RS/ES/EdDSA, HMAC.
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        // Benchmark tool only: exact latency percentiles (HDR histogram).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", .upToNextMinor(from: "0.2.0")),
    ],
    targets: [
        // libcurl (Debian: libcurl4-openssl-dev), for HTTP upstreams.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // Typed wrappers for libcurl's variadic setopt/getinfo calls.
        .target(name: "CCurlShim", dependencies: ["CCurl"]),
        // RFC 6455 on the wire: frames, masking, UTF-8, close codes. No I/O.
        .target(
            name: "WSGateProtocol",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            swiftSettings: hotPath
        ),
        // What the gateway decides, without doing it: close causes and the close
        // table, the config model and its strict loader, routing.
        .target(
            name: "WSGatePolicy",
            dependencies: [
                "WSGateProtocol",
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: hotPath
        ),
        // The gateway: server, sessions and their legs, upstreams, libcurl, admin, logs and metrics.
        .target(
            name: "WSGate",
            dependencies: [
                "WSGateProtocol",
                "WSGatePolicy",
                "CCurl",
                "CCurlShim",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            swiftSettings: hotPath
        ),
        .executableTarget(
            name: "wsgate",
            dependencies: [
                "WSGate",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            linkerSettings: lean
        ),
        // Benchmark tool (load generator + fast echo upstream); not shipped in the image.
        .executableTarget(
            name: "wsgate-bench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        .testTarget(
            name: "WSGateTests",
            dependencies: [
                "WSGate",
                "WSGatePolicy",
                "WSGateProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
