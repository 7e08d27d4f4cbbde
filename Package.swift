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
    ],
    targets: [
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        .target(
            name: "WSTapWire",
            dependencies: ["CZlib", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(name: "WSTapDissect", dependencies: ["WSTapWire"]),
        .target(name: "WSTapRelay", dependencies: ["WSTapDissect"]),
        .target(name: "WSTapFormats", dependencies: ["WSTapDissect"]),
        .target(
            name: "WSTapProxy",
            dependencies: [
                "WSTapRelay", "WSTapFormats",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "wstap",
            dependencies: [
                "WSTapProxy", "WSTapFormats",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "WSTapWireTests", dependencies: ["WSTapWire"]),
        .testTarget(name: "WSTapDissectTests", dependencies: ["WSTapDissect", "WSTapFormats"]),
        .testTarget(name: "WSTapRelayTests", dependencies: ["WSTapRelay"]),
    ]
)
