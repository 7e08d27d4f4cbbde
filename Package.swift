// swift-tools-version:6.1
import PackageDescription

// Module layout follows docs/architecture.md: a sans-IO core (Wire, Dissect, Relay),
// sinks (Formats), and a thin NIO shell (Proxy) under the `wstap` executable.
let package = Package(
    name: "wstap",
    products: [
        .executable(name: "wstap", targets: ["wstap"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    ],
    targets: [
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPcap", providers: [.apt(["libpcap-dev"])]),
        .target(name: "WSTapWire", dependencies: ["CZlib"]),
        .target(name: "WSTapDissect", dependencies: ["WSTapWire"]),
        .target(name: "WSTapRelay", dependencies: ["WSTapDissect", "WSTapWire", "WSTapFilter", "WSTapRules", .product(name: "NIOCore", package: "swift-nio")]),
        .target(name: "WSTapCapture", dependencies: ["WSTapDissect", "WSTapWire", "CPcap", .product(name: "Crypto", package: "swift-crypto")]),
        // The filter grammar shared by --filter, rules, replay and the UI.
        .target(name: "WSTapFilter", dependencies: ["WSTapDissect", "WSTapWire"]),
        // Rules: WHEN => ACTION, parsed and evaluated to an outcome per message (sans-IO).
        .target(name: "WSTapRules", dependencies: ["WSTapFilter", "WSTapDissect", "WSTapWire"]),
        .target(name: "WSTapFormats", dependencies: ["WSTapDissect", "WSTapWire", "WSTapFilter", "WSTapRules"]),
        // Recordings for replay and mock, read alike from JSON Lines, HAR and captures.
        .target(name: "WSTapRecording", dependencies: ["WSTapCapture", "WSTapFormats", "WSTapDissect", "WSTapWire"]),
        // wstap replay's sans-IO core: a recorded client side against a server, and the diff.
        .target(name: "WSTapReplay", dependencies: ["WSTapRecording", "WSTapDissect", "WSTapWire", "WSTapFilter", "WSTapRules"]),
        // The control API's core: the record store, access checks, routes and the push stream's cursor.
        .target(name: "WSTapControl", dependencies: ["WSTapDissect", "WSTapFilter", "WSTapFormats", "WSTapRelay", "WSTapReplay", "WSTapRules", "WSTapWire"]),
        .target(
            name: "WSTapProxy",
            dependencies: [
                "WSTapRelay", "WSTapFormats", "WSTapRecording", "WSTapReplay", "WSTapControl",
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .executableTarget(
            name: "wstap",
            dependencies: [
                "WSTapProxy", "WSTapFormats", "WSTapCapture", "WSTapFilter", "WSTapRules", "WSTapRecording", "WSTapReplay", "WSTapControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Shared by tests and fuzz targets: the zlib oracle, a seeded generator, byte fixtures, the split
        // verifier and the relay playbook.
        .target(name: "WSTapTestSupport", dependencies: ["CZlib", "WSTapWire", "WSTapDissect", "WSTapFormats", "WSTapRelay",
                                                         .product(name: "NIOCore", package: "swift-nio")]),
        // One libFuzzer target per parser that sees untrusted bytes (docs/reliability.md, scripts/fuzz.sh).
        .target(
            name: "WSTapFuzzTargets",
            dependencies: ["WSTapWire", "WSTapDissect", "WSTapRelay", "WSTapCapture", "WSTapFormats", "WSTapFilter", "WSTapRules", "WSTapRecording", "WSTapReplay",
                           "WSTapControl",
                           "WSTapTestSupport", "CZlib", "CPcap",
                           .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Built with --sanitize=fuzzer it is a libFuzzer binary; built normally it replays inputs and makes seeds.
        .executableTarget(name: "wstap-fuzz", dependencies: ["WSTapFuzzTargets"]),
        // The sans-IO relay's own cost per message (no sockets): scripts/bench, docs/performance.md.
        .executableTarget(name: "wstap-relay-bench", dependencies: ["WSTapRelay", "WSTapRules", "WSTapFormats", "WSTapTestSupport",
                                                                   .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "WSTapWireTests", dependencies: ["WSTapWire", "WSTapTestSupport", "CZlib"]),
        .testTarget(name: "WSTapDissectTests", dependencies: ["WSTapDissect", "WSTapFormats", "WSTapWire", "WSTapTestSupport"]),
        .testTarget(name: "WSTapRelayTests", dependencies: ["WSTapRelay", "WSTapRules", "WSTapTestSupport"]),
        .testTarget(name: "WSTapProxyTests", dependencies: ["WSTapProxy"]),
        .testTarget(name: "WSTapCaptureTests", dependencies: ["WSTapCapture", "WSTapFormats"]),
        .testTarget(name: "WSTapRecordingTests", dependencies: ["WSTapRecording", "WSTapCapture", "WSTapFormats", "WSTapDissect"],
                    exclude: ["Fixtures"]),
        .testTarget(name: "WSTapReplayTests", dependencies: ["WSTapReplay", "WSTapRecording", "WSTapDissect", "WSTapWire", "WSTapFilter", "WSTapRules", "WSTapTestSupport"]),
        .testTarget(name: "WSTapFuzzTargetsTests", dependencies: ["WSTapFuzzTargets"]),
        .testTarget(name: "WSTapFilterTests", dependencies: ["WSTapFilter", "WSTapTestSupport"]),
        .testTarget(name: "WSTapControlTests", dependencies: ["WSTapControl", "WSTapRelay", "WSTapRules", "WSTapWire", "WSTapDissect", "WSTapFilter", "WSTapTestSupport"]),
        .testTarget(name: "WSTapRulesTests", dependencies: ["WSTapRules", "WSTapFilter", "WSTapTestSupport"]),
    ]
)
