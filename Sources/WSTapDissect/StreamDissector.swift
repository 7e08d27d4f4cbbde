import WSTapWire

/// Dissects one TCP connection, both directions: the HTTP/1.1 upgrade, then every WebSocket frame and
/// message. It is sans-IO: the live relay and the capture reader both feed it bytes with a timestamp and
/// get the same records back. It never stops on bad traffic: problems become diagnostics and
/// dissection goes on.
///
/// Call order: `feed` with each direction's bytes in stream order (directions may interleave freely),
/// then `finish` once when the connection is gone.
public final class StreamDissector {
    public struct Configuration: Sendable {
        /// Bytes of each message payload kept in records; the rest is counted, marked truncated.
        public var payloadCap: Int = 64 * 1024
        /// Inflated bytes per message after which inflating stops (decompression bomb guard).
        public var maxInflatedMessage: UInt64 = 64 * 1024 * 1024
        /// Emit a record per frame (the console hides them without -v, JSONL always has them).
        public var frameRecords = true
        public init() {}
    }

    public let connection: UInt64
    public let configuration: Configuration
    public private(set) var info: ConnectionInfo

    /// Who sent the first close frame, once one was seen.
    public private(set) var firstCloseFrom: Direction?
    /// True once a 101 was seen and both directions carry WebSocket frames.
    public private(set) var isWebSocket = false
    /// The client asked to upgrade and the server has not answered yet (the relay bounds this wait).
    public var isAwaitingUpgradeAnswer: Bool { client.phase == .awaitingUpgradeAnswer }
    /// Where the WebSocket part of the connection begins, once the 101 was seen (or from the first byte
    /// for a mid-stream session): the relay takes the frames over from there.
    public private(set) var webSocketStart: WebSocketStart?

    var client = DirectionState(direction: .clientToServer)
    var server = DirectionState(direction: .serverToClient)
    /// Requests not answered yet, oldest first (HTTP/1.1 pipelining keeps them in order).
    private var pendingRequests: [PendingRequest] = []
    /// The exchange whose response body is being read; its record is written when the body ends.
    private var answering: HTTPExchangeRecord?
    private var answeringStarted = Timestamp(nanoseconds: 0)

    struct PendingRequest {
        var head: HTTPHead
        var started: Timestamp
        var bodyBytes: UInt64 = 0
    }
    private var deflate: PerMessageDeflate?
    /// An extension we cannot decode was negotiated: RSV bits may be legitimately set.
    private var rsvBitsClaimedByUnknownExtension = false
    private var now = Timestamp(nanoseconds: 0)
    private var scratch: [UInt8] = []
    /// Most bytes held for dissection while the client speaks before the server answered the upgrade.
    static let pendingLimit = 1 << 20

    public init(connection: UInt64, info: ConnectionInfo, configuration: Configuration = Configuration()) {
        self.connection = connection
        self.info = info
        self.configuration = configuration
    }

    /// For captures that start after the upgrade: both directions are WebSocket from their first byte
    /// (resynchronising on the first plausible header), and RSV1 is taken as permessage-deflate with
    /// unknown parameters. `discovery` says why the connection is believed to be WebSocket.
    public convenience init(connection: UInt64, info: ConnectionInfo, configuration: Configuration = Configuration(), midstream discovery: String) {
        self.init(connection: connection, info: info, configuration: configuration)
        midstreamDiscovery = discovery
        isWebSocket = true
        webSocketStart = WebSocketStart(clientOffset: 0, serverOffset: 0, negotiationSeen: false, deflate: nil, subprotocol: nil,
                                        url: "\(info.scheme)://\(info.server)/")
        client.phase = .websocket
        server.phase = .websocket
        client.resyncing = true
        server.resyncing = true
    }

    /// Set for mid-stream sessions; the `open` record is written with the first bytes.
    private var midstreamDiscovery: String?
    private var midstreamOpened = false

    /// The shell learns the server's address only once connected; records after that carry it.
    public func updateServer(_ address: String) { info.server = address }

    /// A forward proxy connection moved on to another host: later records name that one.
    public func updateAuthority(_ authority: String) { info.authority = authority }

    // MARK: - Input

    public func feed(_ bytes: UnsafeRawBufferPointer, from direction: Direction, at time: Timestamp, into records: inout [TapRecord]) {
        now = time
        if let discovery = midstreamDiscovery, !midstreamOpened {
            midstreamOpened = true
            var open = OpenRecord(client: info.client, server: info.server, url: "\(info.scheme)://\(info.server)/", request: nil, response: nil,
                                  subprotocol: nil, extensions: nil, clientTLS: info.clientTLS, upstreamTLS: info.upstreamTLS)
            open.discovery = discovery
            records.append(record(.open(open)))
        }
        var state = takeState(direction)
        process(bytes, state: &state, records: &records)
        putState(state)
    }

    public func feed(_ bytes: [UInt8], from direction: Direction, at time: Timestamp, into records: inout [TapRecord]) {
        bytes.withUnsafeBytes { feed($0, from: direction, at: time, into: &records) }
    }

    /// `bytes` of `direction` are missing (a capture lost them). Records a gap, reports what it cut
    /// short, and resynchronises on the next plausible frame header.
    public func gap(_ direction: Direction, bytes: UInt64, at time: Timestamp, into records: inout [TapRecord]) {
        now = time
        var state = takeState(direction)
        if state.resyncCarry != nil {
            // The byte kept to pair with the next piece is not followed by it any more: skipped.
            state.resyncCarry = nil
            state.offset += 1
            state.resyncSkipped += 1
        }
        records.append(record(.gap(GapRecord(direction: direction, bytes: bytes, offset: state.offset))))
        state.offset += bytes
        switch state.phase {
        case .websocket:
            if var message = state.fragmented {
                message.incomplete = true
                emitMessage(&message, state: &state, records: &records)
                state.fragmented = nil
            }
            if var message = state.single, state.parser.isInsideFrame {
                message.incomplete = true
                emitMessage(&message, state: &state, records: &records)
            }
            state.single = nil
            state.parser = FrameParser()
            state.target = .discard
            state.lastHeader = nil
            // Whatever the sender compressed next may refer to what was lost; start from an empty window.
            state.inflater?.reset()
            state.resyncing = true
        case .opaque:
            break
        default:
            // HTTP framing cannot be trusted across a hole.
            state.phase = .opaque
        }
        putState(state)
    }

    /// The connection is gone: report frames and messages it cut short.
    public func finish(at time: Timestamp, into records: inout [TapRecord]) {
        now = time
        emitAnswered(&records)  // a response body delimited by the connection's end
        for direction in [Direction.clientToServer, .serverToClient] {
            var state = takeState(direction)
            if state.phase == .websocket {
                if state.parser.isInsideFrame {
                    diagnose(.truncatedFrame, state, offset: state.frameStart, "stream ended \(state.offset - state.frameStart) bytes into a frame", &records)
                }
                if var message = state.fragmented {
                    diagnose(.truncatedMessage, state, offset: message.offset, "fragmented \(message.opcode) message had \(message.frames) frame(s), no final frame", &records)
                    message.incomplete = true
                    emitMessage(&message, state: &state, records: &records)
                    state.fragmented = nil
                }
            }
            putState(state)
        }
    }

    // MARK: - Direction state

    enum Phase: Equatable {
        case httpHead
        case httpBody
        /// The client sent an upgrade request; its later bytes wait for the server's answer.
        case awaitingUpgradeAnswer
        case websocket
        /// Not dissected any more (non-WebSocket protocol after 101, unparseable HTTP, body until close).
        case opaque
    }

    struct DirectionState {
        let direction: Direction
        var phase: Phase = .httpHead
        var offset: UInt64 = 0
        var headParser: HTTPHeadParser
        var body: HTTPBodyFraming?
        var held: [UInt8] = []
        var heldOverflow = false
        var parser = FrameParser()
        var frameStart: UInt64 = 0
        /// What the payload of the frame being read belongs to.
        var target: FrameTarget = .discard
        var fragmented: MessageAssembly?
        var single: MessageAssembly?
        var inflater: Inflater?
        var resetsContext = false
        var sentClose = false
        /// Header of the frame being read (the parser forgets it before `.frameEnd`).
        var lastHeader: FrameHeader?
        /// After a gap: skip bytes until one looks like the start of a frame.
        var resyncing = false
        /// Bytes skipped so far while resynchronising (reported once, when a header is found).
        var resyncSkipped: UInt64 = 0
        /// The last byte of a piece, kept while resynchronising because it may begin a header whose
        /// second byte comes in the next piece: where a header is found must not depend on the split.
        var resyncCarry: UInt8?

        init(direction: Direction) {
            self.direction = direction
            // Each side must speak its half of HTTP: bytes that cannot start one are diagnosed at once.
            headParser = HTTPHeadParser(expecting: direction == .clientToServer ? .request : .response)
        }
    }

    enum FrameTarget { case fragmented, single, discard }

    struct MessageAssembly {
        var opcode: Opcode
        var offset: UInt64
        var frames = 0
        var wireLength: UInt64 = 0
        var length: UInt64 = 0
        var compressed: Bool
        var payload: [UInt8] = []
        var truncated = false
        var utf8: UTF8Validator?
        var inflateFailed = false
        var inflateStopped = false
        var incomplete = false
        /// Raw compressed bytes kept (capped) so a failed inflate can still show what was sent.
        var rawPayload: [UInt8] = []
    }

    private func takeState(_ direction: Direction) -> DirectionState {
        // Swap out so mutation does not copy (the state holds arrays and a class reference).
        if direction == .clientToServer {
            let s = client
            client = DirectionState(direction: .clientToServer)
            return s
        } else {
            let s = server
            server = DirectionState(direction: .serverToClient)
            return s
        }
    }

    private func putState(_ state: DirectionState) {
        if state.direction == .clientToServer { client = state } else { server = state }
    }

    // MARK: - Processing

    private func process(_ bytes: UnsafeRawBufferPointer, state: inout DirectionState, records: inout [TapRecord]) {
        var index = 0
        while index < bytes.count {
            switch state.phase {
            case .opaque:
                state.offset += UInt64(bytes.count - index)
                index = bytes.count
            case .awaitingUpgradeAnswer:
                let rest = bytes.count - index
                let room = max(0, Self.pendingLimit - state.held.count)
                state.held.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<(index + min(rest, room))]))
                if rest > room && !state.heldOverflow {
                    state.heldOverflow = true
                    diagnose(.pipelinedBytesDropped, state, offset: state.offset, "client sent over \(Self.pendingLimit) bytes before the upgrade answer", &records)
                }
                // `offset` advances when the held bytes are dissected, so offsets stay stream positions.
                index = bytes.count
            case .httpHead:
                processHead(bytes, index: &index, state: &state, records: &records)
            case .httpBody:
                let before = index
                do {
                    try state.body?.consume(bytes, index: &index)
                } catch {
                    diagnose(.malformedHTTP, state, offset: state.offset, "\(error)", &records)
                    state.phase = .opaque
                    continue
                }
                let consumed = UInt64(index - before)
                state.offset += consumed
                if state.direction == .clientToServer {
                    if !pendingRequests.isEmpty { pendingRequests[pendingRequests.count - 1].bodyBytes += consumed }
                } else {
                    answering?.responseBodyBytes += consumed
                }
                if state.body?.isDone ?? true {
                    state.body = nil
                    state.phase = .httpHead
                    if state.direction == .serverToClient { emitAnswered(&records) }
                }
            case .websocket:
                processFrames(bytes, index: &index, state: &state, records: &records)
            }
        }
    }

    private func processHead(_ bytes: UnsafeRawBufferPointer, index: inout Int, state: inout DirectionState, records: inout [TapRecord]) {
        let slice = UnsafeRawBufferPointer(rebasing: bytes[index...])
        // Where this head began: earlier pieces of it were counted into `offset` as they arrived.
        let headStart = state.offset - UInt64(state.headParser.bufferedByteCount)
        let parsed: (head: HTTPHead, consumed: Int)?
        do {
            parsed = try state.headParser.feed(slice)
        } catch {
            diagnose(.malformedHTTP, state, offset: headStart, "\(error)", &records)
            state.phase = .opaque
            return
        }
        guard let (head, consumed) = parsed else {
            state.offset += UInt64(slice.count)
            index = bytes.count
            return
        }
        let headOffset = state.offset + UInt64(consumed) - UInt64(head.byteCount)
        state.offset += UInt64(consumed)
        index += consumed
        if head.hasBareLineFeeds {
            diagnose(.bareLineFeed, state, offset: headOffset, "a line of the \(head.method == nil ? "response" : "request") head ends in LF without CR", &records)
        }
        if state.direction == .clientToServer {
            handleRequest(head, state: &state, offset: headOffset, records: &records)
        } else {
            handleResponse(head, serverState: &state, offset: headOffset, records: &records)
        }
    }

    private func handleRequest(_ head: HTTPHead, state: inout DirectionState, offset: UInt64, records: inout [TapRecord]) {
        guard head.method != nil else {
            diagnose(.malformedHTTP, state, offset: offset, "expected a request, got a response head", &records)
            state.phase = .opaque
            return
        }
        pendingRequests.append(PendingRequest(head: head, started: now))
        if head.isWebSocketUpgradeRequest {
            checkUpgradeRequest(head, state: state, offset: offset, records: &records)
            state.phase = .awaitingUpgradeAnswer
            return
        }
        do {
            let body = try HTTPBodyFraming.forRequest(head)
            if !body.isDone {
                state.body = body
                state.phase = .httpBody
            }
        } catch {
            diagnose(.malformedHTTP, state, offset: offset, "\(error)", &records)
            state.phase = .opaque
        }
    }

    private func handleResponse(_ response: HTTPHead, serverState: inout DirectionState, offset: UInt64, records: inout [TapRecord]) {
        guard let status = response.status else {
            diagnose(.malformedHTTP, serverState, offset: offset, "expected a response, got a request head", &records)
            serverState.phase = .opaque
            return
        }
        // Interim responses (100 Continue, 103) leave the request waiting for its final answer.
        if (100..<200).contains(status) && status != 101 { return }
        let pending = pendingRequests.isEmpty ? nil : pendingRequests.removeFirst()
        let request = pending?.head
        let wasUpgrade = request?.isWebSocketUpgradeRequest ?? false

        if status == 101 && wasUpgrade, let request {
            openWebSocket(request: request, response: response, serverState: &serverState, offset: offset, records: &records)
            return
        }
        let httpURL = request.map { url(for: $0) }.map { text in
            text.hasPrefix("wss://") ? "https://" + text.dropFirst(6) : text.hasPrefix("ws://") ? "http://" + text.dropFirst(5) : text
        }
        // Written when the response body ends, so it can carry sizes and duration.
        answering = HTTPExchangeRecord(url: httpURL, request: request, response: response, wasUpgradeAttempt: wasUpgrade,
                                       requestBodyBytes: pending?.bodyBytes ?? 0, responseBodyBytes: 0, durationNanoseconds: 0)
        answeringStarted = pending?.started ?? now
        if status == 101 {
            // Switched to something that is not WebSocket (h2c, TLS upgrade): nothing more to dissect.
            emitAnswered(&records)
            serverState.phase = .opaque
            client.phase = .opaque
            return
        }
        if wasUpgrade {
            diagnose(.upgradeRefused, serverState, offset: offset, "\(status) \(response.reason ?? "")", &records)
            // The client may retry on the same connection (e.g. after 401 or 426): its held bytes are HTTP.
            var clientState = takeState(.clientToServer)
            clientState.phase = .httpHead
            replayHeld(&clientState, records: &records)
            putState(clientState)
        }
        do {
            let body = try HTTPBodyFraming.forResponse(response, requestMethod: request?.method)
            if !body.isDone {
                serverState.body = body
                serverState.phase = .httpBody
            } else {
                emitAnswered(&records)
            }
        } catch {
            diagnose(.malformedHTTP, serverState, offset: offset, "\(error)", &records)
            serverState.phase = .opaque
            emitAnswered(&records)
        }
    }

    /// RFC 6455 §4.1: what a client's opening handshake MUST have besides `Upgrade: websocket`.
    private func checkUpgradeRequest(_ head: HTTPHead, state: DirectionState, offset: UInt64, records: inout [TapRecord]) {
        if head.method != "GET" { diagnose(.upgradeMethodNotGET, state, offset: offset, "upgrade requested with \(head.method ?? "?")", &records) }
        if head.version != "HTTP/1.1" { diagnose(.badHTTPVersion, state, offset: offset, "upgrade requested over \(head.version)", &records) }
        if !head.tokens("connection").contains("upgrade") {
            diagnose(.missingConnectionUpgrade, state, offset: offset, "Connection: \(head.value("connection") ?? "(absent)")", &records)
        }
        let version = head.value("sec-websocket-version")?.trimmingWhitespaceAndCommas()
        if version != "13" { diagnose(.badWebSocketVersion, state, offset: offset, "Sec-WebSocket-Version: \(version ?? "(absent)")", &records) }
    }

    private func openWebSocket(request: HTTPHead, response: HTTPHead, serverState: inout DirectionState, offset: UInt64, records: inout [TapRecord]) {
        var problems: [(DiagnosticCode, String)] = []
        // RFC 6455 §4.1: a client MUST fail a 101 that does not say both of these.
        if !response.tokens("upgrade").contains("websocket") {
            problems.append((.missingUpgradeHeader, "Upgrade: \(response.value("upgrade") ?? "(absent)")"))
        }
        if !response.tokens("connection").contains("upgrade") {
            problems.append((.missingConnectionUpgrade, "Connection: \(response.value("connection") ?? "(absent)")"))
        }
        if response.version != "HTTP/1.1" { problems.append((.badHTTPVersion, "101 sent as \(response.version)")) }
        let key = request.value("sec-websocket-key")?.trimmingWhitespaceAndCommas() ?? ""
        let accept = response.value("sec-websocket-accept")?.trimmingWhitespaceAndCommas()
        let expected = HandshakeAccept.expected(forKey: key)
        if accept != expected {
            problems.append((.badAccept, accept == nil ? "no Sec-WebSocket-Accept (expected \(expected))" : "got \(accept!), expected \(expected) for key \(key)"))
        }

        let offered = ExtensionOffer.parse(request.values("sec-websocket-extensions"))
        let accepted = ExtensionOffer.parse(response.values("sec-websocket-extensions"))
        for ext in accepted {
            if !offered.contains(where: { $0.name == ext.name }) {
                problems.append((.extensionNotOffered, "\(ext.name) was not in the request's Sec-WebSocket-Extensions"))
            }
            if ext.name == "permessage-deflate" && deflate == nil {
                let (config, paramProblems) = PerMessageDeflate.fromResponse(ext)
                deflate = config
                problems += paramProblems.map { (.badExtensionParameter, $0) }
            } else {
                rsvBitsClaimedByUnknownExtension = true
                problems.append((.unsupportedExtension, "\(ext.name): frames are relayed but not decoded by it"))
            }
        }

        let subprotocol = response.value("sec-websocket-protocol")?.trimmingWhitespaceAndCommas()
        if let subprotocol {
            let offeredProtocols = request.values("sec-websocket-protocol").flatMap { $0.split(separator: ",").map { $0.trimmingCharacters() } }
            if !offeredProtocols.contains(subprotocol) {
                problems.append((.subprotocolNotOffered, "\(subprotocol) not in \(offeredProtocols)"))
            }
        }

        let open = OpenRecord(
            client: info.client, server: info.server, url: url(for: request), request: request, response: response,
            subprotocol: subprotocol,
            extensions: response.value("sec-websocket-extensions").flatMap { accepted.isEmpty ? nil : $0 },
            clientTLS: info.clientTLS, upstreamTLS: info.upstreamTLS)
        records.append(record(.open(open)))
        for (code, detail) in problems { diagnose(code, serverState, offset: offset, detail, &records) }

        isWebSocket = true
        // The client's frames start where its upgrade request ended: its offset has not yet moved past
        // the bytes held while the answer was pending.
        webSocketStart = WebSocketStart(clientOffset: client.offset, serverOffset: serverState.offset, negotiationSeen: true,
                                        deflate: deflate, subprotocol: subprotocol, url: open.url)
        serverState.phase = .websocket
        if let deflate {
            serverState.inflater = Inflater()
            serverState.resetsContext = deflate.resetsContext(fromClient: false)
        }
        var clientState = takeState(.clientToServer)
        clientState.phase = .websocket
        if let deflate {
            clientState.inflater = Inflater()
            clientState.resetsContext = deflate.resetsContext(fromClient: true)
        }
        replayHeld(&clientState, records: &records)
        putState(clientState)
    }

    private func emitAnswered(_ records: inout [TapRecord]) {
        guard var exchange = answering else { return }
        answering = nil
        exchange.durationNanoseconds = max(0, now.nanoseconds - answeringStarted.nanoseconds)
        records.append(record(.http(exchange)))
    }

    /// Dissects client bytes that were held while the upgrade answer was pending.
    private func replayHeld(_ state: inout DirectionState, records: inout [TapRecord]) {
        let held = state.held
        state.held = []
        if state.heldOverflow {
            // Part of the stream was not kept: framing cannot be trusted any more.
            state.heldOverflow = false
            state.phase = .opaque
            return
        }
        held.withUnsafeBytes { process($0, state: &state, records: &records) }
    }

    private func url(for request: HTTPHead) -> String {
        let target = request.target ?? "/"
        if !target.hasPrefix("/"), let colon = target.firstIndex(of: ":"), target[colon...].hasPrefix("://") {
            // Absolute form (forward proxy): map http(s) to ws(s).
            let scheme = target[..<colon].lowercased()
            let mapped = scheme == "https" ? "wss" : scheme == "http" ? "ws" : scheme
            return mapped + target[colon...]
        }
        let host = info.authority ?? request.value("host") ?? info.server
        return "\(info.scheme)://\(host)\(target)"
    }

    // MARK: - Frames

    private func processFrames(_ bytes: UnsafeRawBufferPointer, index: inout Int, state: inout DirectionState, records: inout [TapRecord]) {
        if state.resyncing {
            if let carried = state.resyncCarry {
                guard index < bytes.count else { return }
                state.resyncCarry = nil
                if plausibleHeader(carried, bytes[index], state.direction) {
                    endResync(&state, records: &records)
                    // The carried byte starts the frame: parse it before the rest of this piece.
                    withUnsafeBytes(of: carried) { one in
                        var at = 0
                        processFrames(one, index: &at, state: &state, records: &records)
                    }
                } else {
                    state.offset += 1
                    state.resyncSkipped += 1
                }
            }
            if state.resyncing {
                let start = index
                while index + 1 < bytes.count && !plausibleHeader(bytes[index], bytes[index + 1], state.direction) { index += 1 }
                state.offset += UInt64(index - start)
                state.resyncSkipped += UInt64(index - start)
                if index + 1 >= bytes.count {
                    if index < bytes.count {
                        // One byte left: it may begin a header whose second byte is in the next piece.
                        state.resyncCarry = bytes[index]
                        index = bytes.count
                    }
                    return
                }
                endResync(&state, records: &records)
            }
        }
        while true {
            let before = index
            guard let event = state.parser.next(bytes, index: &index) else {
                state.offset += UInt64(index - before)
                return
            }
            state.offset += UInt64(index - before)
            switch event {
            case .header(let header):
                state.frameStart = state.offset - UInt64(header.headerLength)
                state.lastHeader = header
                beginFrame(header, state: &state, records: &records)
            case .payload(let range, let offsetInPayload):
                framePayload(UnsafeRawBufferPointer(rebasing: bytes[range]), offsetInPayload: offsetInPayload, state: &state, records: &records)
            case .frameEnd:
                endFrame(state: &state, records: &records)
            }
        }
    }

    private func endResync(_ state: inout DirectionState, records: inout [TapRecord]) {
        state.resyncing = false
        if state.resyncSkipped > 0 {
            diagnose(.resynchronised, state, offset: state.offset, "skipped \(state.resyncSkipped) bytes after a gap to the next plausible frame header", &records)
        }
        state.resyncSkipped = 0
    }

    private func beginFrame(_ h: FrameHeader, state: inout DirectionState, records: inout [TapRecord]) {
        let at = state.frameStart
        if configuration.frameRecords {
            records.append(record(.frame(FrameRecord(direction: state.direction, header: h, offset: at))))
        }
        if !rsvBitsClaimedByUnknownExtension {
            if h.rsv1 && deflate == nil && midstreamDiscovery == nil { diagnose(.rsvWithoutExtension, state, offset: at, "RSV1 set, no extension negotiated", &records) }
            if h.rsv2 { diagnose(.rsvWithoutExtension, state, offset: at, "RSV2 set", &records) }
            if h.rsv3 { diagnose(.rsvWithoutExtension, state, offset: at, "RSV3 set", &records) }
        }
        if h.opcode.isReserved { diagnose(.reservedOpcode, state, offset: at, "opcode 0x\(String(h.opcode.rawValue, radix: 16))", &records) }
        if state.direction == .clientToServer && !h.masked { diagnose(.unmaskedClientFrame, state, offset: at, "\(h.opcode) frame without mask", &records) }
        if state.direction == .serverToClient && h.masked { diagnose(.maskedServerFrame, state, offset: at, "\(h.opcode) frame with mask", &records) }
        if h.hasLengthMSBSet {
            diagnose(.lengthMSBSet, state, offset: at, "64-bit length \(h.payloadLength)", &records)
        } else if h.hasNonMinimalLength {
            diagnose(.nonMinimalLength, state, offset: at, "\(h.payloadLength) bytes in a \(h.lengthEncoding.rawValue)-bit length", &records)
        }
        if state.sentClose { diagnose(.frameAfterClose, state, offset: at, "\(h.opcode) frame after close", &records) }

        // Mid-stream the negotiation was not captured: RSV1 on a data frame is taken as permessage-deflate.
        let compressedAllowed = deflate != nil || midstreamDiscovery != nil
        if compressedAllowed && h.rsv1 && state.inflater == nil { state.inflater = Inflater() }
        if h.opcode.isControl {
            if !h.fin { diagnose(.fragmentedControlFrame, state, offset: at, "\(h.opcode) with FIN=0", &records) }
            if h.payloadLength > 125 { diagnose(.controlFrameTooLong, state, offset: at, "\(h.opcode) of \(h.payloadLength) bytes", &records) }
            if h.rsv1 && compressedAllowed { diagnose(.rsv1OnControlFrame, state, offset: at, "\(h.opcode) with RSV1", &records) }
            if h.opcode == .close { state.sentClose = true; if firstCloseFrom == nil { firstCloseFrom = state.direction } }
            state.single = MessageAssembly(opcode: h.opcode, offset: at, compressed: false)
            state.target = .single
        } else if h.opcode == .continuation {
            if h.rsv1 && compressedAllowed { diagnose(.rsv1OnContinuation, state, offset: at, "continuation with RSV1", &records) }
            if state.fragmented == nil {
                diagnose(.continuationWithoutMessage, state, offset: at, "no fragmented message is open", &records)
                // Keep its payload visible as a message of its own, opcode 0.
                state.fragmented = newDataMessage(.continuation, rsv1: false, offset: at, firstFrameLength: h.payloadLength)
            }
            state.target = .fragmented
        } else {
            let message = newDataMessage(h.opcode, rsv1: h.rsv1 && compressedAllowed, offset: at, firstFrameLength: h.payloadLength)
            if var open = state.fragmented {
                diagnose(.dataFrameInsideFragmentedMessage, state, offset: at, "\(h.opcode) frame while a \(open.opcode) message is open", &records)
                if !h.fin {
                    // A second fragmented message replaces the first: report the first as cut short.
                    open.incomplete = true
                    emitMessage(&open, state: &state, records: &records)
                    // The first message's compressed stream stops mid-way: what the inflater holds of
                    // it must not reach the next message, and the sender's window is unknown from here.
                    if open.compressed { state.inflater?.reset() }
                    state.fragmented = message
                    state.target = .fragmented
                } else {
                    state.single = message
                    state.target = .single
                }
            } else if h.fin {
                state.single = message
                state.target = .single
            } else {
                state.fragmented = message
                state.target = .fragmented
            }
        }
        // Lengths are what the sender claims (up to 2^64 - 1 per frame): their sum saturates, it must
        // not trap (two fragments claiming 2^63 each were enough to stop the proxy).
        switch state.target {
        case .single: state.single!.frames += 1; state.single!.wireLength.addSaturating(h.payloadLength)
        case .fragmented: state.fragmented!.frames += 1; state.fragmented!.wireLength.addSaturating(h.payloadLength)
        case .discard: break
        }
    }

    /// A frame header that could start here: a defined opcode, no RSV bits an extension does not allow,
    /// the mask bit this direction must use, and control frames unfragmented and short.
    private func plausibleHeader(_ first: UInt8, _ second: UInt8, _ direction: Direction) -> Bool {
        let opcode = Opcode(rawValue: first & 0x0F)
        guard !opcode.isReserved, first & 0x30 == 0 else { return false }
        let deflatePossible = deflate != nil || midstreamDiscovery != nil
        if first & 0x40 != 0 && (!deflatePossible || opcode.isControl || opcode == .continuation) { return false }
        guard (second & 0x80 != 0) == (direction == .clientToServer) else { return false }
        if opcode.isControl { return first & 0x80 != 0 && second & 0x7F <= 125 }
        return true
    }

    private func newDataMessage(_ opcode: Opcode, rsv1: Bool, offset: UInt64, firstFrameLength: UInt64) -> MessageAssembly {
        var message = MessageAssembly(opcode: opcode, offset: offset, compressed: rsv1)
        if opcode == .text { message.utf8 = UTF8Validator() }
        // Size the previews from the first frame once, rather than growing them segment by segment
        // (for 64 KiB previews that was a copy of the payload's first 128 KiB per message).
        let cap = UInt64(configuration.payloadCap)
        if rsv1 {
            message.rawPayload.reserveCapacity(Int(min(cap, firstFrameLength)))
            message.payload.reserveCapacity(Int(min(cap, firstFrameLength.multipliedReportingOverflow(by: 4).partialValue)))
        } else {
            message.payload.reserveCapacity(Int(min(cap, firstFrameLength)))
        }
        return message
    }

    private func framePayload(_ raw: UnsafeRawBufferPointer, offsetInPayload: UInt64, state: inout DirectionState, records: inout [TapRecord]) {
        guard let header = state.lastHeader else { return }
        // Move the message out while it is worked on, so `state` and the message are separate accesses.
        switch state.target {
        case .discard:
            return
        case .single:
            var message = state.single.take()!
            add(raw, header: header, offsetInPayload: offsetInPayload, to: &message, state: &state, records: &records)
            state.single = message
        case .fragmented:
            var message = state.fragmented.take()!
            add(raw, header: header, offsetInPayload: offsetInPayload, to: &message, state: &state, records: &records)
            state.fragmented = message
        }
    }

    private func add(_ raw: UnsafeRawBufferPointer, header: FrameHeader, offsetInPayload: UInt64, to message: inout MessageAssembly, state: inout DirectionState, records: inout [TapRecord]) {
        let cap = configuration.payloadCap
        let needsBytes = message.compressed || message.utf8 != nil || message.payload.count < cap || message.opcode.isControl
        guard needsBytes else {
            message.length += UInt64(raw.count)
            message.truncated = true
            return
        }
        if !message.compressed && configuration.payloadCap - message.payload.count >= raw.count {
            // Common case: the piece fits the preview. Unmask it in place there, no scratch copy.
            let start = message.payload.count
            message.payload.append(contentsOf: raw)
            message.payload.withUnsafeMutableBytes { all in
                let piece = UnsafeMutableRawBufferPointer(rebasing: all[start...])
                if let key = header.maskKey { Masking.apply(key: key, offset: offsetInPayload, to: piece) }
                message.utf8?.feed(UnsafeRawBufferPointer(piece))
            }
            message.length += UInt64(raw.count)
            return
        }
        // Unmask into scratch space; the wire bytes themselves are never touched. Unmasked (server)
        // frames are read where they are.
        guard let key = header.maskKey else {
            addUnmasked(raw, to: &message, state: &state, records: &records)
            return
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: raw)
        Masking.apply(key: key, offset: offsetInPayload, to: &scratch)
        scratch.withUnsafeBytes { plain in addUnmasked(plain, to: &message, state: &state, records: &records) }
    }

    private func addUnmasked(_ plain: UnsafeRawBufferPointer, to message: inout MessageAssembly, state: inout DirectionState, records: inout [TapRecord]) {
        let cap = configuration.payloadCap
        if message.compressed && !message.inflateFailed && !message.inflateStopped, let inflater = state.inflater {
            if message.rawPayload.count < cap { message.rawPayload.append(contentsOf: plain.prefix(cap - message.rawPayload.count)) }
            do {
                try inflater.inflate(plain) { out in self.append(out, to: &message) }
            } catch {
                inflateFailed(&message, error: error, state: &state, records: &records)
            }
            checkInflateLimit(&message, state: &state, records: &records)
        } else if message.compressed {
            if message.rawPayload.count < cap { message.rawPayload.append(contentsOf: plain.prefix(cap - message.rawPayload.count)) }
        } else {
            append(plain, to: &message)
        }
    }

    private func append(_ plain: UnsafeRawBufferPointer, to message: inout MessageAssembly) {
        message.length += UInt64(plain.count)
        message.utf8?.feed(plain)
        let room = configuration.payloadCap - message.payload.count
        if room >= plain.count {
            message.payload.append(contentsOf: plain)
        } else {
            if room > 0 { message.payload.append(contentsOf: plain.prefix(room)) }
            message.truncated = true
        }
    }

    private func inflateFailed(_ message: inout MessageAssembly, error: Error, state: inout DirectionState, records: inout [TapRecord]) {
        message.inflateFailed = true
        let detail: String
        if case Inflater.Failure.invalid(let text) = error { detail = text } else { detail = "\(error)" }
        let context = state.resetsContext ? "" : "; context reset, later messages that refer back will fail too"
        diagnose(.inflateFailed, state, offset: message.offset, "\(detail)\(context)", &records)
        // Out of sync: start from an empty window so messages that do not refer back can still decode.
        state.inflater?.reset()
    }

    private func checkInflateLimit(_ message: inout MessageAssembly, state: inout DirectionState, records: inout [TapRecord]) {
        guard !message.inflateStopped && message.length > configuration.maxInflatedMessage else { return }
        message.inflateStopped = true
        diagnose(.inflateLimitExceeded, state, offset: message.offset, "stopped after \(message.length) inflated bytes (limit \(configuration.maxInflatedMessage))", &records)
    }

    private func endFrame(state: inout DirectionState, records: inout [TapRecord]) {
        switch state.target {
        case .discard:
            break
        case .single:
            var message = state.single!
            state.single = nil
            finishMessage(&message, state: &state, records: &records)
        case .fragmented:
            if state.lastHeader?.fin ?? true {
                var message = state.fragmented!
                state.fragmented = nil
                finishMessage(&message, state: &state, records: &records)
            }
        }
        state.target = .discard
        state.lastHeader = nil
    }

    private func finishMessage(_ message: inout MessageAssembly, state: inout DirectionState, records: inout [TapRecord]) {
        if message.compressed && !message.inflateFailed && !message.inflateStopped, let inflater = state.inflater {
            do {
                try inflater.finishMessage(resetContext: state.resetsContext) { out in self.append(out, to: &message) }
            } catch {
                inflateFailed(&message, error: error, state: &state, records: &records)
            }
            checkInflateLimit(&message, state: &state, records: &records)
        } else if message.inflateStopped {
            // The window no longer matches the sender's: drop it rather than decode garbage later.
            state.inflater?.reset()
        }
        emitMessage(&message, state: &state, records: &records)
    }

    private func emitMessage(_ message: inout MessageAssembly, state: inout DirectionState, records: inout [TapRecord]) {
        var closeCode: UInt16?
        var closeReason: String?
        if message.opcode == .close {
            let body = message.payload
            if body.count == 1 {
                diagnose(.closeBodyOneByte, state, offset: message.offset, "close body of 1 byte", &records)
            } else if body.count >= 2 {
                let code = UInt16(body[0]) << 8 | UInt16(body[1])
                closeCode = code
                if !CloseCode.isAllowedOnWire(code) { diagnose(.closeCodeNotAllowed, state, offset: message.offset, "close code \(code)", &records) }
                let reason = Array(body[2...])
                if !UTF8Validator.isValid(reason) { diagnose(.invalidUTF8CloseReason, state, offset: message.offset, "reason bytes \(Hex.encode(reason.prefix(32)))", &records) }
                // A code alone has no reason (null in records), which is not the same as an empty one.
                closeReason = reason.isEmpty ? nil : String(decoding: reason, as: UTF8.self)
            }
        }
        var textValidity = MessageRecord.TextValidity.unchecked
        if let utf8 = message.utf8, !message.inflateFailed {
            let sawEveryByte = !message.inflateStopped && !message.incomplete
            if !utf8.isValid {
                textValidity = .invalid
            } else if sawEveryByte {
                textValidity = utf8.isComplete ? .valid : .invalid
            }
            if sawEveryByte && textValidity == .invalid {
                diagnose(.invalidUTF8Text, state, offset: message.offset, utf8.isValid ? "text ends inside a UTF-8 sequence" : "invalid UTF-8 byte sequence", &records)
            }
        }
        let payload = message.inflateFailed ? message.rawPayload : message.payload
        let length = message.inflateFailed ? message.wireLength : message.length
        records.append(record(.message(MessageRecord(
            direction: state.direction, opcode: message.opcode, frames: message.frames, wireLength: message.wireLength,
            length: length, compressed: message.compressed, payload: payload,
            truncated: message.truncated || UInt64(payload.count) < length, closeCode: closeCode, closeReason: closeReason,
            inflateFailed: message.inflateFailed, incomplete: message.incomplete, offset: message.offset,
            textValidity: textValidity))))
    }

    // MARK: - Helpers

    private func record(_ body: TapRecord.Body) -> TapRecord {
        TapRecord(connection: connection, timestamp: now, body: body)
    }

    private func diagnose(_ code: DiagnosticCode, _ state: DirectionState, offset: UInt64, _ detail: String, _ records: inout [TapRecord]) {
        records.append(record(.diagnostic(Diagnostic(code: code, direction: state.direction, offset: offset, detail: detail))))
    }
}

extension String {
    func trimmingWhitespaceAndCommas() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\t" || c == "," { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "," { s = s.dropLast() }
        return String(s)
    }
}

extension UInt64 {
    mutating func addSaturating(_ other: UInt64) {
        let (sum, overflow) = addingReportingOverflow(other)
        self = overflow ? .max : sum
    }
}

/// What a connection's upgrade settled, as the relay needs it to take over the frames.
public struct WebSocketStart: Sendable, Equatable {
    /// Offset in the client's stream of its first byte after the upgrade request head.
    public var clientOffset: UInt64
    /// Offset in the server's stream of its first byte after the 101 head.
    public var serverOffset: UInt64
    /// False for a mid-stream session: the handshake was not seen, compression is a guess from RSV1.
    public var negotiationSeen: Bool
    /// The permessage-deflate parameters the server accepted; nil when it accepted none.
    public var deflate: PerMessageDeflate?
    public var subprotocol: String?
    /// The URL of the connection's `open` record (rules match on it).
    public var url: String

    public init(clientOffset: UInt64, serverOffset: UInt64, negotiationSeen: Bool, deflate: PerMessageDeflate?, subprotocol: String?,
                url: String = "") {
        self.clientOffset = clientOffset
        self.serverOffset = serverOffset
        self.negotiationSeen = negotiationSeen
        self.deflate = deflate
        self.subprotocol = subprotocol
        self.url = url
    }
}
