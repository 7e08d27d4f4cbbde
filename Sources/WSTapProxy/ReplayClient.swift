import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import WSTapDissect
import WSTapFormats
import WSTapRecording
import WSTapReplay

#if canImport(Glibc)
import Glibc
#endif

/// The NIO shell of `wstap replay`: one TCP (and TLS) connection to the target, the replay core
/// driven on its event loop, its records handed to the sink as they are made.
public enum ReplayClient {
    public struct TLS: Sendable {
        public var upstreamCAFile: String?
        public var insecure: Bool
        public var keyLog: OutputFile?
        public var serverName: String?

        public init(upstreamCAFile: String?, insecure: Bool, keyLog: OutputFile?, serverName: String?) {
            self.upstreamCAFile = upstreamCAFile
            self.insecure = insecure
            self.keyLog = keyLog
            self.serverName = serverName
        }
    }

    /// Runs the replay to its end and returns the session (its result, the replies for the diff).
    public static func run(_ recorded: Recording.Connection, target: ReplayTarget, options: ReplayOptions, tls: TLS?,
                           sink: any RecordSink, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws -> ReplaySession {
        var generator = SystemRandomNumberGenerator()
        let session = ReplaySession(recorded: recorded, target: target, options: options, random: { generator.next() })
        let loop = group.next()
        let done = loop.makePromise(of: Void.self)
        let driver = Driver(session: session, sink: sink, loop: loop, done: done)
        let context: NIOSSLContext? = try tls.map { tls in
            var config = TLSConfiguration.makeClientConfiguration()
            config.applicationProtocols = ["http/1.1"]
            if tls.insecure { config.certificateVerification = .none }
            if let file = tls.upstreamCAFile { config.additionalTrustRoots = [.file(file)] }
            if let keyLog = tls.keyLog { config.keyLogCallback = { line in keyLog.write(Array(line.readableBytesView)) } }
            return try NIOSSLContext(configuration: config)
        }
        let serverName = tls?.serverName
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connectTimeout(TimeAmount(options.stepTimeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(ReplayHandler(driver: driver, tls: context != nil))
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    driver.channel = channel
                    if context == nil { driver.handle(.connected(serverAddress: channel.remoteAddress?.wstapText ?? target.hostHeader, at: Timestamp.wallClock())) }
                case .failure(let error):
                    driver.handle(.connectFailed(reason: describe(error), at: Timestamp.wallClock()))
                }
            }
        try done.futureResult.wait()
        return session
    }

    /// Owns the session on its event loop: performs its actions, schedules its wake-ups.
    final class Driver: @unchecked Sendable {
        let session: ReplaySession
        let sink: any RecordSink
        let loop: EventLoop
        let done: EventLoopPromise<Void>
        var channel: Channel?
        private var finished = false

        init(session: ReplaySession, sink: any RecordSink, loop: EventLoop, done: EventLoopPromise<Void>) {
            self.session = session
            self.sink = sink
            self.loop = loop
            self.done = done
        }

        func handle(_ event: ReplaySession.Event) {
            loop.preconditionInEventLoop()
            guard !finished else { return }
            // The sends of one event go as one write (with --pace asap, every message at once).
            var outgoing: ByteBuffer?
            func flush() {
                if let buffer = outgoing { channel?.writeAndFlush(buffer, promise: nil) }
                outgoing = nil
            }
            defer { flush() }
            for action in session.handle(event) {
                switch action {
                case .emit(let records): sink.write(records)
                case .send(let bytes):
                    if outgoing == nil { outgoing = channel?.allocator.buffer(capacity: bytes.count) }
                    outgoing?.writeBytes(bytes)
                case .wake(let at):
                    let delay = max(0, at.nanoseconds - Timestamp.wallClock().nanoseconds)
                    loop.scheduleTask(in: .nanoseconds(delay)) { [self] in handle(.timer(at: max(at, Timestamp.wallClock()))) }
                case .close:
                    flush()
                    if let channel {
                        // What was written goes first; the close follows it on the same channel.
                        channel.writeAndFlush(ByteBuffer(), promise: nil)
                        channel.close(promise: nil)
                    }
                case .finished:
                    finished = true
                    done.succeed(())
                }
            }
        }
    }

    final class ReplayHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        private let driver: Driver
        /// Over TLS the connection is up only once the handshake is done; until then an error is a
        /// failure to connect (a certificate that does not verify, no TLS on that port).
        private var connected: Bool

        init(driver: Driver, tls: Bool) {
            self.driver = driver
            self.connected = !tls
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            driver.handle(.received(Array(buffer.readableBytesView), at: Timestamp.wallClock()))
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? ChannelEvent, event == .inputClosed {
                driver.handle(.inputEnded(at: Timestamp.wallClock()))
            } else if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
                connected = true
                driver.handle(.connected(serverAddress: context.channel.remoteAddress?.wstapText ?? "?", at: Timestamp.wallClock()))
            }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if connected {
                // Many TLS servers close without close_notify, and a reset ends the session too.
                driver.handle(.inputEnded(at: Timestamp.wallClock()))
            } else {
                driver.handle(.connectFailed(reason: describe(error), at: Timestamp.wallClock()))
            }
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            if connected {
                driver.handle(.inputEnded(at: Timestamp.wallClock()))
            } else {
                driver.handle(.connectFailed(reason: "the connection closed during the TLS handshake", at: Timestamp.wallClock()))
            }
            context.fireChannelInactive()
        }
    }
}

extension Timestamp {
    /// Now, by the wall clock (records carry wall-clock times).
    static func wallClock() -> Timestamp {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Timestamp(nanoseconds: Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec))
    }
}
