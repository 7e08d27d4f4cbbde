import Dispatch
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import WSTapDissect
import WSTapFormats
import WSTapRelay

#if canImport(Glibc)
import Glibc
#endif

public struct ProxyConfiguration: Sendable {
    public var listenHost: String
    public var listenPort: Int
    public var mode: RelaySession.Mode
    public var tlsSettings: TLSSettings = TLSSettings()
    public var limits = RelaySession.Limits()
    /// --rule/--rules and how they apply; nil relays every WebSocket byte as it comes.
    public var changes: ChangeSettings?
    /// Needed for interception, --listen-tls and wss:// upstreams.
    public var tlsContexts: TLSContexts?
    /// --pcap: cleartext of both legs.
    public var capture: DecryptedCapture?
    /// The exec hooks' processes, when rules may use them.
    public var hooks: ExecHooks?
    /// --ui: where the control API finds each live connection.
    public var registry: ConnectionRegistry?
    /// Where connection numbers come from: shared with replays started over the control API, so
    /// a replayed session is a connection of its own in the records.
    public var connectionIDs = ConnectionIDs()
    public var dissector: StreamDissector.Configuration
    public var sink: any RecordSink
    /// One-line notices about the proxy itself (not about connections): stderr by default.
    public var notice: @Sendable (String) -> Void = { OutputFile.standardError.write(Array(($0 + "\n").utf8)) }

    public init(listenHost: String, listenPort: Int, mode: RelaySession.Mode, dissector: StreamDissector.Configuration, sink: any RecordSink) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.mode = mode
        self.dissector = dissector
        self.sink = sink
    }
}

/// Our own failures, each with a message that says how to fix the call.
public struct ProxyError: Error, CustomStringConvertible {
    public let description: String
}

/// The listening side of the proxy: accepts clients and gives each one a `RelayConnection`.
public final class ProxyServer: Sendable {
    private let channel: Channel
    public let localAddress: String

    private init(channel: Channel) {
        self.channel = channel
        self.localAddress = channel.localAddress?.wstapText ?? "?"
    }

    public static func start(_ configuration: ProxyConfiguration, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> ProxyServer {
        let ids = configuration.connectionIDs
        let listenContext = configuration.tlsSettings.clientTLS
            ? try configuration.tlsContexts?.listenContext(defaultHost: configuration.listenHost) : nil
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoff(notice: configuration.notice))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            .childChannelOption(.recvAllocator, value: RelayTuning.receiveAllocator)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let listenContext {
                        try channel.pipeline.syncOperations.addHandler(ClientHelloSniffer())
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: listenContext))
                    }
                    // Reverse mode knows from the start that the stream is the application's (after TLS).
                    // Forward mode may carry CONNECT and raw TLS first; its tap is added on interception.
                    if let capture = configuration.capture, case .reverse = configuration.mode {
                        try channel.pipeline.syncOperations.addHandler(capture.handler(mode: .server))
                    }
                    let handler = RelaySideHandler(clientSideMaking: { channel in
                        let id = ids.next()
                        if let hooks = configuration.hooks { channel.closeFuture.whenComplete { _ in hooks.forget(connection: id) } }
                        let session = RelaySession(
                            connection: id, mode: configuration.mode, tls: configuration.tlsSettings, limits: configuration.limits,
                            changes: configuration.changes, clientAddress: channel.remoteAddress?.wstapText ?? "?",
                            proxyAddress: channel.localAddress?.wstapText ?? "?",
                            configuration: configuration.dissector, clock: Timestamp.now)
                        let connection = RelayConnection(session: session, client: channel, sink: configuration.sink, tls: configuration.tlsContexts,
                                                         capture: configuration.capture, hooks: configuration.hooks)
                        if let registry = configuration.registry {
                            registry.add(id, connection, loop: channel.eventLoop)
                            channel.closeFuture.whenComplete { _ in registry.remove(id) }
                        }
                        return connection
                    })
                    try channel.pipeline.syncOperations.addHandler(handler)
                    channel.closeFuture.whenComplete { _ in ids.closed() }
                }
            }
        do {
            let channel = try await bootstrap.bind(host: configuration.listenHost, port: configuration.listenPort).get()
            return ProxyServer(channel: channel)
        } catch {
            throw listenError(error, listen: "\(configuration.listenHost):\(configuration.listenPort)")
        }
    }

    /// A bind that failed, said so that the user knows what to change.
    static func listenError(_ error: Error, listen: String, flag: String = "--listen") -> ProxyError {
        if let io = error as? IOError, io.errnoCode == EADDRINUSE {
            return ProxyError(description: "cannot listen on \(listen): the address is already in use. Stop the other program or choose another port with \(flag) HOST:PORT.")
        }
        if let io = error as? IOError, io.errnoCode == EACCES {
            return ProxyError(description: "cannot listen on \(listen): permission denied (ports below 1024 need root). Choose a port above 1024 with \(flag) HOST:PORT.")
        }
        return ProxyError(description: "cannot listen on \(listen): \(describe(error)). Check the address given to \(flag).")
    }

    /// Runs until the listening channel closes.
    public func wait() async throws { try await channel.closeFuture.get() }

    public func stop() async throws { try await channel.close() }
}

enum RelayTuning {
    /// Reads grow up to 256 KiB (NIO's default stops at 64 KiB): fewer reads and writes per megabyte,
    /// like socat's -b 262144. Each channel keeps its receive buffer between reads, so the first size
    /// is what every idle connection costs twice (client and upstream leg): 2 KiB, not 16, took an
    /// idle proxied WebSocket from about 40 KiB to about 13 KiB (docs/reliability.md). Bulk traffic
    /// grows it to 256 KiB within a few reads, and it adapts down again.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 2 * 1024, maximum: 256 * 1024)
}

/// Connection ids, and how many connections are open: when the last one closes, the heap is trimmed,
/// so memory a burst of connections took goes back to the system instead of staying with the
/// allocator's free lists for as long as wstap runs.
public final class ConnectionIDs: Sendable {
    private let counter = Atomic<UInt64>(0)
    private let open = Atomic<Int>(0)

    public init() {}

    /// A number for a connection that is not the proxy's own (a replay): counted, not tracked as open.
    public func nextUnlisted() -> UInt64 { counter.add(1, ordering: .relaxed).newValue }

    func next() -> UInt64 {
        open.add(1, ordering: .relaxed)
        return counter.add(1, ordering: .relaxed).newValue
    }

    func closed() {
        guard open.subtract(1, ordering: .relaxed).newValue == 0 else { return }
        DispatchQueue.global(qos: .utility).async { _ = Self.trimHeap?(0) }
    }

    /// glibc's malloc_trim (not in the Glibc module's headers), looked up once; nil elsewhere.
    private static let trimHeap: (@convention(c) (Int) -> Int32)? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    }()
}

extension Timestamp {
    /// Wall-clock time for live records; the sans-IO core receives it, never reads it.
    @Sendable public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(nanoseconds: Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec))
    }
}
