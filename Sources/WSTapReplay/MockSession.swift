import WSTapDissect
import WSTapFilter
import WSTapRecording
import WSTapWire

/// One client of `wstap mock`: answers its upgrade, matches each of its messages against the script
/// of the recorded connection it asked for and sends the recorded reply. Sans-IO: bytes and time
/// in, bytes, records and wake-ups out; with `--unmatched passthrough` it also drives a client leg
/// to a real server (`connectUpstream`, `sendUpstream`).
///
/// The session is recorded by an ordinary `StreamDissector` fed both ways, so the mock's records
/// (and its journal) are the proxy's records; the client's messages it decodes are what is matched.
public final class MockSession {
    public enum Event {
        case received([UInt8], at: Timestamp)
        /// The client ended its side.
        case inputEnded(at: Timestamp)
        case timer(at: Timestamp)
        case upstreamConnected(address: String, at: Timestamp)
        case upstreamReceived([UInt8], at: Timestamp)
        case upstreamEnded(at: Timestamp)
        case upstreamFailed(reason: String, at: Timestamp)
    }

    public enum Action {
        /// Bytes to the client.
        case send([UInt8])
        case emit([TapRecord])
        case wake(at: Timestamp)
        /// Close the client's connection once what was sent is written.
        case close
        case connectUpstream(ReplayTarget)
        case sendUpstream([UInt8])
        case closeUpstream
        /// Something the user should know now (the real server failed), said once.
        case notice(String)
        /// Nothing more will happen; `summary` says how it went.
        case finished
    }

    public private(set) var summary = MockSummary()
    private let script: MockScript
    private let options: MockOptions
    private let connectionID: UInt64
    private let random: () -> UInt64
    private let dissector: StreamDissector
    private var head = HTTPHeadParser(expecting: .request)
    private var phase = Phase.awaitingRequest
    private var served: MockScript.Connection?
    /// The next step expected: matching looks there first, then further on, then from the start.
    private var position = 0
    private var deflater: Deflater?
    private var matcher: Matcher?
    /// Replies waiting for their time (pacing `timing`), in the order they go.
    private var queue: [(due: Timestamp, reply: MockScript.Reply)] = []
    private var deadline: Timestamp
    private var request: HTTPHead?
    private var upstream: Upstream?
    private var bytesIn: UInt64 = 0
    private var bytesOut: UInt64 = 0
    private var clientEndedFirst = true

    private enum Phase { case awaitingRequest, open, closing, done }

    public init(script: MockScript, options: MockOptions, connectionID: UInt64, clientAddress: String, listenAddress: String,
                secure: Bool, at now: Timestamp, random: @escaping () -> UInt64) {
        self.script = script
        self.options = options
        self.connectionID = connectionID
        self.random = random
        var configuration = StreamDissector.Configuration()
        let longest = script.connections.flatMap { $0.steps.map(\.request.length) }.max() ?? 0
        configuration.maxInflatedMessage = options.maxInflate
        configuration.payloadCap = Int(min(max(UInt64(options.payloadCap), longest), options.maxInflate))
        var info = ConnectionInfo(client: clientAddress, server: listenAddress, scheme: secure ? "wss" : "ws")
        info.authority = listenAddress
        dissector = StreamDissector(connection: connectionID, info: info, configuration: configuration)
        deadline = now.adding(options.timeout)
    }

    /// Call once the connection is up (after TLS): asks for the wake-up of the request timeout.
    public func start() -> [Action] { [.wake(at: deadline)] }

    public func handle(_ event: Event) -> [Action] {
        // Once the end is written (`.finished` was returned), nothing more: the shell may still
        // deliver what was in flight.
        guard !endWritten else { return [] }
        var out: [Action] = []
        var records: [TapRecord] = []
        let now: Timestamp
        switch event {
        case .received(let bytes, let at):
            now = at
            bytesIn += UInt64(bytes.count)
            if phase == .awaitingRequest {
                upgrade(bytes, now: now, into: &out, records: &records)
            } else if phase != .done {
                dissector.feed(bytes, from: .clientToServer, at: now, into: &records)
            }
        case .inputEnded(let at):
            now = at
            if phase == .awaitingRequest { summary.notes.append("the client closed before finishing its upgrade request") }
            phase = .done
        case .timer(let at):
            now = at
            if (phase == .awaitingRequest || phase == .closing) && now >= deadline {
                summary.notes.append(phase == .awaitingRequest ? "no upgrade request within \(ReplaySession.seconds(options.timeout))"
                                                               : "the client did not answer the close within \(ReplaySession.seconds(options.timeout))")
                clientEndedFirst = false
                phase = .done
            }
        case .upstreamConnected(_, let at):
            now = at
            upstream?.connected(into: &out)
        case .upstreamReceived(let bytes, let at):
            now = at
            upstream?.dissector.feed(bytes, from: .serverToClient, at: now, into: &upstreamRecords)
        case .upstreamEnded(let at):
            now = at
            upstream?.dissector.finish(at: now, into: &upstreamRecords)
            if let upstream, upstream.state != .closed {
                upstream.state = .closed
                if phase == .open { out.append(.notice("the real server \(upstream.target) closed the connection; unmatched messages are ignored from here on")) }
            }
        case .upstreamFailed(let reason, let at):
            now = at
            if let upstream, upstream.state != .closed {
                upstream.state = .closed
                out.append(.notice("passthrough to \(upstream.target) failed: \(reason); \(Self.unmatchedMessages(upstream.queuedCount)) and any later ones are ignored"))
                upstream.dropQueued()
            }
        }
        takeUpstreamRecords(now: now, into: &out, records: &records)
        summary.passedThrough = upstream?.forwarded ?? 0
        for record in records { take(record, now: now, into: &out, records: &records) }
        if phase == .open || phase == .closing { sendDue(now: now, into: &out, records: &records) }
        // Records first: what the actions send is in them.
        let sent = out.reduce(0) { if case .send(let b) = $1 { $0 + b.count } else { $0 } }
        bytesOut += UInt64(sent)
        if phase == .done, !endWritten {
            endWritten = true
            dissector.finish(at: now, into: &records)
            let end = ConnectionEnd(first: (clientEndedFirst ? .clientToServer : .serverToClient, .fin), closeFrameFrom: dissector.firstCloseFrom,
                                    isWebSocket: served != nil)
            let (reason, closedBy) = end.reason
            records.append(TapRecord(connection: connectionID, timestamp: now, body: .end(EndRecord(
                reason: reason, closedBy: closedBy, clientBytes: bytesIn, serverBytes: bytesOut))))
            if let upstream {
                if upstream.queuedCount > 0 {
                    summary.notes.append("\(Self.unmatchedMessages(upstream.queuedCount)) never reached \(upstream.target): its connection was not up yet")
                }
                if upstream.state != .closed { out.append(.closeUpstream) }
            }
            out += [.close, .finished]
        }
        if !records.isEmpty { out.insert(.emit(records), at: 0) }
        return out
    }

    private var endWritten = false

    private static func unmatchedMessages(_ n: Int) -> String { n == 1 ? "1 unmatched message" : "\(n) unmatched messages" }
    private var upstreamRecords: [TapRecord] = []

    // MARK: - The upgrade

    private func upgrade(_ bytes: [UInt8], now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        let parsed: (head: HTTPHead, consumed: Int)?
        do {
            parsed = try head.feed(bytes)
        } catch {
            dissector.feed(bytes, from: .clientToServer, at: now, into: &records)
            refuse(400, "Bad Request", detail: "not an HTTP request: \(error)", now: now, into: &out, records: &records)
            return
        }
        guard let (request, consumed) = parsed else {
            dissector.feed(bytes, from: .clientToServer, at: now, into: &records)
            return
        }
        dissector.feed(Array(bytes[..<consumed]), from: .clientToServer, at: now, into: &records)
        self.request = request
        guard request.isWebSocketUpgradeRequest, let key = request.value("sec-websocket-key") else {
            refuse(400, "Bad Request", detail: "wstap mock serves WebSocket upgrades only", now: now, into: &out, records: &records)
            return
        }
        guard request.value("sec-websocket-version") == "13" else {
            refuse(426, "Upgrade Required", detail: "Sec-WebSocket-Version 13 only", extra: [("Sec-WebSocket-Version", "13")],
                   now: now, into: &out, records: &records)
            return
        }
        let chosen = script.connection(forTarget: request.target ?? "/")
        served = chosen
        summary.script = chosen?.id
        summary.target = request.target
        var headers: [(name: String, value: String)] = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                         ("Sec-WebSocket-Accept", HandshakeAccept.expected(forKey: key))]
        let offered = request.values("sec-websocket-protocol").flatMap { $0.split(separator: ",").map { String($0.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()) } }
        if let recorded = chosen?.subprotocol {
            if offered.contains(recorded) { headers.append(("Sec-WebSocket-Protocol", recorded)) } else if !offered.isEmpty {
                summary.notes.append("the client offered subprotocols \(offered.joined(separator: ", ")), the recording used \(recorded): none chosen")
            }
        }
        if chosen?.deflate == true, let offer = ExtensionOffer.parse(request.values("sec-websocket-extensions")).first(where: { $0.name == "permessage-deflate" }) {
            let (answer, bits, noContextTakeover) = Self.acceptDeflate(offer)
            headers.append(("Sec-WebSocket-Extensions", answer))
            deflater = Deflater(windowBits: bits, noContextTakeover: noContextTakeover)
        }
        let response = HTTPHead(startLine: .response(version: "HTTP/1.1", status: 101, reason: "Switching Protocols"), headers: headers)
        let responseBytes = response.encoded()
        dissector.feed(responseBytes, from: .serverToClient, at: now, into: &records)
        out.append(.send(responseBytes))
        phase = .open
        if let chosen {
            schedule(chosen.onConnect, after: now)
        } else {
            summary.notes.append("the recording has no WebSocket connection to serve")
        }
        let rest = Array(bytes[consumed...])
        if !rest.isEmpty { dissector.feed(rest, from: .clientToServer, at: now, into: &records) }
    }

    /// The answer to a permessage-deflate offer (RFC 7692 §7.1): the client's no-context-takeover
    /// requests granted, its window for our messages honoured; the window and takeover the mock's
    /// own messages are then compressed with.
    static func acceptDeflate(_ offer: ExtensionOffer) -> (answer: String, windowBits: Int, noContextTakeover: Bool) {
        var parts = ["permessage-deflate"]
        var bits = 15
        var noTakeover = false
        for (name, value) in offer.parameters {
            switch name.lowercased() {
            case "server_no_context_takeover":
                parts.append("server_no_context_takeover")
                noTakeover = true
            case "client_no_context_takeover":
                parts.append("client_no_context_takeover")
            case "server_max_window_bits":
                if let value, let n = Int(value), (8...15).contains(n) {
                    // zlib cannot make raw deflate with an 8-bit window; 9 is the smallest it writes.
                    bits = max(n, 9)
                    parts.append("server_max_window_bits=\(bits)")
                }
            default:
                break
            }
        }
        return (parts.joined(separator: "; "), bits, noTakeover)
    }

    private func refuse(_ status: Int, _ reason: String, detail: String, extra: [(name: String, value: String)] = [],
                        now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        let body = Array((detail + "\n").utf8)
        let response = HTTPHead(startLine: .response(version: "HTTP/1.1", status: status, reason: reason),
                                headers: extra + [("Content-Type", "text/plain"), ("Content-Length", "\(body.count)"), ("Connection", "close")])
        let bytes = response.encoded() + body
        dissector.feed(bytes, from: .serverToClient, at: now, into: &records)
        out.append(.send(bytes))
        summary.notes.append("refused with \(status): \(detail)")
        clientEndedFirst = false
        phase = .done
    }

    // MARK: - Messages from the client

    private func take(_ record: TapRecord, now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        guard case .message(let message) = record.body, message.direction == .clientToServer else { return }
        switch message.opcode {
        case .ping:
            if phase == .open { send(.pong, message.payload, compressed: false, shape: nil, now: now, into: &out, records: &records) }
        case .pong:
            break
        case .close:
            if phase == .open {
                // Answer with the client's code (RFC 6455 §5.5.1), then the connection ends.
                send(.close, Array(message.payload.prefix(2)), compressed: false, shape: nil, now: now, into: &out, records: &records)
                upstream?.close(into: &out)
            }
            phase = .done
        default:
            guard phase == .open else { return }
            summary.received += 1
            if let step = match(message) {
                summary.matched += 1
                schedule(step.replies, after: now)
            } else {
                summary.unmatched += 1
                unmatched(message, now: now, into: &out, records: &records)
            }
        }
    }

    private func match(_ message: MessageRecord) -> MockScript.Step? {
        guard let served, !served.steps.isEmpty else { return nil }
        if matcher == nil { matcher = Matcher(steps: served.steps, options: options) }
        let count = served.steps.count
        for offset in 0..<count {
            let index = (position + offset) % count
            if matcher!.matches(message, step: index) {
                position = index + 1
                return served.steps[index]
            }
        }
        return nil
    }

    private func unmatched(_ message: MessageRecord, now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        switch options.unmatched {
        case .ignore:
            break
        case .echo:
            send(message.opcode, message.payload, compressed: deflater != nil && message.compressed, shape: nil, now: now, into: &out, records: &records)
        case .close(let code):
            let body = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array("wstap mock: unmatched message".utf8)
            send(.close, body, compressed: false, shape: nil, now: now, into: &out, records: &records)
            phase = .closing
            deadline = now.adding(options.timeout)
            out.append(.wake(at: deadline))
        case .passthrough(let target):
            if upstream == nil {
                let leg = Upstream(target: target, request: request, connectionID: connectionID, random: random)
                upstream = leg
                out.append(.connectUpstream(target))
            }
            guard let upstream, upstream.state != .closed else { return }
            upstream.forward(message.opcode, message.payload, into: &out)
        }
    }

    /// What the real server said: its data messages go to the client, its pings are answered, its
    /// close is passed on.
    private func takeUpstreamRecords(now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        guard let upstream, !upstreamRecords.isEmpty else { return }
        let taken = upstreamRecords
        upstreamRecords = []
        for record in taken {
            switch record.body {
            case .open:
                upstream.opened(into: &out)
            case .http(let exchange):
                upstream.state = .closed
                out.append(.notice("\(upstream.target) refused the upgrade (\(exchange.response.status ?? 0)); \(Self.unmatchedMessages(upstream.queuedCount)) and any later ones are ignored"))
                upstream.dropQueued()
                out.append(.closeUpstream)
            case .message(let message) where message.direction == .serverToClient:
                switch message.opcode {
                case .ping: upstream.send(.pong, message.payload, into: &out)
                case .pong: break
                case .close:
                    if upstream.state != .closed {
                        upstream.send(.close, Array(message.payload.prefix(2)), into: &out)
                        upstream.state = .closed
                        out.append(.closeUpstream)
                    }
                    if phase == .open {
                        send(.close, message.payload, compressed: false, shape: nil, now: now, into: &out, records: &records)
                        phase = .closing
                        deadline = now.adding(options.timeout)
                        out.append(.wake(at: deadline))
                    }
                default:
                    if phase == .open {
                        send(message.opcode, message.payload, compressed: deflater != nil, shape: nil, now: now, into: &out, records: &records)
                    }
                }
            default:
                break
            }
        }
    }

    // MARK: - Replies

    private func schedule(_ replies: [MockScript.Reply], after now: Timestamp) {
        var last = queue.last?.due ?? now
        for reply in replies {
            let delay = options.pace == .timing ? Int64(Double(reply.delay) / max(options.speed, 0.000_001)) : 0
            let due = max(last, Timestamp(nanoseconds: now.nanoseconds + delay))
            queue.append((due, reply))
            last = due
        }
    }

    private func sendDue(now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        var sent = 0
        while sent < queue.count, queue[sent].due <= now, phase == .open {
            let message = queue[sent].reply.message
            sent += 1
            if message.opcode == .close {
                // The server closed first in the recording: so does the mock, and waits for the answer.
                send(.close, message.payload, compressed: false, shape: nil, now: now, into: &out, records: &records)
                phase = .closing
                deadline = now.adding(options.timeout)
                out.append(.wake(at: deadline))
                break
            }
            let compress = deflater != nil && (message.compressed || message.frameLengths == nil)
            send(message.opcode, message.payload, compressed: compress, shape: message.frameLengths, now: now, into: &out, records: &records)
        }
        queue.removeFirst(sent)
        if phase != .open { queue.removeAll() }
        if let next = queue.first { out.append(.wake(at: next.due)) }
    }

    private func send(_ opcode: Opcode, _ payload: [UInt8], compressed: Bool, shape: [UInt64]?, now: Timestamp,
                      into out: inout [Action], records: inout [TapRecord]) {
        let bytes = MessageFrames.encode(opcode, payload, deflater: compressed ? deflater : nil, shape: shape, mask: nil)
        var more: [TapRecord] = []
        dissector.feed(bytes, from: .serverToClient, at: now, into: &more)
        records += more
        out.append(.send(bytes))
    }

    // MARK: - Matching

    /// The recorded client messages of one script, prepared for the chosen way of matching.
    struct Matcher {
        let steps: [MockScript.Step]
        let options: MockOptions
        private var json: [JSONValue?] = []
        private var patterns: [Regex<AnyRegexOutput>?] = []

        init(steps: [MockScript.Step], options: MockOptions) {
            self.steps = steps
            self.options = options
            switch options.match {
            case .exact: break
            case .json: json = steps.map { step in JSONValue.parse(step.request.payload).map { Self.without(options.ignore, in: $0) } }
            case .regex:
                patterns = steps.map { step in
                    guard step.request.opcode == .text, let text = String(validating: step.request.payload, as: UTF8.self) else { return nil }
                    return try? Regex(text)
                }
            }
        }

        func matches(_ message: MessageRecord, step index: Int) -> Bool {
            let recorded = steps[index].request
            guard message.opcode == recorded.opcode else { return false }
            switch options.match {
            case .json:
                if let expected = json[index] {
                    guard let got = JSONValue.parse(message.payload) else { return false }
                    return ReplayDiff.differs(Self.message(expected), Self.message(Self.without(options.ignore, in: got)), ignore: []) == nil
                }
            case .regex:
                if let pattern = patterns[index] {
                    guard let text = String(validating: message.payload, as: UTF8.self) else { return false }
                    return (try? pattern.wholeMatch(in: text)) != nil
                }
            case .exact:
                break
            }
            return !message.truncated && message.payload == recorded.payload
        }

        private static func without(_ paths: [JSONPath], in value: JSONValue) -> JSONValue {
            paths.reduce(value) { $1.removing(from: $0) ?? $0 }
        }

        private static func message(_ value: JSONValue) -> Recording.Message {
            let bytes = Array(value.serialized.utf8)
            return Recording.Message(direction: .clientToServer, opcode: .text, payload: bytes, length: UInt64(bytes.count), truncated: false,
                                     compressed: false, frameLengths: nil, time: Timestamp(nanoseconds: 0))
        }
    }
}

/// The client leg to a real server for `--unmatched passthrough`: the client's request head with
/// a fresh key and Host pointed at the server, no compression (so nothing has to be re-encoded).
final class Upstream {
    enum State { case connecting, handshaking, open, closed }
    let target: ReplayTarget
    var state = State.connecting
    let dissector: StreamDissector
    private let request: HTTPHead?
    private let random: () -> UInt64
    private var queued: [(Opcode, [UInt8])] = []
    /// Client messages sent on to the server, and those still waiting for its upgrade.
    private(set) var forwarded = 0
    var queuedCount: Int { queued.count }

    init(target: ReplayTarget, request: HTTPHead?, connectionID: UInt64, random: @escaping () -> UInt64) {
        self.target = target
        self.request = request
        self.random = random
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = Int(configuration.maxInflatedMessage)
        configuration.frameRecords = false
        dissector = StreamDissector(connection: connectionID, info: ConnectionInfo(client: "mock", server: target.hostHeader, scheme: target.secure ? "wss" : "ws"),
                                    configuration: configuration)
    }

    func connected(into out: inout [Action]) {
        guard state == .connecting else { return }
        state = .handshaking
        var head = request ?? HTTPHead(startLine: .request(method: "GET", target: "/", version: "HTTP/1.1"), headers: [])
        if let path = target.path { head.setRequestTarget(path) }
        head.setHeader("Host", target.hostHeader)
        head.setHeader("Upgrade", "websocket")
        head.setHeader("Connection", "Upgrade")
        head.setHeader("Sec-WebSocket-Version", "13")
        head.setHeader("Sec-WebSocket-Key", Base64.encode((0..<16).map { _ in UInt8(truncatingIfNeeded: random()) }))
        head.removeHeaders("Sec-WebSocket-Extensions")
        let bytes = head.encoded()
        var ignored: [TapRecord] = []
        dissector.feed(bytes, from: .clientToServer, at: Timestamp(nanoseconds: 0), into: &ignored)
        out.append(.sendUpstream(bytes))
    }

    func opened(into out: inout [Action]) {
        guard state == .handshaking else { return }
        state = .open
        for (opcode, payload) in queued { send(opcode, payload, into: &out) }
        forwarded += queued.count
        queued = []
    }

    func forward(_ opcode: Opcode, _ payload: [UInt8], into out: inout [Action]) {
        if state == .open {
            send(opcode, payload, into: &out)
            forwarded += 1
        } else {
            queued.append((opcode, payload))
        }
    }

    func dropQueued() { queued = [] }

    func send(_ opcode: Opcode, _ payload: [UInt8], into out: inout [Action]) {
        let random = self.random
        out.append(.sendUpstream(MessageFrames.encode(opcode, payload, deflater: nil, shape: nil) { UInt32(truncatingIfNeeded: random()) }))
    }

    func close(into out: inout [Action]) {
        guard state == .open else { return }
        send(.close, [0x03, 0xE8], into: &out)
        state = .closed
        out.append(.closeUpstream)
    }

    typealias Action = MockSession.Action
}
