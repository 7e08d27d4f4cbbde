import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import WSTapControl

/// The control server's socket side (`--ui`): HTTP/1.1 on its own port, never relayed or recorded.
/// Every request goes to `ControlAPI`; this file only reads requests, writes responses and feeds the
/// push stream as fast as each reader takes it.
public final class ControlServer: Sendable {
    private let channel: Channel
    public let localAddress: String
    public let port: Int
    public let api: ControlAPI

    private init(channel: Channel, api: ControlAPI) {
        self.channel = channel
        self.api = api
        localAddress = channel.localAddress?.wstapText ?? "?"
        port = channel.localAddress?.port ?? 0
    }

    /// The largest request body taken (a message to send is at most this big).
    public static let maximumBody = 16 << 20

    /// Binds `host:port` and serves `api(port)` there (the access check needs the bound port, which
    /// is known only after binding when port 0 asks for a free one).
    public static func start(host: String, port: Int, store: RecordStore, token: String, steering: (any ConnectionSteering)? = nil,
                             rules: RuleControl? = nil, replays: (any ReplayRunning)? = nil, source: String? = nil, version: String = "dev",
                             group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> ControlServer {
        let apiBox = Mutex<ControlAPI?>(nil)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 64 * 1024, high: 512 * 1024))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let api = apiBox.withLock({ $0 }) else { throw ChannelError.ioOnClosedChannel }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(ControlHTTPHandler(api: api))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            throw ProxyServer.listenError(error, listen: "\(host):\(port)", flag: "--ui")
        }
        let api = ControlAPI(store: store, access: ControlAccess(token: token, listenHost: host, port: channel.localAddress?.port ?? port),
                             steering: steering, rules: rules, replays: replays, source: source, version: version)
        apiBox.withLock { $0 = api }
        return ControlServer(channel: channel, api: api)
    }

    /// The address to open, token included (it is traded for a cookie at once).
    public var url: String { "http://\(localAddress)/?token=\(api.access.token)" }

    public func stop() async throws { try await channel.close() }

    /// Returns when the server's socket is closed.
    public func wait() async throws { try await channel.closeFuture.get() }
}

/// One control connection: requests in order (NIO's pipelining handler queues the next until this
/// one's response has ended), or once a push stream starts, only that stream.
final class ControlHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let api: ControlAPI
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    private var stream: PushStream?

    init(api: ControlAPI) { self.api = api }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            tooLarge = false
        case .body(var chunk):
            if body.count + chunk.readableBytes > ControlServer.maximumBody {
                tooLarge = true
                body = []
            } else if !tooLarge {
                body += chunk.readBytes(length: chunk.readableBytes) ?? []
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if tooLarge {
                write(.error(413, "the request body is larger than \(ControlServer.maximumBody >> 20) MiB"), for: head, context: context)
                return
            }
            var headers: [String: String] = [:]
            for (name, value) in head.headers { headers[name.lowercased()] = value }
            let request = ControlRequest(method: head.method.rawValue, target: head.uri, headers: headers, body: body)
            body = []
            write(api.respond(to: request), for: head, context: context)
        }
    }

    private func write(_ response: ControlResponse, for request: HTTPRequestHead, context: ChannelHandlerContext) {
        switch response {
        case .complete(let status, let contentType, let body, let extra):
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: String(body.count))
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "X-Content-Type-Options", value: "nosniff")
            for (name, value) in extra { headers.add(name: name, value: value) }
            let keepAlive = request.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            let head = HTTPResponseHead(version: request.version, status: HTTPResponseStatus(statusCode: status), headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            if request.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil) }
            let done = context.writeAndFlushPromise(wrapOutboundOut(.end(nil)))
            if !keepAlive { done.whenComplete { [channel = context.channel] _ in channel.close(promise: nil) } }
        case .eventStream(let cursor):
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/event-stream")
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "X-Accel-Buffering", value: "no")
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers))), promise: nil)
            let stream = PushStream(cursor: cursor, store: api.store, context: context, handler: self)
            self.stream = stream
            stream.start()
        case .later(let run):
            // A live connection answers from its own loop; the response is written back on this one.
            // NIO's pipelining handler keeps the next request until this response has ended.
            let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
            let loop = context.eventLoop
            run { response in
                loop.execute {
                    let (handler, context) = bound.value
                    guard context.channel.isActive else { return }
                    // A later answer is never another wait; if it were, the client still gets an answer.
                    if case .later = response {
                        handler.write(.error(500, "the control API answered with another wait"), for: request, context: context)
                    } else {
                        handler.write(response, for: request, context: context)
                    }
                }
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { stream?.pull() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stream?.stop()
        stream = nil
        context.fireChannelInactive()
    }

    fileprivate func writeBody(_ bytes: [UInt8], context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: bytes)))), promise: nil)
    }
}

private extension ChannelHandlerContext {
    func writeAndFlushPromise(_ data: NIOAny) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        writeAndFlush(data, promise: promise)
        return promise.futureResult
    }
}

/// One reader of `GET /api/events`. The store tells it when records arrive (on the appending
/// thread, which only schedules a pull here); a pull writes what the cursor gives while the socket
/// takes it. A reader that stops reading fills its socket, the channel turns unwritable, pulls stop,
/// and the relay goes on unaware; when it reads again the cursor decides whether a gap is due.
final class PushStream {
    private var cursor: EventStreamCursor
    private let store: RecordStore
    private let context: ChannelHandlerContext
    private unowned let handler: ControlHTTPHandler
    private var listener: UInt64?
    private var keepAlive: RepeatedTask?
    private let scheduled = PullFlag()

    /// A comment line this often, so proxies and the reader know the stream is alive.
    static let keepAliveInterval = TimeAmount.seconds(15)

    init(cursor: EventStreamCursor, store: RecordStore, context: ChannelHandlerContext, handler: ControlHTTPHandler) {
        self.cursor = cursor
        self.store = store
        self.context = context
        self.handler = handler
    }

    func start() {
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let scheduled = self.scheduled
        listener = store.addListener { _ in
            // Many appends between two pulls make one pull.
            guard scheduled.value.exchange(true, ordering: .acquiringAndReleasing) == false else { return }
            loop.execute {
                scheduled.value.store(false, ordering: .releasing)
                bound.value.pull()
            }
        }
        keepAlive = loop.scheduleRepeatedTask(initialDelay: Self.keepAliveInterval, delay: Self.keepAliveInterval) { _ in
            bound.value.handler.writeBody(Array(": keep-alive\n\n".utf8), context: bound.value.context)
        }
        // A comment at once: the reader knows the stream is open before any record comes.
        handler.writeBody(Array(": wstap events\n\n".utf8), context: context)
        pull()
    }

    func pull() {
        guard listener != nil else { return }
        while context.channel.isWritable {
            let (text, more) = cursor.next(from: store)
            if !text.isEmpty { handler.writeBody(text, context: context) }
            if !more { return }
        }
    }

    func stop() {
        if let listener { store.removeListener(listener) }
        listener = nil
        keepAlive?.cancel()
        keepAlive = nil
    }
}

/// Whether a pull is already on its way to the stream's loop.
final class PullFlag: Sendable {
    let value = Atomic<Bool>(false)
}
