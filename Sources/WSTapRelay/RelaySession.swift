import NIOCore
import WSTapDissect
import WSTapWire

/// The sans-IO core of one proxied connection: `handle(event) -> [action]`.
///
/// It decides where to connect, rewrites the request head where the mode requires it, forwards every
/// other byte untouched, feeds both directions to the `StreamDissector`, and decides how the connection
/// ends. The NIO shell performs the actions and reports what happened as events; it makes no decisions.
/// After the 101 it hands both directions to a `WebSocketRelay`, where rules (if any) change messages.
public final class RelaySession {
    public enum Mode: Sendable {
        /// Every client connection goes to this upstream.
        case reverse(UpstreamURL)
        /// The client uses wstap as its HTTP proxy: absolute-form requests or CONNECT.
        case forward
    }

    public enum Side: Sendable, Equatable {
        case client, upstream
        var name: String { self == .client ? "client" : "server" }
    }

    /// The two things a peer can stall, each bounded by a limit (nil: wait for ever).
    public enum Timer: Sendable, Hashable {
        /// From accept until the first request head is complete (CONNECT and a client TLS handshake
        /// included): slow or silent clients.
        case requestHead
        /// From the connect until the upstream is usable (TCP, TLS), and while it owes the answer to a
        /// WebSocket upgrade: upstreams that do not accept or never answer the handshake.
        case upstreamHandshake
        /// The WebSocket relay's next deadline: a delayed or held message is due.
        case relayWake
    }

    /// Bounds on what a peer may make wstap hold.
    public struct Limits: Sendable {
        public var requestHeadTimeout: Duration? = .seconds(30)
        public var upstreamTimeout: Duration? = .seconds(30)
        /// Largest request head accepted (431 beyond); responses past it are relayed undissected.
        public var maxHeadBytes = HTTPHeadParser.defaultLimit
        public init() {}
    }

    public enum Event {
        /// The client's connection was accepted: the request-head timer starts.
        case clientConnected
        case clientData(ByteBuffer)
        /// The shell finished the TLS handshake it was asked to do with the client.
        case clientTLSEstablished
        /// --listen-tls: the client's ClientHello asked for this server name (nil: it sent no SNI).
        case clientTLSHello(serverName: String?)
        case upstreamConnected(serverAddress: String)
        case upstreamConnectFailed(reason: String)
        case upstreamData(ByteBuffer)
        /// The side sent FIN: no more data from it.
        case inputClosed(Side)
        /// The side reset its connection (RST).
        case reset(Side)
        /// The side's connection failed for another reason.
        case failed(Side, reason: String)
        /// The side's channel is gone.
        case closed(Side)
        /// A timer the session started has run out.
        case timerFired(Timer)
        /// The exec hook's answer to an `askHook`.
        case hookAnswered(ticket: UInt64, HookAnswer)
    }

    public enum Action {
        /// Open the upstream connection, over TLS when `tls` is set; report `upstreamConnected` once
        /// it is usable (after the TLS handshake).
        case connect(host: String, port: Int, tls: UpstreamTLS?)
        /// Terminate TLS on the client connection with a certificate for `certificateHost`, feeding it
        /// `replay` (the ClientHello bytes already read) first.
        case startClientTLS(certificateHost: String, replay: ByteBuffer)
        /// Forward-mode plain HTTP: the next request is for another host. Drop the current upstream
        /// (its later events must be ignored) and connect to this one; report `upstreamConnected`.
        case switchUpstream(host: String, port: Int, tls: UpstreamTLS?)
        case send(Side, ByteBuffer)
        /// Half-close: send FIN to that side after what was written.
        case shutdownOutput(Side)
        /// Close that side once what was written is flushed.
        case close(Side)
        /// Close that side with a reset (RST) once what was written is flushed: a transparent relay
        /// passes a peer's reset on instead of turning it into a FIN.
        case reset(Side)
        case emit([TapRecord])
        /// Report `timerFired(timer)` after `after`, replacing the timer if it runs already.
        case startTimer(Timer, after: Duration)
        case cancelTimer(Timer)
        /// Write the message to its exec hook; report the verdict as `hookAnswered` with the ticket.
        case askHook(HookRequest)
        /// A hook request ran out of time (the message went on): forget it; a late verdict is dropped.
        case forgetHook(ticket: UInt64)
    }

    public let connection: UInt64
    public let mode: Mode
    public let tls: TLSSettings
    private let clientAddress: String
    private let proxyAddress: String
    private let configuration: StreamDissector.Configuration
    public let limits: Limits
    /// Rules and how they apply; nil relays every WebSocket byte as it comes.
    private let changes: ChangeSettings?
    private let clock: () -> Timestamp

    /// Where the connection stands. Each phase carries what only it needs; what outlives a phase is
    /// below (the route, the follower and dissector, the connection's history).
    private enum Phase {
        /// Waiting for a complete request head: the first one, or the first inside an intercepted tunnel.
        case readingHead(HeadReading)
        /// CONNECT answered; the first tunnel bytes (kept here until they decide) tell interception
        /// from a plain tunnel.
        case tunnelOpen(probe: [UInt8])
        /// The shell is terminating the client's TLS inside a CONNECT tunnel.
        case clientTLSHandshake
        /// Waiting for the upstream (TCP, then TLS); the client's bytes wait here, in order.
        case connecting(Waiting)
        /// HTTP through the follower, or a CONNECT tunnel as bytes, until the dissector sees WebSocket start.
        case relaying
        /// After the 101: every byte goes through the WebSocket relay.
        case webSocket(WebSocketRelay)
        case done
    }

    private struct HeadReading {
        var parser: HTTPHeadParser
        /// --listen-tls: the client's TLS handshake has not completed (no HTTP answer can reach it yet).
        var clientTLSPending: Bool
    }

    /// Client bytes held until the upstream is connected (bounded: the shell stops reading past 1 MiB).
    private enum Waiting {
        /// For the follower: a head already rewritten for a host switch, then bytes not yet followed (the
        /// first time: the whole first request).
        case http(head: ByteBuffer?, rest: ByteBuffer)
        /// A raw tunnel's bytes as they came.
        case tunnel([ByteBuffer])

        var byteCount: Int {
            switch self {
            case .http(_, let rest): rest.readableBytes
            case .tunnel(let buffers): buffers.reduce(0) { $0 + $1.readableBytes }
            }
        }

        mutating func append(_ buffer: ByteBuffer) {
            switch self {
            case .http(let head, var rest):
                self = .tunnel([])  // let go of `rest` first, so writing to it does not copy it
                var copy = buffer
                rest.writeBuffer(&copy)
                self = .http(head: head, rest: rest)
            case .tunnel(var buffers):
                self = .tunnel([])
                buffers.append(buffer)
                self = .tunnel(buffers)
            }
        }
    }

    private var phase: Phase

    /// What the first request head (or CONNECT) settled about where the connection goes.
    private struct Route {
        /// The client sent CONNECT.
        var tunnel: Tunnel?
        var scheme = "ws"
        /// How the upstream is named in messages: "ws://host:port/path", "host:port".
        var upstreamLabel = ""
        var upstreamTLS: UpstreamTLS?
        /// The server name the client's TLS asked for (--listen-tls or an intercepted tunnel).
        var clientTLSServerName: String?
        /// A CONNECT tunnel whose bytes are relayed as they are (not intercepted TLS).
        var isRawTunnel: Bool { tunnel.map { !$0.isIntercepted } ?? false }
    }

    private struct Tunnel {
        /// The CONNECT target: where the tunnel goes, and the authority of URLs recorded inside it.
        let host: String
        let port: Int
        /// CONNECT was answered with 200 before the upstream was reached (interception needs that: the
        /// client sends its ClientHello only after the 200).
        var answeredEarly = false
        var handling = Handling.undecided

        enum Handling {
            case undecided
            /// Relayed as bytes; `checked` once its first client bytes were looked at (cleartext is
            /// dissected, TLS is not).
            case raw(checked: Bool)
            /// The client's TLS was terminated: its requests go to host:port over TLS, with this SNI.
            case intercepted(sni: String?)
        }

        var isIntercepted: Bool { if case .intercepted = handling { true } else { false } }
    }

    private var route = Route()
    /// How the connection's HTTP is relayed: every mode but a raw CONNECT tunnel. Nil until the first
    /// request head was read, and for raw tunnels; it outlives `connecting` for forward-mode host switches.
    private var follower: HTTPExchangeFollower?
    /// From the first request head on (from the first cleartext bytes in a raw tunnel).
    private var dissector: StreamDissector?
    private var runningTimers: Set<Timer> = []
    /// The WebSocket relay's actions of the current read, kept between reads for its capacity.
    private var relayScratch: [WebSocketRelay.Action] = []

    // The connection's history, for its end record.
    private var clientBytes: UInt64 = 0
    private var serverBytes: UInt64 = 0
    private var inputClosed: Set<Side> = []
    /// The first side to end its part of the connection, and how.
    private var firstEnd: (side: Side, how: ConnectionEnd.How)?
    private var ended = false
    /// The upstream's address once connected, for records of a tunnel dissected later.
    private var server = ""

    /// - Parameter clock: the shell's clock; the session never reads time itself.
    public init(connection: UInt64, mode: Mode, tls: TLSSettings = TLSSettings(), limits: Limits = Limits(), changes: ChangeSettings? = nil,
                clientAddress: String, proxyAddress: String, configuration: StreamDissector.Configuration, clock: @escaping () -> Timestamp) {
        self.connection = connection
        self.changes = changes
        self.mode = mode
        self.tls = tls
        self.limits = limits
        self.clientAddress = clientAddress
        self.proxyAddress = proxyAddress
        self.configuration = configuration
        self.clock = clock
        phase = .readingHead(HeadReading(parser: HTTPHeadParser(limit: limits.maxHeadBytes, expecting: .request), clientTLSPending: tls.clientTLS))
    }

    /// False while more than 1 MiB of client bytes wait inside the session (upstream not connected yet,
    /// or a forward-mode host switch waiting for the previous host's responses): the shell stops reading.
    public var wantsClientData: Bool {
        var held = follower?.heldByteCount ?? 0
        if case .connecting(let waiting) = phase { held += waiting.byteCount }
        return held < 1 << 20
    }

    public func handle(_ event: Event) -> [Action] {
        var actions: [Action]
        switch event {
        case .clientConnected: actions = []
        case .clientData(let buffer): actions = clientData(buffer)
        case .clientTLSEstablished: actions = clientTLSEstablished()
        case .clientTLSHello(let serverName): route.clientTLSServerName = serverName; actions = []
        case .upstreamData(let buffer): actions = upstreamData(buffer)
        case .upstreamConnected(let address): actions = upstreamConnected(address)
        case .upstreamConnectFailed(let reason): actions = upstreamFailed(reason)
        case .inputClosed(let side): actions = sideInputClosed(side)
        case .reset(let side): actions = sideReset(side)
        case .failed(let side, let reason): actions = sideFailed(side, reason: reason)
        case .closed(let side): actions = sideClosed(side)
        case .timerFired(let timer): actions = timerFired(timer)
        case .hookAnswered(let ticket, let answer):
            // After the connection ended the message is gone (its record says so): nothing to do.
            if case .webSocket(let relay) = phase { actions = relayed(relay, .hookAnswered(ticket: ticket, answer, at: clock())) } else { actions = [] }
        }
        reconcileTimers(into: &actions)
        return actions
    }

    // MARK: - Client side

    private func clientData(_ buffer: ByteBuffer) -> [Action] {
        switch phase {
        // Each phase's data is taken out while it changes (`phase = .done` as a placeholder): a copy
        // still referenced by `phase` would make every read copy the bytes held so far.
        case .readingHead(var reading):
            phase = .done
            let actions = readHead(buffer, &reading.parser)
            if case .done = phase, !ended { phase = .readingHead(reading) }  // the head is not complete yet
            return actions
        case .tunnelOpen(var probe):
            phase = .done
            probe += buffer.readableBytesView
            return probeTunnel(probe)
        case .clientTLSHandshake:
            return []  // bytes arrive decrypted once the handshake is done
        case .connecting(var waiting):
            // Still connecting (first request, host switch or tunnel): keep the bytes in order.
            clientBytes += UInt64(buffer.readableBytes)
            phase = .done
            waiting.append(buffer)
            phase = .connecting(waiting)
            return []
        case .relaying:
            clientBytes += UInt64(buffer.readableBytes)
            if follower != nil { return apply(follower!.clientBytes(buffer)) }
            return recordThenForward(buffer, .clientToServer)
        case .webSocket(let relay):
            clientBytes += UInt64(buffer.readableBytes)
            return relayed(relay, .received(.clientToServer, buffer, at: clock()))
        case .done:
            return []
        }
    }

    private func readHead(_ buffer: ByteBuffer, _ parser: inout HTTPHeadParser) -> [Action] {
        let result: (head: HTTPHead, consumed: Int)?
        do {
            result = try buffer.withUnsafeReadableBytes { try parser.feed($0) }
        } catch let error as HTTPHeadError {
            if error.looksLikeTLS {
                // A ClientHello: the client cannot read an HTTP answer, so the record says what to do.
                let advice: String
                switch mode {
                case .reverse: advice = "start wstap with --listen-tls for wss:// clients"
                case .forward: advice = "configure wstap as an http:// proxy (clients send CONNECT, then TLS)"
                }
                return [.close(.client)] + finish(reason: "TLS on a plain listener: the client sent a TLS ClientHello; \(advice)", closedBy: "proxy")
            }
            if case .tooLarge(let limit) = error {
                return refuse(status: 431, reason: "Request Header Fields Too Large", message: "the request head is larger than \(limit) bytes (--max-head-size)")
            }
            return refuse(status: 400, reason: "Bad Request", message: "the request head could not be parsed: \(error)")
        } catch {
            return refuse(status: 400, reason: "Bad Request", message: "the request head could not be parsed: \(error)")
        }
        guard let (head, consumed) = result else { return [] }
        var rest = buffer
        rest.moveReaderIndex(forwardBy: consumed)
        guard let method = head.method, let target = head.target else {
            return refuse(status: 400, reason: "Bad Request", message: "expected an HTTP request")
        }

        if let tunnel = route.tunnel, case .intercepted(let sni) = tunnel.handling {
            // Inside an intercepted tunnel: requests go to the CONNECT target over TLS, with the client's SNI.
            let tls = UpstreamTLS.forHost(tunnel.host, sni: sni)
            // Named as what the client asked for: not every request inside a tunnel is a WebSocket.
            let label = "\(head.isWebSocketUpgradeRequest ? "wss" : "https")://\(sni ?? tunnel.host):\(tunnel.port)"
            let upstream = HTTPExchangeFollower.Target(host: tunnel.host, port: tunnel.port, tls: tls, label: label,
                                                       authority: UpstreamURL(scheme: "wss", host: tunnel.host, port: tunnel.port).hostHeader)
            return follow(head, rest, scheme: "wss", routing: .fixed(upstream), rewrite: .init(originForm: true))
        }
        switch mode {
        case .reverse(let upstream):
            // Keep the client's path and query unless the upstream URL names one; point Host at the upstream.
            let target = HTTPExchangeFollower.Target(host: upstream.host, port: upstream.port,
                                                     tls: upstream.scheme == "wss" ? .forHost(upstream.host) : nil,
                                                     label: upstream.description, authority: upstream.hostHeader)
            return follow(head, rest, scheme: upstream.scheme, routing: .fixed(target),
                          rewrite: .init(host: upstream.hostHeader, target: upstream.path))
        case .forward:
            if method.uppercased() == "CONNECT" {
                let host: String, port: Int
                do {
                    (host, port) = try UpstreamURL.parseAuthority(target, defaultPort: nil)
                } catch {
                    return refuse(status: 400, reason: "Bad Request", message: "CONNECT target '\(target)': \(error)")
                }
                route.tunnel = Tunnel(host: host, port: port)
                route.upstreamLabel = "\(host):\(port)"
                if tls.interceptConnect { return answerConnectThenProbe(rest: rest) }
                // CONNECT is answered by us once the tunnel is up; the tunnelled bytes are dissected if cleartext.
                route.tunnel?.handling = .raw(checked: false)
                clientBytes += UInt64(rest.readableBytes)
                phase = .connecting(.tunnel(rest.readableBytes > 0 ? [rest] : []))
                return [.connect(host: host, port: port, tls: nil)]
            }
            guard let url = try? UpstreamURL.parse(target) else {
                return refuse(status: 400, reason: "Bad Request",
                              message: "wstap runs as a forward proxy (no --upstream): send absolute-form requests (GET ws://host:port/path) or CONNECT, or start wstap with --upstream ws://host:port")
            }
            return follow(head, rest, scheme: url.scheme, routing: .absoluteForm(first: HTTPExchangeFollower.target(for: url, requested: target)),
                          rewrite: .init(originForm: true, dropProxyFields: true))
        }
    }

    /// Every request of this connection, the first included, goes through the follower once the first
    /// request's upstream is connected: the dissector sees each head as the server receives it (rewritten
    /// where the mode requires), so `url` and `request` in records describe what reached the server and
    /// offsets match a capture of that leg.
    private func follow(_ head: HTTPHead, _ rest: ByteBuffer, scheme: String, routing: HTTPExchangeFollower.Routing,
                        rewrite: HTTPExchangeFollower.RequestRewrite) -> [Action] {
        var rewrite = rewrite
        rewrite.stripDeflate = changes?.compression == .strip
        let follower = HTTPExchangeFollower(routing: routing, rewrite: rewrite, headLimit: limits.maxHeadBytes)
        let first = follower.current
        self.follower = follower
        route.scheme = scheme
        route.upstreamLabel = first.label
        route.upstreamTLS = first.tls
        var replay = ByteBuffer(bytes: head.bytes)
        var restCopy = rest
        replay.writeBuffer(&restCopy)
        clientBytes += UInt64(head.byteCount + rest.readableBytes)
        startDissector(authority: first.authority)
        phase = .connecting(.http(head: nil, rest: replay))
        return [.connect(host: first.host, port: first.port, tls: first.tls)]
    }

    /// Interception: CONNECT is answered before the upstream is reached, because the client sends its
    /// ClientHello only after the 200 and the SNI in it decides what to do.
    private func answerConnectThenProbe(rest: ByteBuffer) -> [Action] {
        route.tunnel?.answeredEarly = true
        phase = .tunnelOpen(probe: [])
        var reply = ByteBuffer()
        reply.writeString("HTTP/1.1 200 Connection Established\r\n\r\n")
        var actions: [Action] = [.send(.client, reply)]
        if rest.readableBytes > 0 { actions += probeTunnel(Array(rest.readableBytesView)) }
        return actions
    }

    /// `probe`: every byte the client sent in the tunnel so far.
    private func probeTunnel(_ probe: [UInt8]) -> [Action] {
        guard let tunnel = route.tunnel else { return [] }
        let sni: String?
        switch TLSClientHello.parse(probe) {
        case .needMoreBytes:
            phase = .tunnelOpen(probe: probe)
            return []
        case .notTLS:
            return plainTunnel(tunnel, probe)
        case .clientHello(let serverName):
            sni = serverName
        }
        if tls.isPassthrough(tunnel.host) || sni.map(tls.isPassthrough) == true {
            return plainTunnel(tunnel, probe)
        }
        phase = .clientTLSHandshake
        route.tunnel?.handling = .intercepted(sni: sni)
        route.clientTLSServerName = sni
        return [.startClientTLS(certificateHost: sni ?? tunnel.host, replay: ByteBuffer(bytes: probe))]
    }

    /// Not TLS, or TLS to a passthrough host: relay the tunnel as bytes (dissected if cleartext).
    private func plainTunnel(_ tunnel: Tunnel, _ probe: [UInt8]) -> [Action] {
        route.tunnel?.handling = .raw(checked: false)
        clientBytes += UInt64(probe.count)
        phase = .connecting(.tunnel([ByteBuffer(bytes: probe)]))
        return [.connect(host: tunnel.host, port: tunnel.port, tls: nil)]
    }

    private func apply(_ outputs: [HTTPExchangeFollower.Output]) -> [Action] {
        var actions: [Action] = []
        for output in outputs {
            switch output {
            case .forward(let bytes):
                actions += recordThenForward(bytes, .clientToServer)
            case .switchUpstream(let target, let head, let rest):
                actions += switchUpstream(to: target, head: head, rest: rest)
            case .refuse(let status, let reason, let message):
                return actions + refuse(status: status, reason: reason, message: message)
            }
        }
        return actions
    }

    /// Forward-mode plain HTTP: the next request is for another host.
    private func switchUpstream(to target: HTTPExchangeFollower.Target, head: ByteBuffer, rest: ByteBuffer) -> [Action] {
        phase = .connecting(.http(head: head, rest: rest))
        dissector?.updateAuthority(target.authority)
        route.upstreamLabel = target.label
        route.upstreamTLS = target.tls
        return [.switchUpstream(host: target.host, port: target.port, tls: target.tls)]
    }

    private func clientTLSEstablished() -> [Action] {
        switch phase {
        case .readingHead(var reading):
            reading.clientTLSPending = false  // --listen-tls
            phase = .readingHead(reading)
        case .clientTLSHandshake:
            // An intercepted tunnel: its first request head comes next, decrypted.
            phase = .readingHead(HeadReading(parser: HTTPHeadParser(limit: limits.maxHeadBytes, expecting: .request), clientTLSPending: false))
        default:
            break
        }
        return []
    }

    // MARK: - Upstream side

    private func upstreamConnected(_ serverAddress: String) -> [Action] {
        guard case .connecting(let waiting) = phase else { return [] }
        phase = .relaying
        server = serverAddress
        dissector?.updateServer(serverAddress)
        var actions: [Action] = []
        switch waiting {
        case .http(let head, let rest):
            if let head { actions += recordThenForward(head, .clientToServer) }
            actions += apply(follower!.clientBytes(rest))
        case .tunnel(let buffers):
            if route.tunnel?.answeredEarly == false {
                var reply = ByteBuffer()
                reply.writeString("HTTP/1.1 200 Connection Established\r\n\r\n")
                actions.append(.send(.client, reply))
            }
            for buffer in buffers { actions += recordThenForward(buffer, .clientToServer) }
        }
        if inputClosed.contains(.client), case .relaying = phase { actions += clientInputEnded() }
        return actions
    }

    private func upstreamFailed(_ reason: String) -> [Action] {
        guard case .connecting = phase else { return [] }
        let message = "cannot reach upstream \(route.upstreamLabel): \(reason)"
        if let tunnel = route.tunnel, tunnel.answeredEarly && !tunnel.isIntercepted {
            // The tunnel was already answered and the client speaks its own protocol in it: just close.
            phase = .done
            return [.close(.client)] + finish(reason: message, closedBy: "proxy")
        }
        return refuse(status: 502, reason: "Bad Gateway", message: message)
    }

    private func upstreamData(_ buffer: ByteBuffer) -> [Action] {
        if case .webSocket(let relay) = phase {
            serverBytes += UInt64(buffer.readableBytes)
            return relayed(relay, .received(.serverToClient, buffer, at: clock()))
        }
        guard case .relaying = phase else { return [] }
        serverBytes += UInt64(buffer.readableBytes)
        // Records describe the server's bytes as it sent them; the client gets them through the
        // follower, which only ever removes a Content-Length that chunking overrides.
        var actions: [Action] = []
        if let records = dissect(buffer, .serverToClient) { actions.append(.emit(records)) }
        guard follower != nil else { return actions + [.send(.client, buffer)] + handOverToWebSocket() }
        let (toClient, switchOutput) = follower!.upstreamBytes(buffer)
        actions += toClient.map { .send(.client, $0) }
        if let switchOutput { actions += apply([switchOutput]) }
        return actions + handOverToWebSocket()
    }

    /// Once the server's 101 was dissected (the rest of its read went on with it), later bytes of both
    /// directions go through the WebSocket relay. The follower has become a pipe on the same 101.
    private func handOverToWebSocket() -> [Action] {
        guard case .relaying = phase, let dissector, let start = dissector.webSocketStart, follower?.isPipe ?? true else { return [] }
        phase = .webSocket(WebSocketRelay(start: start, dissector: dissector, changes: changes))
        return []
    }

    /// The WebSocket relay's actions for one read as the session's own.
    private func relayed(_ relay: WebSocketRelay, _ event: WebSocketRelay.Event) -> [Action] {
        relayScratch.removeAll(keepingCapacity: true)
        relay.handle(event, into: &relayScratch)
        return translateRelayActions()
    }

    /// What the control API asks of this connection (docs/control-api.md), carried out between its
    /// events: the answer, and the actions to perform as for any event.
    public func steer(_ command: SteerCommand) -> (SteerAnswer, [Action]) {
        guard case .webSocket(let relay) = phase else {
            if case .done = phase { return (.refused("the connection has ended"), []) }
            return (.refused("not a WebSocket connection (yet): only messages after the 101 can be sent, closed or held"), [])
        }
        relayScratch.removeAll(keepingCapacity: true)
        let answer = relay.steer(command, at: clock(), into: &relayScratch)
        return (answer, translateRelayActions())
    }

    private func translateRelayActions() -> [Action] {
        var actions: [Action] = []
        actions.reserveCapacity(relayScratch.count)
        for action in relayScratch {
            switch action {
            case .send(let direction, let bytes): actions.append(.send(direction == .clientToServer ? .upstream : .client, bytes))
            case .emit(let records): actions.append(.emit(records))
            case .abort(let rule):
                // What was sent before goes first; the resets end both connections at once.
                let who = rule == WebSocketRelay.controlAPI ? "the control API" : "rule '\(rule)'"
                return actions + [.reset(.client), .reset(.upstream)]
                    + finish(reason: "\(who) aborted the connection: both TCP connections reset", closedBy: "proxy")
            case .wake(let at):
                if let at {
                    runningTimers.insert(.relayWake)
                    let now = clock()
                    actions.append(.startTimer(.relayWake, after: .nanoseconds(max(0, at.nanoseconds - now.nanoseconds))))
                } else if runningTimers.remove(.relayWake) != nil {
                    actions.append(.cancelTimer(.relayWake))
                }
            case .askHook(let request): actions.append(.askHook(request))
            case .hookTimedOut(let ticket): actions.append(.forgetHook(ticket: ticket))
            }
        }
        return actions
    }

    /// Records go out before the bytes they describe: once a peer has seen a byte, its records are
    /// written, so killing wstap at any moment loses nothing a peer has already seen.
    private func recordThenForward(_ buffer: ByteBuffer, _ direction: Direction) -> [Action] {
        let send = Action.send(direction == .clientToServer ? .upstream : .client, buffer)
        guard let records = dissect(buffer, direction) else { return [send] }
        return [.emit(records), send]
    }

    /// The client's FIN reaches the upstream after whatever the follower still held of it.
    private func clientInputEnded() -> [Action] {
        var actions: [Action] = []
        if follower != nil { actions += apply(follower!.clientEnded()) }
        return actions + [.shutdownOutput(.upstream)]
    }

    // MARK: - Ending

    private func sideInputClosed(_ side: Side) -> [Action] {
        inputClosed.insert(side)
        noteEnd(side, how: .fin)
        // Before the upstream is involved, a client FIN ends the connection: with half-closure allowed the
        // socket stays open until it is closed here (leaving it was a descriptor leak per probe).
        switch phase {
        case .readingHead:
            return [.close(.client)] + finish(reason: "client closed before sending a request")
        case .tunnelOpen:
            return [.close(.client)] + finish(reason: "client closed the CONNECT tunnel before starting TLS or HTTP in it")
        case .clientTLSHandshake:
            return [.close(.client)] + finish(reason: "client closed during the TLS handshake")
        case .connecting:
            return []  // forwarded once connected
        case .done:
            return []  // already ended (refused, timed out): nothing more goes anywhere
        case .relaying, .webSocket:
            break
        }
        var actions: [Action] = []
        // What the relay holds of that side goes before its FIN.
        if case .webSocket(let relay) = phase {
            actions = relayed(relay, .inputEnded(side == .client ? .clientToServer : .serverToClient, at: clock()))
        }
        if side == .client {
            actions += clientInputEnded()
        } else {
            // An incomplete response head the follower held goes to the client before the FIN.
            actions += (follower?.upstreamEnded() ?? []).map { .send(.client, $0) } + [.shutdownOutput(.client)]
        }
        if inputClosed.count == 2 { actions += [.close(.client), .close(.upstream)] + finish(reason: nil) }
        return actions
    }

    private func sideReset(_ side: Side) -> [Action] {
        if side == .upstream, case .connecting = phase { return upstreamFailed("connection reset") }
        noteEnd(side, how: .reset)
        switch phase {
        case .readingHead, .tunnelOpen, .clientTLSHandshake:
            return [.close(.client)] + finish(reason: "client reset the connection before sending a request")
        case .relaying, .webSocket:
            let other: Side = side == .client ? .upstream : .client
            // What the server sent before its reset (a response head the follower was still holding)
            // goes on first, as it would have reached the client directly.
            let held = side == .upstream ? (follower?.upstreamEnded() ?? []).map { Action.send(.client, $0) } : []
            return held + [.close(side), .reset(other)] + finish(reason: nil, note: "reset passed on to the \(other.name)")
        case .connecting, .done:
            return [.close(.client), .close(.upstream)] + finish(reason: nil)
        }
    }

    private func sideFailed(_ side: Side, reason: String) -> [Action] {
        if side == .upstream, case .connecting = phase { return upstreamFailed(reason) }
        noteEnd(side, how: .error(reason))
        if side == .client && clientTLSPending {
            return [.close(.client), .close(.upstream)] + finish(reason: Self.clientTLSFailure(reason))
        }
        return [.close(.client), .close(.upstream)] + finish(reason: nil)
    }

    /// The client's TLS handshake (--listen-tls, or intercepted CONNECT) has not completed.
    private var clientTLSPending: Bool {
        switch phase {
        case .clientTLSHandshake: true
        case .readingHead(let reading): reading.clientTLSPending
        default: false
        }
    }

    /// Most client handshake failures mean the client does not trust wstap's CA: say what to do.
    /// A TLS 1.2 client says so with an alert (UNKNOWN_CA and kin); OpenSSL's TLS 1.3 clients abort
    /// in a way BoringSSL reports as BAD_PACKET_LENGTH.
    static func clientTLSFailure(_ reason: String) -> String {
        let distrust = ["UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR", "BAD_PACKET_LENGTH"].contains { reason.contains($0) }
        let detail = reason.hasPrefix("TLS handshake failed: ") ? String(reason.dropFirst("TLS handshake failed: ".count)) : reason
        return "the TLS handshake with the client failed: \(detail)"
            + (distrust ? "; most likely the client does not trust wstap's certificate: make it trust wstap's CA (wstap ca, certs/README.md)" : "")
    }

    private func sideClosed(_ side: Side) -> [Action] {
        noteEnd(side, how: .closed)
        if side == .upstream, case .connecting = phase { return [] }
        // Once finished, every side was closed on purpose; a channel going away then (maybe while the
        // shell is still carrying out the closing actions) needs nothing more.
        if case .done = phase { return [] }
        return [.close(side == .client ? .upstream : .client)] + finish(reason: nil)
    }

    // MARK: - Timers

    /// Each timer runs exactly while what it bounds is pending; checked after every event, so a
    /// deadline spans the states it covers (CONNECT, TLS and head; connect and upgrade answer) once.
    private func reconcileTimers(into actions: inout [Action]) {
        let headPending: Bool
        switch phase {
        case .readingHead, .tunnelOpen, .clientTLSHandshake: headPending = true
        default: headPending = false
        }
        let upstreamPending: Bool
        switch phase {
        case .connecting: upstreamPending = true
        case .relaying: upstreamPending = dissector?.isAwaitingUpgradeAnswer ?? false
        default: upstreamPending = false
        }
        // Called for every read: two plain calls, no array of timers built each time.
        reconcile(.requestHead, pending: headPending, limit: limits.requestHeadTimeout, into: &actions)
        reconcile(.upstreamHandshake, pending: upstreamPending, limit: limits.upstreamTimeout, into: &actions)
    }

    private func reconcile(_ timer: Timer, pending: Bool, limit: Duration?, into actions: inout [Action]) {
        if pending, let limit, !runningTimers.contains(timer) {
            runningTimers.insert(timer)
            actions.append(.startTimer(timer, after: limit))
        } else if !pending, runningTimers.remove(timer) != nil {
            actions.append(.cancelTimer(timer))
        }
    }

    private func timerFired(_ timer: Timer) -> [Action] {
        guard runningTimers.remove(timer) != nil else { return [] }  // cancelled meanwhile
        switch timer {
        case .relayWake:
            guard case .webSocket(let relay) = phase else { return [] }
            return relayed(relay, .tick(at: clock()))
        case .requestHead:
            let limit = Self.seconds(limits.requestHeadTimeout)
            switch phase {
            case .readingHead(let reading) where !reading.clientTLSPending:
                return refuse(status: 408, reason: "Request Timeout",
                              message: "the client did not send a complete request head within \(limit) (--head-timeout)")
            case .readingHead, .clientTLSHandshake:
                return [.close(.client)] + finish(reason: "the client did not complete its TLS handshake within \(limit) (--head-timeout)", closedBy: "proxy")
            case .tunnelOpen:
                return [.close(.client)] + finish(reason: "the client sent nothing in its CONNECT tunnel within \(limit) (--head-timeout)", closedBy: "proxy")
            default:
                return []
            }
        case .upstreamHandshake:
            let limit = Self.seconds(limits.upstreamTimeout)
            switch phase {
            case .connecting:
                let message = "upstream \(route.upstreamLabel) did not accept the connection\(route.upstreamTLS == nil ? "" : " and complete TLS") within \(limit) (--upstream-timeout)"
                if let tunnel = route.tunnel, tunnel.answeredEarly && !tunnel.isIntercepted {
                    return [.close(.client), .close(.upstream)] + finish(reason: message, closedBy: "proxy")
                }
                return refuse(status: 504, reason: "Gateway Timeout", message: message)
            case .relaying:
                let message = "upstream \(route.upstreamLabel) did not answer the WebSocket handshake within \(limit) (--upstream-timeout)"
                return refuse(status: 504, reason: "Gateway Timeout", message: message)
            default:
                return []
            }
        }
    }

    /// "30 s", "2.5 s": how long a limit is, for messages.
    static func seconds(_ duration: Duration?) -> String {
        guard let duration else { return "no limit" }
        let (seconds, attoseconds) = duration.components
        let tenths = attoseconds / 100_000_000_000_000_000
        return tenths == 0 ? "\(seconds) s" : "\(seconds).\(tenths) s"
    }

    private func noteEnd(_ side: Side, how: ConnectionEnd.How) {
        if firstEnd == nil { firstEnd = (side, how) }
    }

    private func refuse(status: Int, reason: String, message: String) -> [Action] {
        let body = "wstap: \(message)\n"
        var response = ByteBuffer()
        response.writeString("HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
        phase = .done
        // The answer goes first: closing the upstream first could end the client before it is sent.
        return [.send(.client, response), .close(.client), .close(.upstream)] + finish(reason: message, closedBy: "proxy")
    }

    /// - Parameter note: what wstap did about it, added to the reason ("reset passed on to the client").
    private func finish(reason: String?, closedBy: String? = nil, note: String? = nil) -> [Action] {
        guard !ended else { return [] }
        ended = true
        var records: [TapRecord] = []
        let now = clock()
        // Messages still held when the connection goes never reached their peer: the records say so.
        if case .webSocket(let relay) = phase { relay.abandon(at: now, into: &records) }
        phase = .done
        var actions: [Action] = []
        if runningTimers.remove(.relayWake) != nil { actions.append(.cancelTimer(.relayWake)) }
        dissector?.finish(at: now, into: &records)
        let (text, by) = endReason(explicit: reason, closedBy: closedBy)
        records.append(TapRecord(connection: connection, timestamp: now, body: .end(EndRecord(
            reason: text + (note.map { "; \($0)" } ?? ""), closedBy: by, clientBytes: clientBytes, serverBytes: serverBytes))))
        return actions + [.emit(records)]
    }

    private func endReason(explicit: String?, closedBy: String?) -> (String, String?) {
        if let explicit { return (explicit, closedBy ?? firstEnd.map { $0.side.name }) }
        let end = ConnectionEnd(first: firstEnd.map { ($0.side == .client ? .clientToServer : .serverToClient, $0.how) },
                                closeFrameFrom: dissector?.firstCloseFrom, isWebSocket: dissector?.isWebSocket ?? false)
        return end.reason
    }

    // MARK: - Dissection

    private func startDissector(authority: String?) {
        var info = ConnectionInfo(client: clientAddress, server: proxyAddress, scheme: route.scheme)
        info.authority = authority
        if route.tunnel?.isIntercepted == true || tls.clientTLS {
            info.clientTLS = TLSLegInfo(serverName: route.clientTLSServerName, verified: nil)
        }
        if let upstreamTLS = route.upstreamTLS {
            info.upstreamTLS = TLSLegInfo(serverName: upstreamTLS.serverName, verified: tls.verifyUpstream)
        }
        dissector = StreamDissector(connection: connection, info: info, configuration: configuration)
    }


    private func dissect(_ buffer: ByteBuffer, _ direction: Direction) -> [TapRecord]? {
        if direction == .clientToServer, let tunnel = route.tunnel, case .raw(checked: false) = tunnel.handling {
            route.tunnel?.handling = .raw(checked: true)
            // A TLS ClientHello starts with 0x16 (TLS to a passthrough host, or not intercepted): opaque.
            // Anything else may be HTTP.
            if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) != 0x16 {
                // A cleartext WebSocket inside CONNECT: its URL names the CONNECT target.
                startDissector(authority: UpstreamURL(scheme: "ws", host: tunnel.host, port: tunnel.port).hostHeader)
                dissector?.updateServer(server)
            }
        }
        guard let dissector else { return nil }
        var records: [TapRecord] = []
        buffer.withUnsafeReadableBytes { dissector.feed($0, from: direction, at: clock(), into: &records) }
        return records.isEmpty ? nil : records
    }
}
