import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import WSTapDissect
import WSTapFormats
import WSTapRecording
import WSTapRelay
import WSTapReplay

#if canImport(Glibc)
import Glibc
#endif

/// The NIO shell of `wstap mock`: a listening socket (TLS with wstap's CA if asked), one
/// `MockSession` per client on its channel's event loop, and for `--unmatched passthrough` a client
/// connection to the real server on the same loop.
public final class MockServer: Sendable {
    public struct Configuration: Sendable {
        public var listenHost: String
        public var listenPort: Int
        public var script: MockScript
        public var options: MockOptions
        public var sink: any RecordSink
        /// `--listen-tls`: server certificates minted by this CA; and the client context of passthrough.
        public var tls: TLSContexts?
        public var listenTLS = false
        /// Called with each client's summary line when its session ends.
        public var summary: @Sendable (MockSummary, UInt64, String) -> Void = { _, _, _ in }
        /// Said as it happens (a passthrough server that failed).
        public var notice: @Sendable (String) -> Void = { OutputFile.standardError.write(Array(($0 + "\n").utf8)) }

        public init(listenHost: String, listenPort: Int, script: MockScript, options: MockOptions, sink: any RecordSink) {
            self.listenHost = listenHost
            self.listenPort = listenPort
            self.script = script
            self.options = options
            self.sink = sink
        }
    }

    public let localAddress: String
    private let channel: Channel

    private init(channel: Channel) {
        self.channel = channel
        localAddress = channel.localAddress?.wstapText ?? "?"
    }

    public static func start(_ configuration: Configuration, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> MockServer {
        let ids = Atomic<UInt64>(0)
        let listenContext = configuration.listenTLS ? try configuration.tls?.listenContext(defaultHost: configuration.listenHost) : nil
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoff(notice: { OutputFile.standardError.write(Array(($0 + "\n").utf8)) }))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: RelayTuning.receiveAllocator)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let listenContext { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: listenContext)) }
                    let id = ids.add(1, ordering: .relaxed).newValue
                    let driver = MockDriver(id: id, channel: channel, configuration: configuration, secure: listenContext != nil)
                    try channel.pipeline.syncOperations.addHandler(MockClientHandler(driver: driver))
                }
            }
        do {
            return MockServer(channel: try await bootstrap.bind(host: configuration.listenHost, port: configuration.listenPort).get())
        } catch {
            throw ProxyServer.listenError(error, listen: "\(configuration.listenHost):\(configuration.listenPort)")
        }
    }

    public func wait() async throws { try await channel.closeFuture.get() }
}

/// Owns one client's session on its event loop: performs its actions, schedules its wake-ups,
/// connects the passthrough leg.
final class MockDriver: @unchecked Sendable {
    private let id: UInt64
    private let channel: Channel
    private let configuration: MockServer.Configuration
    private let session: MockSession
    private var upstream: Channel?

    init(id: UInt64, channel: Channel, configuration: MockServer.Configuration, secure: Bool) {
        self.id = id
        self.channel = channel
        self.configuration = configuration
        var generator = SystemRandomNumberGenerator()
        session = MockSession(script: configuration.script, options: configuration.options, connectionID: id,
                              clientAddress: channel.remoteAddress?.wstapText ?? "?", listenAddress: channel.localAddress?.wstapText ?? "?",
                              secure: secure, at: Timestamp.now(), random: { generator.next() })
    }

    func start() { perform(session.start()) }

    func handle(_ event: MockSession.Event) {
        channel.eventLoop.preconditionInEventLoop()
        perform(session.handle(event))
    }

    private func perform(_ actions: [MockSession.Action]) {
        // The sends of one event (a reply of several messages) go as one write.
        var outgoing: ByteBuffer?
        func flush() {
            if let buffer = outgoing { channel.writeAndFlush(buffer, promise: nil) }
            outgoing = nil
        }
        defer { flush() }
        for action in actions {
            switch action {
            case .emit(let records): configuration.sink.write(records)
            case .send(let bytes):
                if outgoing == nil { outgoing = channel.allocator.buffer(capacity: bytes.count) }
                outgoing!.writeBytes(bytes)
            case .wake(let at):
                let delay = max(0, at.nanoseconds - Timestamp.now().nanoseconds)
                channel.eventLoop.scheduleTask(in: .nanoseconds(delay)) { [self] in handle(.timer(at: max(at, Timestamp.now()))) }
            case .close:
                flush()
                channel.writeAndFlush(ByteBuffer(), promise: nil)
                channel.close(promise: nil)
            case .connectUpstream(let target): connect(target)
            case .sendUpstream(let bytes): upstream?.writeAndFlush(ByteBuffer(bytes: bytes), promise: nil)
            case .closeUpstream:
                upstream?.close(promise: nil)
                closeUpstreamWhenConnected = true
            case .notice(let text): configuration.notice("wstap mock: conn \(id): \(text)")
            case .finished:
                configuration.summary(session.summary, id, channel.remoteAddress?.wstapText ?? "?")
            }
        }
    }

    private var closeUpstreamWhenConnected = false

    private func connect(_ target: ReplayTarget) {
        let context: NIOSSLContext? = target.secure ? configuration.tls?.upstream : nil
        let serverName = UpstreamTLS.forHost(target.host).serverName
        ClientBootstrap(group: channel.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connectTimeout(TimeAmount(configuration.options.timeout))
            .channelInitializer { [self] leg in
                leg.eventLoop.makeCompletedFuture {
                    if let context { try leg.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: serverName)) }
                    try leg.pipeline.syncOperations.addHandler(MockUpstreamHandler(driver: self, tls: context != nil))
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { [self] result in
                switch result {
                case .success(let leg):
                    upstream = leg
                    if closeUpstreamWhenConnected { leg.close(promise: nil) }
                    if context == nil { handle(.upstreamConnected(address: leg.remoteAddress?.wstapText ?? target.hostHeader, at: Timestamp.now())) }
                case .failure(let error):
                    handle(.upstreamFailed(reason: describe(error), at: Timestamp.now()))
                }
            }
    }
}

final class MockClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let driver: MockDriver

    init(driver: MockDriver) { self.driver = driver }

    func channelActive(context: ChannelHandlerContext) {
        driver.start()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        driver.handle(.received(Array(unwrapInboundIn(data).readableBytesView), at: Timestamp.now()))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { driver.handle(.inputEnded(at: Timestamp.now())) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset, or a TLS handshake that failed: the session ends like a closed connection.
        driver.handle(.inputEnded(at: Timestamp.now()))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        driver.handle(.inputEnded(at: Timestamp.now()))
        context.fireChannelInactive()
    }
}

final class MockUpstreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let driver: MockDriver
    private var connected: Bool

    init(driver: MockDriver, tls: Bool) {
        self.driver = driver
        connected = !tls
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        driver.handle(.upstreamReceived(Array(unwrapInboundIn(data).readableBytesView), at: Timestamp.now()))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            driver.handle(.upstreamEnded(at: Timestamp.now()))
        } else if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            connected = true
            driver.handle(.upstreamConnected(address: context.channel.remoteAddress?.wstapText ?? "?", at: Timestamp.now()))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        driver.handle(connected ? .upstreamEnded(at: Timestamp.now()) : .upstreamFailed(reason: describe(error), at: Timestamp.now()))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        driver.handle(connected ? .upstreamEnded(at: Timestamp.now()) : .upstreamFailed(reason: "the connection closed during the TLS handshake", at: Timestamp.now()))
        context.fireChannelInactive()
    }
}
