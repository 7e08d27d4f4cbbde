import NIOCore
import WSTapDissect
import WSTapWire

/// The sans-IO core of one proxied connection: `handle(event) -> [action]`.
///
/// It decides where to connect, rewrites the request head where the mode requires it, forwards every
/// other byte untouched, feeds both directions to the `StreamDissector`, and decides how the connection
/// ends. The NIO shell performs the actions and reports what happened as events; it makes no decisions.
/// Rules that hold, edit or inject messages will sit here, between the events and the forwarding.
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

    public enum Event {
        case clientData(ByteBuffer)
        /// The shell finished the TLS handshake it was asked to do with the client.
        case clientTLSEstablished
        case upstreamConnected(serverAddress: String)
        case upstreamConnectFailed(reason: String)
        case upstreamData(ByteBuffer)
        /// The side sent FIN: no more data from it.
        case inputClosed(Side)
        /// The side's connection failed (reset, other error).
        case failed(Side, reason: String)
        /// The side's channel is gone.
        case closed(Side)
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
        case emit([TapRecord])
    }

    public let connection: UInt64
    public let mode: Mode
    public let tls: TLSSettings
    private let clientAddress: String
    private let proxyAddress: String
    private let configuration: StreamDissector.Configuration
    private var dissector: StreamDissector?
    private var clock: () -> Timestamp

    private enum Phase {
        case readingHead
        /// CONNECT answered; the first tunnel bytes decide between interception and a plain tunnel.
        case tunnelOpen
        /// The shell is terminating the client's TLS.
        case clientTLSHandshake
        case connecting
        case relaying
        case done
    }
    private var phase = Phase.readingHead
    private var headParser = HTTPHeadParser()
    /// Client bytes that arrived before the upstream connection was up (bounded by the shell pausing reads).
    private var pendingToUpstream: [ByteBuffer] = []
    /// The client sent CONNECT.
    private var isTunnel = false
    /// A CONNECT tunnel whose bytes are relayed as they are (not intercepted TLS).
    private var isRawTunnel: Bool { isTunnel && interceptedTarget == nil }
    /// CONNECT was answered with 200 before the upstream was reached (interception needs that).
    private var connectAnswered = false
    /// Set once the client's TLS inside a CONNECT tunnel was terminated: where its requests go.
    private var interceptedTarget: (host: String, port: Int, sni: String?)?
    private var tunnelProbe: [UInt8] = []
    private var clientTLSServerName: String?
    private var upstreamTLS: UpstreamTLS?
    private var scheme = "ws"
    /// Forward-mode plain HTTP (absolute-form requests): follows exchanges so each goes to its host.
    private var forwardHTTP: ForwardHTTPTracker?
    /// Client bytes to pass through `forwardHTTP` once the (new) upstream is connected.
    private var forwardReplay: (head: ByteBuffer?, rest: ByteBuffer)?
    private var upstreamLabel = ""
    private var clientBytes: UInt64 = 0
    private var serverBytes: UInt64 = 0
    private var inputClosed: Set<Side> = []
    private var firstEnd: (side: Side, how: String)?
    private var ended = false
    /// The CONNECT target, while the first tunnel bytes decide between interception and a raw tunnel.
    private var connectHost: (host: String, port: Int)?
    /// Client bytes after the request head, dissected once the upstream is connected.
    private var pendingDissect: ByteBuffer?
    /// Records of the request head, emitted with the connect result (before the 502 if it fails).
    private var bufferedRecords: [TapRecord] = []
    /// The upstream's address once connected, for records of a tunnel dissected later.
    private var server = ""
    /// A raw tunnel's first client bytes were looked at (cleartext is dissected, TLS is not).
    private var tunnelChecked = false

    /// - Parameter clock: the shell's clock; the session never reads time itself.
    public init(connection: UInt64, mode: Mode, tls: TLSSettings = TLSSettings(), clientAddress: String, proxyAddress: String,
                configuration: StreamDissector.Configuration, clock: @escaping () -> Timestamp) {
        self.connection = connection
        self.mode = mode
        self.tls = tls
        self.clientAddress = clientAddress
        self.proxyAddress = proxyAddress
        self.configuration = configuration
        self.clock = clock
    }

    /// False while more than 1 MiB of client bytes wait inside the session (upstream not connected yet,
    /// or a forward-mode host switch waiting for the previous host's responses): the shell stops reading.
    public var wantsClientData: Bool {
        let held = pendingToUpstream.reduce(0) { $0 + $1.readableBytes } + (forwardReplay?.rest.readableBytes ?? 0)
            + (forwardHTTP?.heldByteCount ?? 0)
        return held < 1 << 20
    }

    public func handle(_ event: Event) -> [Action] {
        switch event {
        case .clientData(let buffer): return clientData(buffer)
        case .clientTLSEstablished: return clientTLSEstablished()
        case .upstreamData(let buffer): return upstreamData(buffer)
        case .upstreamConnected(let address): return upstreamConnected(address)
        case .upstreamConnectFailed(let reason): return upstreamFailed(reason)
        case .inputClosed(let side): return sideInputClosed(side)
        case .failed(let side, let reason): return sideFailed(side, reason: reason)
        case .closed(let side): return sideClosed(side)
        }
    }

    // MARK: - Client side

    private func clientData(_ buffer: ByteBuffer) -> [Action] {
        switch phase {
        case .readingHead:
            return readHead(buffer)
        case .tunnelOpen:
            return probeTunnel(buffer)
        case .clientTLSHandshake:
            return []  // bytes arrive decrypted once the handshake is done
        case .connecting:
            if forwardHTTP != nil, let replay = forwardReplay {
                // Still connecting (first request or a host switch): keep the bytes in order.
                var rest = replay.rest
                var copy = buffer
                rest.writeBuffer(&copy)
                forwardReplay = (replay.head, rest)
                clientBytes += UInt64(buffer.readableBytes)
                return []
            }
            pendingToUpstream.append(buffer)
            return []
        case .relaying:
            clientBytes += UInt64(buffer.readableBytes)
            if forwardHTTP != nil { return forwardClientBytes(buffer) }
            return recordThenForward(buffer, .clientToServer)
        case .done:
            return []
        }
    }

    private func readHead(_ buffer: ByteBuffer) -> [Action] {
        let result: (head: HTTPHead, consumed: Int)?
        do {
            result = try buffer.withUnsafeReadableBytes { try headParser.feed($0) }
        } catch {
            return refuse(status: 400, reason: "Bad Request", message: "the request head could not be parsed: \(error)")
        }
        guard let (head, consumed) = result else { return [] }
        var rest = buffer
        rest.moveReaderIndex(forwardBy: consumed)
        guard let method = head.method, let target = head.target else {
            return refuse(status: 400, reason: "Bad Request", message: "expected an HTTP request")
        }

        var outgoing = head
        let host: String
        let port: Int
        var upstreamTLS: UpstreamTLS?
        if let intercepted = interceptedTarget {
            // Inside an intercepted tunnel: requests go to the CONNECT target over TLS, with the client's SNI.
            (host, port) = (intercepted.host, intercepted.port)
            if !target.hasPrefix("/"), let url = try? UpstreamURL.parse(target) {
                outgoing.startLine = .request(method: method, target: url.path ?? "/", version: head.httpVersion)
            }
            upstreamTLS = .forHost(host, sni: intercepted.sni)
            upstreamLabel = "wss://\(intercepted.sni ?? host):\(port)"
            scheme = "wss"
        } else {
            switch mode {
            case .reverse(let upstream):
                (host, port) = (upstream.host, upstream.port)
                // Keep the client's path and query unless the upstream URL names one; point Host at the upstream.
                outgoing.startLine = .request(method: method, target: upstream.path ?? target, version: head.httpVersion)
                outgoing.replaceHeader("Host", with: upstream.hostHeader)
                upstreamLabel = upstream.description
                scheme = upstream.scheme
                if upstream.scheme == "wss" { upstreamTLS = .forHost(upstream.host) }
            case .forward:
                if method.uppercased() == "CONNECT" {
                    do {
                        (host, port) = try UpstreamURL.parseAuthority(target, defaultPort: nil)
                    } catch {
                        return refuse(status: 400, reason: "Bad Request", message: "CONNECT target '\(target)': \(error)")
                    }
                    isTunnel = true
                    upstreamLabel = "\(host):\(port)"
                    if tls.interceptConnect {
                        return answerConnectThenProbe(host: host, port: port, rest: rest)
                    }
                } else if let url = try? UpstreamURL.parse(target) {
                    // Every request of this connection, this one included, goes through the tracker.
                    let first = ForwardHTTPTracker.Target(host: url.host, port: url.port,
                                                          tls: url.scheme == "wss" ? .forHost(url.host) : nil, label: url.description)
                    forwardHTTP = ForwardHTTPTracker(first: first)
                    upstreamLabel = url.description
                    scheme = url.scheme
                    self.upstreamTLS = first.tls
                    var replay = ByteBuffer(bytes: head.encoded())
                    var restCopy = rest
                    replay.writeBuffer(&restCopy)
                    forwardReplay = (nil, replay)
                    clientBytes += UInt64(consumed + rest.readableBytes)
                    startDissector()
                    phase = .connecting
                    return [.connect(host: first.host, port: first.port, tls: first.tls)]
                } else {
                    return refuse(status: 400, reason: "Bad Request",
                                  message: "wstap runs as a forward proxy (no --upstream): send absolute-form requests (GET ws://host:port/path) or CONNECT, or start wstap with --upstream ws://host:port")
                }
            }
        }
        self.upstreamTLS = upstreamTLS

        phase = .connecting
        if isRawTunnel {
            // CONNECT is answered by us once the tunnel is up; the tunnelled bytes are dissected if cleartext.
            if rest.readableBytes > 0 { pendingToUpstream.append(rest) }
        } else {
            // Dissect the head as the server receives it (rewritten where the mode requires), so `url` and
            // `request` in records describe what reached the server, and offsets match a capture of that leg.
            var headBuffer = ByteBuffer()
            headBuffer.writeBytes(outgoing.encoded())
            startDissector()
            var records: [TapRecord] = []
            headBuffer.withUnsafeReadableBytes { dissector!.feed($0, from: .clientToServer, at: clock(), into: &records) }
            clientBytes += UInt64(consumed)
            pendingToUpstream.append(headBuffer)
            if rest.readableBytes > 0 { pendingToUpstream.append(rest) }
            pendingDissect = rest.readableBytes > 0 ? rest : nil
            bufferedRecords = records
        }
        return [.connect(host: host, port: port, tls: upstreamTLS)]
    }

    /// Interception: CONNECT is answered before the upstream is reached, because the client sends its
    /// ClientHello only after the 200 and the SNI in it decides what to do.
    private func answerConnectThenProbe(host: String, port: Int, rest: ByteBuffer) -> [Action] {
        connectAnswered = true
        phase = .tunnelOpen
        connectHost = (host, port)
        var reply = ByteBuffer()
        reply.writeString("HTTP/1.1 200 Connection Established\r\n\r\n")
        var actions: [Action] = [.send(.client, reply)]
        if rest.readableBytes > 0 { actions += probeTunnel(rest) }
        return actions
    }


    private func probeTunnel(_ buffer: ByteBuffer) -> [Action] {
        guard let (host, port) = connectHost else { return [] }
        tunnelProbe += buffer.readableBytesView
        let sni: String?
        switch TLSClientHello.parse(tunnelProbe) {
        case .needMoreBytes:
            return []
        case .notTLS:
            return plainTunnel(host: host, port: port)
        case .clientHello(let serverName):
            sni = serverName
        }
        if tls.isPassthrough(host) || sni.map(tls.isPassthrough) == true {
            return plainTunnel(host: host, port: port)
        }
        phase = .clientTLSHandshake
        interceptedTarget = (host, port, sni)
        clientTLSServerName = sni
        let replay = ByteBuffer(bytes: tunnelProbe)
        tunnelProbe = []
        return [.startClientTLS(certificateHost: sni ?? host, replay: replay)]
    }

    /// Not TLS, or TLS to a passthrough host: relay the tunnel as bytes (dissected if cleartext).
    private func plainTunnel(host: String, port: Int) -> [Action] {
        phase = .connecting
        pendingToUpstream = [ByteBuffer(bytes: tunnelProbe)]
        tunnelProbe = []
        return [.connect(host: host, port: port, tls: nil)]
    }

    private func forwardClientBytes(_ buffer: ByteBuffer) -> [Action] {
        guard forwardHTTP != nil else { return [] }
        return apply(forwardHTTP!.clientBytes(buffer))
    }

    private func apply(_ outputs: [ForwardHTTPTracker.Output]) -> [Action] {
        var actions: [Action] = []
        for output in outputs {
            switch output {
            case .forward(let bytes):
                actions += recordThenForward(bytes, .clientToServer)
            case .switchUpstream(let target, let head, let rest):
                phase = .connecting
                upstreamLabel = target.label
                upstreamTLS = target.tls
                forwardReplay = (head, rest)
                actions.append(.switchUpstream(host: target.host, port: target.port, tls: target.tls))
            case .malformed(let problem):
                return actions + refuse(status: 400, reason: "Bad Request", message: "cannot follow the HTTP stream: \(problem)")
            }
        }
        return actions
    }

    private func clientTLSEstablished() -> [Action] {
        guard phase == .clientTLSHandshake else { return [] }
        phase = .readingHead
        return []
    }


    // MARK: - Upstream side

    private func upstreamConnected(_ serverAddress: String) -> [Action] {
        guard phase == .connecting else { return [] }
        phase = .relaying
        server = serverAddress
        dissector?.updateServer(serverAddress)
        if forwardHTTP != nil, let replay = forwardReplay {
            forwardReplay = nil
            var actions: [Action] = []
            if let head = replay.head { actions += recordThenForward(head, .clientToServer) }
            actions += forwardClientBytes(replay.rest)
            if inputClosed.contains(.client) && phase == .relaying { actions.append(.shutdownOutput(.upstream)) }
            return actions
        }
        var actions: [Action] = []
        var records = bufferedRecords
        bufferedRecords = []
        if isRawTunnel {
            if !connectAnswered {
                var reply = ByteBuffer()
                reply.writeString("HTTP/1.1 200 Connection Established\r\n\r\n")
                actions.append(.send(.client, reply))
            }
            for buffer in pendingToUpstream {
                clientBytes += UInt64(buffer.readableBytes)
                actions.append(.send(.upstream, buffer))
                if let more = dissect(buffer, .clientToServer) { records += more }
            }
        } else {
            for buffer in pendingToUpstream { actions.append(.send(.upstream, buffer)) }
            if let early = pendingDissect {
                clientBytes += UInt64(early.readableBytes)
                if let more = dissect(early, .clientToServer) { records += more }
            }
        }
        pendingToUpstream = []
        pendingDissect = nil
        if !records.isEmpty { actions.insert(.emit(records), at: 0) }
        if inputClosed.contains(.client) { actions.append(.shutdownOutput(.upstream)) }
        return actions
    }


    private func upstreamFailed(_ reason: String) -> [Action] {
        guard phase == .connecting else { return [] }
        let message = "cannot reach upstream \(upstreamLabel): \(reason)"
        if connectAnswered && interceptedTarget == nil {
            // The tunnel was already answered and the client speaks its own protocol in it: just close.
            phase = .done
            return [.close(.client)] + finish(reason: message, closedBy: "proxy")
        }
        var actions = refuse(status: 502, reason: "Bad Gateway", message: message)
        // The request head was recorded already; keep those records before the end.
        if !bufferedRecords.isEmpty { actions.insert(.emit(bufferedRecords), at: 0) }
        bufferedRecords = []
        return actions
    }

    private func upstreamData(_ buffer: ByteBuffer) -> [Action] {
        guard phase == .relaying else { return [] }
        serverBytes += UInt64(buffer.readableBytes)
        var actions = recordThenForward(buffer, .serverToClient)
        if forwardHTTP != nil { actions += apply(forwardHTTP!.upstreamBytes(buffer)) }
        return actions
    }

    /// Records go out before the bytes they describe: once a peer has seen a byte, its records are
    /// written, so killing wstap at any moment loses nothing a peer has already seen.
    private func recordThenForward(_ buffer: ByteBuffer, _ direction: Direction) -> [Action] {
        let send = Action.send(direction == .clientToServer ? .upstream : .client, buffer)
        guard let records = dissect(buffer, direction) else { return [send] }
        return [.emit(records), send]
    }

    // MARK: - Ending

    private func sideInputClosed(_ side: Side) -> [Action] {
        inputClosed.insert(side)
        noteEnd(side, how: "fin")
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
        case .relaying, .done:
            break
        }
        var actions: [Action] = [.shutdownOutput(side == .client ? .upstream : .client)]
        if inputClosed.count == 2 { actions += [.close(.client), .close(.upstream)] + finish(reason: nil) }
        return actions
    }

    private func sideFailed(_ side: Side, reason: String) -> [Action] {
        if side == .upstream && phase == .connecting { return upstreamFailed(reason) }
        noteEnd(side, how: reason.contains("reset") ? "reset" : "error: \(reason)")
        return [.close(.client), .close(.upstream)] + finish(reason: nil)
    }

    private func sideClosed(_ side: Side) -> [Action] {
        noteEnd(side, how: "closed")
        if side == .upstream && phase == .connecting { return [] }
        return [.close(side == .client ? .upstream : .client)] + finish(reason: nil)
    }

    private func noteEnd(_ side: Side, how: String) {
        if firstEnd == nil { firstEnd = (side, how) }
    }

    private func refuse(status: Int, reason: String, message: String) -> [Action] {
        let body = "wstap: \(message)\n"
        var response = ByteBuffer()
        response.writeString("HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
        phase = .done
        return [.send(.client, response), .close(.client)] + finish(reason: message, closedBy: "proxy")
    }

    private func finish(reason: String?, closedBy: String? = nil) -> [Action] {
        guard !ended else { return [] }
        ended = true
        phase = .done
        var records: [TapRecord] = []
        let now = clock()
        dissector?.finish(at: now, into: &records)
        let (text, by) = endReason(explicit: reason, closedBy: closedBy)
        records.append(TapRecord(connection: connection, timestamp: now, body: .end(EndRecord(
            reason: text, closedBy: by, clientBytes: clientBytes, serverBytes: serverBytes))))
        return [.emit(records)]
    }

    private func endReason(explicit: String?, closedBy: String?) -> (String, String?) {
        if let explicit { return (explicit, closedBy ?? firstEnd.map { $0.side.name }) }
        if let closer = dissector?.firstCloseFrom {
            let name = closer == .clientToServer ? "client" : "server"
            return ("close frame from \(name), then \(firstEnd.map { "\($0.side.name) \($0.how)" } ?? "connection closed")", name)
        }
        if let firstEnd { return ("\(firstEnd.side.name) \(firstEnd.how) without a close frame", firstEnd.side.name) }
        return ("connection closed", nil)
    }

    // MARK: - Dissection

    private func startDissector() {
        var info = ConnectionInfo(client: clientAddress, server: proxyAddress, scheme: scheme)
        if interceptedTarget != nil || tls.clientTLS {
            info.clientTLS = TLSLegInfo(serverName: clientTLSServerName, verified: nil)
        }
        if let upstreamTLS {
            info.upstreamTLS = TLSLegInfo(serverName: upstreamTLS.serverName, verified: tls.verifyUpstream)
        }
        dissector = StreamDissector(connection: connection, info: info, configuration: configuration)
    }


    private func dissect(_ buffer: ByteBuffer, _ direction: Direction) -> [TapRecord]? {
        if isRawTunnel && !tunnelChecked && direction == .clientToServer {
            tunnelChecked = true
            // A TLS ClientHello starts with 0x16: opaque until interception exists; anything else may be HTTP.
            if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) != 0x16 {
                startDissector()
                dissector?.updateServer(server)
            }
        }
        guard let dissector else { return nil }
        var records: [TapRecord] = []
        buffer.withUnsafeReadableBytes { dissector.feed($0, from: direction, at: clock(), into: &records) }
        return records.isEmpty ? nil : records
    }
}

extension HTTPHead {
    var httpVersion: String { if case .request(_, _, let v) = startLine { v } else { "HTTP/1.1" } }

    mutating func replaceHeader(_ name: String, with value: String) {
        if let i = headers.firstIndex(where: { $0.name.lowercased() == name.lowercased() }) {
            headers[i].value = value
            headers.removeAll { $0.name.lowercased() == name.lowercased() && $0.value != value }
        } else {
            headers.insert((name, value), at: 0)
        }
    }

    mutating func removeHeader(_ name: String) { headers.removeAll { $0.name.lowercased() == name.lowercased() } }
}
