import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import WSTapDissect
import WSTapFormats
import WSTapRelay

/// Executes a `RelaySession`'s actions for one proxied connection and turns channel events into session
/// events. Everything here runs on the client channel's event loop; the upstream channel is created on
/// the same loop so no locking is needed.
final class RelayConnection {
    private let session: RelaySession
    private let sink: any RecordSink
    private let tls: TLSContexts?
    private let capture: DecryptedCapture?
    private let hooks: ExecHooks?
    private let client: Channel
    private var upstream: Channel?
    private var lastWrite: [RelaySession.Side: EventLoopFuture<Void>] = [:]
    /// A read the side's handler held back because the other side cannot take more bytes.
    private var heldRead: Set<RelaySession.Side> = []
    private var closing: Set<RelaySession.Side> = []
    /// Sides whose peer has sent its FIN (or reset): nothing more will arrive from them.
    private var inputEnded: Set<RelaySession.Side> = []
    /// The client while wstap drains it before the full close (see `lingeringClose`).
    private var drainingClient = false
    private var timers: [RelaySession.Timer: Scheduled<Void>] = [:]

    init(session: RelaySession, client: Channel, sink: any RecordSink, tls: TLSContexts?, capture: DecryptedCapture?, hooks: ExecHooks?) {
        self.session = session
        self.client = client
        self.sink = sink
        self.tls = tls
        self.capture = capture
        self.hooks = hooks
    }

    func handle(_ event: RelaySession.Event) {
        perform(session.handle(event))
    }

    /// A control API command, carried out between this connection's events.
    func steer(_ command: SteerCommand) -> SteerAnswer {
        let (answer, actions) = session.steer(command)
        perform(actions)
        return answer
    }

    private func perform(_ actions: [RelaySession.Action]) {
        for action in actions {
            switch action {
            case .emit(let records):
                sink.write(records)
            case .send(let side, let buffer):
                guard let channel = channel(side), !closing.contains(side) else { continue }
                lastWrite[side] = channel.writeAndFlush(buffer)
            case .shutdownOutput(let side):
                guard let channel = channel(side) else { continue }
                afterWrites(side) { channel.close(mode: .output, promise: nil) }
            case .close(let side):
                guard let channel = channel(side), closing.insert(side).inserted else { continue }
                if side == .client && !inputEnded.contains(.client) {
                    afterWrites(side) { [bound = NIOLoopBound(self, eventLoop: channel.eventLoop)] in bound.value.lingeringClose() }
                } else {
                    afterWrites(side) { channel.close(promise: nil) }
                }
            case .reset(let side):
                guard let channel = channel(side), closing.insert(side).inserted else { continue }
                // After what was written has gone out, as the peer's own reset came after its data.
                afterWrites(side) {
                    // SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    let provider = channel as? SocketOptionProvider
                    let lingered = provider?.setSoLinger(linger(l_onoff: 1, l_linger: 0)) ?? channel.eventLoop.makeSucceededVoidFuture()
                    lingered.whenComplete { _ in channel.close(promise: nil) }
                }
            case .connect(let host, let port, let upstreamTLS):
                connect(host: host, port: port, upstreamTLS: upstreamTLS)
            case .startClientTLS(let certificateHost, let replay):
                startClientTLS(certificateHost: certificateHost, replay: replay)
            case .startTimer(let timer, let after):
                timers[timer]?.cancel()
                let bound = NIOLoopBound(self, eventLoop: client.eventLoop)
                timers[timer] = client.eventLoop.scheduleTask(in: TimeAmount(after)) {
                    bound.value.timers[timer] = nil
                    bound.value.handle(.timerFired(timer))
                }
            case .cancelTimer(let timer):
                timers.removeValue(forKey: timer)?.cancel()
            case .askHook(let request):
                // The verdict comes back on the hook's loop; the session hears it on this one, later.
                let loop = client.eventLoop
                let bound = NIOLoopBound(self, eventLoop: loop)
                let ticket = request.ticket
                guard let hooks else {
                    loop.execute { bound.value.handle(.hookAnswered(ticket: ticket, .failed("no hooks are configured"))) }
                    continue
                }
                hooks.ask(request, connection: session.connection) { answer in
                    loop.execute { bound.value.handle(.hookAnswered(ticket: ticket, answer)) }
                }
            case .forgetHook(let ticket):
                hooks?.forget(connection: session.connection, ticket: ticket)
            case .switchUpstream(let host, let port, let upstreamTLS):
                // The old upstream's close must not reach the session as the end of this connection.
                if let old = upstream {
                    (try? old.pipeline.syncOperations.handler(type: RelaySideHandler.self))?.detach()
                    afterWrites(.upstream) { old.close(promise: nil) }
                }
                upstream = nil
                lastWrite[.upstream] = nil
                heldRead.remove(.upstream)
                connect(host: host, port: port, upstreamTLS: upstreamTLS)
            }
        }
    }

    private func afterWrites(_ side: RelaySession.Side, _ body: @escaping @Sendable () -> Void) {
        if let pending = lastWrite[side] {
            pending.whenComplete { _ in body() }
        } else {
            body()
        }
    }

    private func channel(_ side: RelaySession.Side) -> Channel? { side == .client ? client : upstream }

    /// How long a closed client may go on sending before wstap stops draining it.
    static let lingerTime = TimeAmount.seconds(2)

    /// Closes the client while it may still be sending (a 408, 431 or 502 answered before its request
    /// ended). A plain close() with unread bytes in the receive buffer makes the kernel send a reset,
    /// and a reset makes the client's TCP discard the answer it has not read yet. So, as HTTP servers
    /// do: FIN first, then read and discard until the client's FIN or `lingerTime`, then close.
    private func lingeringClose() {
        guard client.isActive else { return }
        drainingClient = true
        let bound = NIOLoopBound(self, eventLoop: client.eventLoop)
        client.close(mode: .output).whenComplete { result in
            let connection = bound.value
            guard case .success = result else {
                connection.client.close(promise: nil)
                return
            }
            connection.client.eventLoop.scheduleTask(in: Self.lingerTime) { bound.value.client.close(promise: nil) }
            connection.heldRead.remove(.client)
            connection.client.read()
        }
    }

    /// Bytes from `side`'s channel; a draining client's are discarded.
    func received(_ buffer: ByteBuffer, from side: RelaySession.Side) {
        if side == .client && drainingClient { return }
        handle(side == .client ? .clientData(buffer) : .upstreamData(buffer))
    }

    /// `side` sent its FIN.
    func inputClosed(_ side: RelaySession.Side) {
        inputEnded.insert(side)
        if side == .client && drainingClient {
            client.close(promise: nil)
            return
        }
        handle(.inputClosed(side))
    }

    private func startClientTLS(certificateHost: String, replay: ByteBuffer) {
        do {
            guard let tls else { throw ProxyError(description: "no TLS configuration") }
            let handler = NIOSSLServerHandler(context: try tls.serverContext(for: certificateHost))
            try client.pipeline.syncOperations.addHandler(handler, position: .first)
            if let capture {
                // After TLS, so the capture holds the decrypted stream from its first byte.
                try client.pipeline.syncOperations.addHandler(capture.handler(mode: .server), position: .after(handler))
            }
            // The ClientHello was read before TLS was set up: feed it to the new handler first.
            client.pipeline.fireChannelRead(replay)
        } catch {
            handle(.failed(.client, reason: "cannot set up TLS for \(certificateHost): \(error)"))
        }
    }

    /// The TLS handshake on `side` finished: the client's plaintext starts, or the upstream is usable.
    func tlsHandshakeCompleted(_ side: RelaySession.Side) {
        if side == .client {
            handle(.clientTLSEstablished)
        } else if let upstream {
            handle(.upstreamConnected(serverAddress: upstream.remoteAddress?.wstapText ?? "?"))
            resumeReads(of: .client)
        }
    }

    private func connect(host: String, port: Int, upstreamTLS: UpstreamTLS?) {
        let loop = client.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let tlsContext = upstreamTLS == nil ? nil : tls?.upstream
        let capture = self.capture
        ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: RelayTuning.receiveAllocator)
            .channelOption(.writeBufferWaterMark, value: .init(low: 256 * 1024, high: 1024 * 1024))
            // A little past the session's own limit, so a silent upstream gets its 504 from the session.
            .connectTimeout(session.limits.upstreamTimeout.map { TimeAmount($0) + .seconds(1) } ?? .minutes(2))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        // SNI and name verification use serverName; nil for IP literals (SNI cannot carry them).
                        let handler = try NIOSSLClientHandler(context: tlsContext, serverHostname: upstreamTLS?.serverName)
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                    if let capture { try channel.pipeline.syncOperations.addHandler(capture.handler(mode: .client)) }
                    try channel.pipeline.syncOperations.addHandler(RelaySideHandler(side: .upstream, connection: bound.value))
                }
            }
            .connect(host: host, port: port)
            .whenComplete { result in
                let connection = bound.value
                switch result {
                case .success(let channel):
                    connection.upstream = channel
                    if connection.closing.contains(.client) || !connection.client.isActive {
                        channel.close(promise: nil)
                        return
                    }
                    // Over TLS the upstream is usable only after its handshake (tlsHandshakeCompleted).
                    guard tlsContext == nil else { return }
                    connection.handle(.upstreamConnected(serverAddress: channel.remoteAddress?.wstapText ?? "\(host):\(port)"))
                    // Reads from the client may have been held while connecting.
                    connection.resumeReads(of: .client)
                case .failure(let error):
                    connection.handle(.upstreamConnectFailed(reason: describe(error)))
                }
            }
    }

    // MARK: - Backpressure

    /// Whether the side's handler may read now: not while the other side cannot take more bytes.
    func mayRead(_ side: RelaySession.Side) -> Bool {
        if side == .client && drainingClient { return true }
        if side == .client {
            guard let upstream else { return session.wantsClientData }
            return upstream.isWritable && session.wantsClientData
        }
        return client.isWritable
    }

    func holdRead(_ side: RelaySession.Side) { heldRead.insert(side) }

    /// The other side of `side` became writable again: let `side` read.
    func resumeReads(of side: RelaySession.Side) {
        guard heldRead.contains(side), mayRead(side), let channel = channel(side) else { return }
        heldRead.remove(side)
        channel.read()
    }
}

/// One handler per side; it forwards channel events to the shared connection and holds reads back
/// when the other side is not writable.
final class RelaySideHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let side: RelaySession.Side
    private var connection: RelayConnection?
    private let makeConnection: ((Channel) -> RelayConnection)?

    init(side: RelaySession.Side, connection: RelayConnection) {
        self.side = side
        self.connection = connection
        self.makeConnection = nil
    }

    /// For the client side: the connection is made once the channel is active.
    init(clientSideMaking make: @escaping (Channel) -> RelayConnection) {
        self.side = .client
        self.makeConnection = make
    }

    /// Stops forwarding this channel's events (an upstream replaced by another one).
    func detach() { connection = nil }

    func channelActive(context: ChannelHandlerContext) {
        if connection == nil, let makeConnection {
            let made = makeConnection(context.channel)
            connection = made
            made.handle(.clientConnected)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection?.received(unwrapInboundIn(data), from: side)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            connection?.inputClosed(side)
        } else if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            connection?.tlsHandshakeCompleted(side)
        } else if let hello = event as? ClientHelloSeen {
            connection?.handle(.clientTLSHello(serverName: hello.serverName))
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Many TLS peers close without close_notify; that is an ordinary end of input.
        if let tlsError = error as? NIOSSLError, case .uncleanShutdown = tlsError {
            connection?.inputClosed(side)
            return
        }
        if let io = error as? IOError, io.errnoCode == ECONNRESET {
            connection?.handle(.reset(side))
            return
        }
        connection?.handle(.failed(side, reason: describe(error)))
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection?.handle(.closed(side))
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { connection?.resumeReads(of: side == .client ? .upstream : .client) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        guard let connection, !connection.mayRead(side) else {
            context.read()
            return
        }
        connection.holdRead(side)
    }
}

/// One short reason for an error, as users read it in records and 502 bodies.
func describe(_ error: Error) -> String {
    if let io = error as? IOError {
        switch io.errnoCode {
        case ECONNREFUSED: return "connection refused"
        case ECONNRESET: return "connection reset"
        case EPIPE: return "broken pipe"
        case ETIMEDOUT: return "timed out"
        case EHOSTUNREACH: return "host unreachable"
        case ENETUNREACH: return "network unreachable"
        case EMFILE, ENFILE: return "too many open files"
        default: return "\(io)"
        }
    }
    if let connect = error as? NIOConnectionError {
        if let first = connect.connectionErrors.first { return describe(first.error) }
        if connect.dnsAError != nil || connect.dnsAAAAError != nil { return "cannot resolve host \(connect.host)" }
        return "cannot connect to \(connect.host):\(connect.port)"
    }
    if error is ChannelError, case ChannelError.connectTimeout = error { return "connect timed out" }
    if let tls = error as? NIOSSLError, case .handshakeFailed(let reason) = tls {
        let code = boringSSLReason(reason)
        if code == "CERTIFICATE_VERIFY_FAILED" {
            return "TLS handshake failed: the upstream certificate is not trusted for this name (CERTIFICATE_VERIFY_FAILED); trust its CA with --upstream-ca FILE, or use --insecure"
        }
        return "TLS handshake failed: \(code)"
    }
    if let tls = error as? BoringSSLError { return "TLS error: \(boringSSLReason(tls))" }
    if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
        // Without SNI (IP-literal upstreams) NIOSSL matches the peer's IP address against the IP SANs.
        return "TLS: the upstream certificate is not valid for the name or IP address wstap connected to; trust it with --insecure or connect by a name it covers"
    }
    return "\(error)"
}

/// The reason name of a BoringSSL error ("CERTIFICATE_VERIFY_FAILED"), without codes and source paths.
func boringSSLReason(_ error: BoringSSLError) -> String {
    let text = "\(error)"
    guard let start = text.range(of: "OPENSSL_internal:") else { return text }
    let rest = text[start.upperBound...]
    return String(rest.prefix { $0 != " " && $0 != "]" })
}

extension SocketAddress {
    /// "ip:port", IPv6 in brackets.
    var wstapText: String {
        guard let ip = ipAddress, let port else { return description }
        if case .v6 = self { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
