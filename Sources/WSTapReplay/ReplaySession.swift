import WSTapDissect
import WSTapFilter
import WSTapRecording
import WSTapRules
import WSTapWire

/// Replays the client side of one recorded connection against a server: events in (connected, bytes
/// from the server, time), actions out (bytes to send, records of the new session, when to wake up).
/// No sockets, no clock, no randomness of its own: the shell passes them in (`wstap replay`).
///
/// The new session is recorded by an ordinary `StreamDissector` fed both ways, so its records are the
/// proxy's records; the server's messages it decodes drive the pacing and the diff.
public final class ReplaySession {
    public enum Event {
        /// TCP (and TLS) is up.
        case connected(serverAddress: String, at: Timestamp)
        case received([UInt8], at: Timestamp)
        /// The server ended its side.
        case inputEnded(at: Timestamp)
        /// A wake-up asked for with `.wake(at:)` (or any later one).
        case timer(at: Timestamp)
        case connectFailed(reason: String, at: Timestamp)
    }

    public enum Action: Equatable {
        case send([UInt8])
        case emit([TapRecord])
        /// Call back with `.timer` at this time.
        case wake(at: Timestamp)
        /// Close the connection (after what was sent is written).
        case close
        /// The replay is over; `result` says how it went.
        case finished

        public static func == (a: Action, b: Action) -> Bool {
            switch (a, b) {
            case (.send(let x), .send(let y)): x == y
            case (.emit(let x), .emit(let y)): x.count == y.count
            case (.wake(let x), .wake(let y)): x == y
            case (.close, .close), (.finished, .finished): true
            default: false
            }
        }
    }

    public let options: ReplayOptions
    public private(set) var result: ReplayResult
    private let recorded: Recording.Connection
    private let target: ReplayTarget
    private let random: () -> UInt64
    private let dissector: StreamDissector

    /// The client's recorded data messages, in order, each with what pacing waits for before it.
    private let script: [Step]
    /// How many server data messages the recording has (checked on every event of the last step).
    private let recordedReplyCount: Int
    private var next = 0
    private var phase = Phase.connecting
    private var key = ""
    private var deflate: PerMessageDeflate?
    private var deflater: Deflater?
    /// Server data messages of the new session, in order.
    private var replies: [Recording.Message] = []
    /// With --correlate: the recorded replies' ids in order; the replayed ids not yet paired with
    /// one of them; how many of them (from the start) are paired. Pacing waits until the ids
    /// recorded before a step are paired, so each reply is looked at once however long the session.
    private let recordedIDs: [String]
    private var unpairedIDs: [String: Int] = [:]
    private var pairedIDs = 0
    private var unkeyedReplies = 0
    private var captured: [String: String] = [:]
    /// Values captured from the recorded replies, by reply position: a later client message that
    /// carries the recorded value gets the replayed one instead (a session token, an id).
    private let recordedCaptures: [Int: [String: String]]
    private var replacements: [(old: String, new: String)] = []
    /// When the wait for the current step began, and when the server last sent anything.
    private var waitingSince = Timestamp(nanoseconds: 0)
    private var lastServerActivity = Timestamp(nanoseconds: 0)
    private var startedAt = Timestamp(nanoseconds: 0)
    private var closeSent = false
    private var closeReceived = false
    private var connected = false
    private var ended = false
    private var bytesSent: UInt64 = 0
    private var bytesReceived: UInt64 = 0

    private enum Phase { case connecting, handshaking, running, closing, done }
    /// The server ended TCP before the replay did.
    private var serverEnded = false
    private var upgraded = false
    /// The request head as sent.
    private var sentHead: HTTPHead?

    /// The new session's `end`, worded as the proxy words it.
    private func endRecord(at now: Timestamp, serverEndedFirst: Bool) -> TapRecord {
        let end = ConnectionEnd(first: (serverEndedFirst ? .serverToClient : .clientToServer, .fin), closeFrameFrom: dissector.firstCloseFrom,
                                isWebSocket: upgraded)
        let (reason, closedBy) = end.reason
        return TapRecord(connection: options.connectionID, timestamp: now, body: .end(EndRecord(
            reason: reason, closedBy: closedBy, clientBytes: bytesSent, serverBytes: bytesReceived)))
    }

    struct Step {
        var message: Recording.Message
        /// Server data messages recorded before it (pacing `reply`, counted).
        var repliesBefore: Int
        /// Their correlation values (pacing `reply` with `--correlate`), and how many had none (they
        /// are counted, as without --correlate: a login reply before the first request with an id).
        var idsBefore: Int
        var unkeyedBefore: Int
        /// When it goes with pacing `timing`, from the start of the session.
        var due: Int64
    }

    public init(recorded: Recording.Connection, target: ReplayTarget, options: ReplayOptions, random: @escaping () -> UInt64) {
        self.recorded = recorded
        self.target = target
        self.options = options
        self.random = random
        var configuration = StreamDissector.Configuration()
        // The diff compares whole payloads: keep as much as the recording has, within the inflate bound.
        let longest = recorded.messages.map(\.length).max() ?? 0
        configuration.payloadCap = Int(min(max(UInt64(options.payloadCap), longest), configuration.maxInflatedMessage))
        var info = ConnectionInfo(client: "replay", server: target.hostHeader, scheme: target.secure ? "wss" : "ws")
        info.authority = target.hostHeader
        dissector = StreamDissector(connection: options.connectionID, info: info, configuration: configuration)
        (script, recordedIDs) = Self.makeScript(recorded, options: options)
        recordedReplyCount = recorded.messages.count { $0.direction == .serverToClient && !$0.opcode.isControl }
        var found: [Int: [String: String]] = [:]
        if !options.captures.isEmpty {
            let replies = recorded.messages.filter { $0.direction == .serverToClient && !$0.opcode.isControl }
            for (index, reply) in replies.enumerated() {
                guard let json = JSONValue.parse(reply.payload) else { continue }
                for capture in options.captures {
                    if let value = capture.path.value(in: json) { found[index, default: [:]][capture.name] = value.text }
                }
            }
        }
        recordedCaptures = found
        result = ReplayResult(recordedConnection: recorded.id, target: target.description)
    }

    static func makeScript(_ recorded: Recording.Connection, options: ReplayOptions) -> (steps: [Step], ids: [String]) {
        var steps: [Step] = []
        var replies = 0
        var ids: [String] = []
        var unkeyed = 0
        var previous = recorded.openedAt.nanoseconds
        var due: Int64 = 0
        for message in recorded.messages where !message.opcode.isControl {
            if message.direction == .serverToClient {
                replies += 1
                if let path = options.correlate {
                    if let id = Self.jsonValue(message.payload, at: path) { ids.append(id) } else { unkeyed += 1 }
                }
                continue
            }
            let gap = max(0, message.time.nanoseconds - previous)
            previous = message.time.nanoseconds
            var wait = Int64(Double(gap) / max(options.speed, 0.000_001))
            if let cap = options.maxGapNanoseconds { wait = min(wait, cap) }
            due += wait
            steps.append(Step(message: message, repliesBefore: replies, idsBefore: ids.count, unkeyedBefore: unkeyed, due: due))
        }
        return (steps, ids)
    }

    /// The recorded server data messages, in order: what the diff compares the new ones with.
    public var recordedReplies: [Recording.Message] { recorded.messages.filter { $0.direction == .serverToClient && !$0.opcode.isControl } }

    // MARK: - Events

    public func handle(_ event: Event) -> [Action] {
        // Once done (`.finished` was returned), nothing more: the shell may still deliver what was in flight.
        guard phase != .done else { return [] }
        var out: [Action] = []
        var records: [TapRecord] = []
        switch event {
        case .connectFailed(let reason, _):
            result.failure = "cannot connect to \(target.description): \(reason)"
            phase = .done
            return [.finished]
        case .connected(let address, let now):
            connected = true
            dissector.updateServer(address)
            startedAt = now
            phase = .handshaking
            let request = handshakeRequest()
            dissector.feed(request, from: .clientToServer, at: now, into: &records)
            out.append(.send(request))
            out.append(.wake(at: now.adding(options.stepTimeout)))
            waitingSince = now
        case .received(let bytes, let now):
            lastServerActivity = now
            bytesReceived += UInt64(bytes.count)
            dissector.feed(bytes, from: .serverToClient, at: now, into: &records)
            for record in records { take(record, now: now, into: &out) }
        case .inputEnded(let now):
            if phase != .done { serverEnded = true }
            var end: [TapRecord] = []
            dissector.finish(at: now, into: &end)
            records += end
            for record in end { take(record, now: now, into: &out) }
            if phase == .handshaking && result.failure == nil { result.failure = "the server closed the connection without answering the upgrade" }
            if phase != .done {
                if phase == .running && next < script.count { result.notes.append("the server closed the connection before \(script.count - next) of the client's messages were sent") }
                phase = .done
                out.append(.close)
                out.append(.finished)
            }
        case .timer(let now):
            if phase == .handshaking, now >= waitingSince.adding(options.stepTimeout) {
                result.failure = "no answer to the upgrade within \(Self.seconds(options.stepTimeout))"
                phase = .done
                out += [.close, .finished]
            }
        }
        if phase == .running || phase == .closing { advance(now: Self.time(of: event), into: &out, records: &records) }
        for action in out { if case .send(let bytes) = action { bytesSent += UInt64(bytes.count) } }
        if phase == .done && connected && !ended {
            ended = true
            result.elapsedNanoseconds = Self.time(of: event).nanoseconds - startedAt.nanoseconds
            records.append(endRecord(at: Self.time(of: event), serverEndedFirst: serverEnded))
        }
        // Records first: what the actions send is already in them.
        if !records.isEmpty { out.insert(.emit(records), at: 0) }
        return out
    }

    private static func time(of event: Event) -> Timestamp {
        switch event {
        case .connected(_, let at), .received(_, let at), .inputEnded(let at), .timer(let at), .connectFailed(_, let at): at
        }
    }

    /// A record of the new session: the handshake's answer, a server message, the end.
    private func take(_ record: TapRecord, now: Timestamp, into out: inout [Action]) {
        switch record.body {
        case .open(let open):
            guard phase == .handshaking else { return }
            handshakeAnswered(open)
            if phase == .running {
                waitingSince = now
                lastServerActivity = now
            }
        case .http(let exchange):
            guard phase == .handshaking else { return }
            result.failure = "the server refused the upgrade: \(exchange.response.status ?? 0) \(exchange.response.reason ?? "")"
            let version = sentHead?.value("sec-websocket-version")
            if let version, version != "13" {
                result.failure! += " (the request says Sec-WebSocket-Version: \(version), as recorded; --header 'Sec-WebSocket-Version: 13' asks for RFC 6455's)"
            }
            phase = .done
            out += [.close, .finished]
        case .diagnostic(let diagnostic) where diagnostic.code == .badAccept:
            result.handshake.append("Sec-WebSocket-Accept is wrong: \(diagnostic.detail)")
        case .message(let message) where message.direction == .serverToClient:
            serverMessage(message, at: record.timestamp, into: &out)
        default:
            break
        }
    }

    private func handshakeAnswered(_ open: OpenRecord) {
        result.subprotocol = open.subprotocol
        result.extensions = open.extensions
        // Differences from the recorded 101 are reported; only a different subprotocol is a difference
        // in behaviour (the extensions offered may differ on purpose: --compression strip).
        if open.subprotocol != recorded.open.subprotocol {
            result.handshake.append("subprotocol: recorded \(recorded.open.subprotocol ?? "none"), replayed \(open.subprotocol ?? "none")")
            result.handshakeDiffers = true
        }
        if open.extensions != recorded.open.extensions && options.compression == .keep {
            result.handshake.append("extensions: recorded \(recorded.open.extensions ?? "none"), replayed \(open.extensions ?? "none")")
        }
        if let value = open.extensions, let offer = ExtensionOffer.parse([value]).first(where: { $0.name == "permessage-deflate" }) {
            deflate = PerMessageDeflate.fromResponse(offer).0
            let bits = deflate?.clientMaxWindowBits ?? 15
            deflater = Deflater(windowBits: bits, noContextTakeover: deflate?.clientNoContextTakeover ?? false)
        }
        phase = .running
        upgraded = true
    }

    private func serverMessage(_ message: MessageRecord, at time: Timestamp, into out: inout [Action]) {
        switch message.opcode {
        case .ping:
            // Any client answers pings; recorded pongs are not replayed (they answered other pings).
            if !closeSent { out.append(.send(frame(.pong, message.payload, compressed: false))) }
        case .pong:
            break
        case .close:
            closeReceived = true
            if !closeSent {
                // The server ends it: answer with its code, as RFC 6455 §5.5.1 asks.
                closeSent = true
                out.append(.send(frame(.close, Array(message.payload.prefix(2)), compressed: false)))
                if next < script.count { result.notes.append("the server closed the connection before \(script.count - next) of the client's messages were sent") }
            }
            phase = .closing
        default:
            let reply = Recording.Message(direction: .serverToClient, opcode: message.opcode, payload: message.payload, length: message.length,
                                          truncated: message.truncated, compressed: message.compressed, inflateFailed: message.inflateFailed,
                                          frameLengths: nil, time: time)
            replies.append(reply)
            if let path = options.correlate {
                if let id = Self.jsonValue(message.payload, at: path) { unpairedIDs[id, default: 0] += 1 } else { unkeyedReplies += 1 }
            }
            if !options.captures.isEmpty, let json = JSONValue.parse(message.payload) {
                for capture in options.captures {
                    guard let value = capture.path.value(in: json) else { continue }
                    captured[capture.name] = value.text
                    if let old = recordedCaptures[replies.count - 1]?[capture.name], !old.isEmpty, old != value.text {
                        replacements.removeAll { $0.old == old }
                        replacements.append((old, value.text))
                    }
                }
            }
        }
    }

    // MARK: - Sending the script

    /// Sends every step whose turn has come; asks to be woken for the next one.
    private func advance(now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        while phase == .running && next < script.count {
            let step = script[next]
            switch readiness(of: step, now: now) {
            case .ready:
                send(step, now: now, into: &out, records: &records)
            case .timedOut(let waitedFor):
                result.timeouts.append("client message \(next + 1): sent after \(Self.seconds(options.stepTimeout)) without \(waitedFor)")
                send(step, now: now, into: &out, records: &records)
            case .wait(let until):
                out.append(.wake(at: until))
                return
            }
        }
        guard phase == .running || phase == .closing, next >= script.count else { return }
        // Every client message is out: wait for the server's recorded answers, then close (asap
        // too: a server may stop answering at a close, and the diff would see replies missing).
        if !closeSent {
            let expected = recordedReplyCount
            // A server still answering is not stalled: the wait runs from the last thing it sent.
            let quietSince = Timestamp(nanoseconds: max(waitingSince.nanoseconds, lastServerActivity.nanoseconds))
            if replies.count < expected && now < quietSince.adding(options.stepTimeout) {
                out.append(.wake(at: quietSince.adding(options.stepTimeout)))
                return
            }
            if replies.count < expected {
                result.timeouts.append("the last \(expected - replies.count) of the server's \(expected) recorded messages did not come within \(Self.seconds(options.stepTimeout))")
            }
            closeSent = true
            phase = .closing
            let recordedClose = recorded.messages.first { $0.direction == .clientToServer && $0.opcode == .close }
            let body = recordedClose?.payload ?? [0x03, 0xE8]
            let bytes = frame(.close, body, compressed: false)
            dissector.feed(bytes, from: .clientToServer, at: now, into: &records)
            out.append(.send(bytes))
            waitingSince = now
            out.append(.wake(at: now.adding(options.stepTimeout)))
            return
        }
        if closeReceived || now >= waitingSince.adding(options.stepTimeout) {
            if !closeReceived { result.notes.append("the server did not answer the close within \(Self.seconds(options.stepTimeout))") }
            phase = .done
            var end: [TapRecord] = []
            dissector.finish(at: now, into: &end)
            records += end
            out += [.close, .finished]
        }
    }

    private enum Readiness {
        case ready
        case wait(until: Timestamp)
        case timedOut(waitedFor: String)
    }

    private func readiness(of step: Step, now: Timestamp) -> Readiness {
        let deadline = waitingSince.adding(options.stepTimeout)
        switch options.pace {
        case .asap:
            return .ready
        case .timing:
            let due = Timestamp(nanoseconds: startedAt.nanoseconds + step.due)
            return now >= due ? .ready : .wait(until: due)
        case .idle(let quiet):
            let due = max(lastServerActivity, waitingSince).adding(quiet)
            return now >= due ? .ready : .wait(until: due)
        case .reply:
            if options.correlate != nil {
                while pairedIDs < step.idsBefore, let count = unpairedIDs[recordedIDs[pairedIDs]], count > 0 {
                    unpairedIDs[recordedIDs[pairedIDs]] = count - 1
                    pairedIDs += 1
                }
                var missing = pairedIDs < step.idsBefore ? [recordedIDs[pairedIDs]] : []
                if missing.isEmpty && unkeyedReplies >= step.unkeyedBefore { return .ready }
                if missing.isEmpty { missing.append("(\(step.unkeyedBefore - unkeyedReplies) without one)") }
                return now >= deadline ? .timedOut(waitedFor: "the replies with \(options.correlate!) \(missing.prefix(3).joined(separator: ", "))") : .wait(until: deadline)
            }
            if replies.count >= step.repliesBefore { return .ready }
            return now >= deadline
                ? .timedOut(waitedFor: "server message \(step.repliesBefore) (\(replies.count) of \(step.repliesBefore) had come)")
                : .wait(until: deadline)
        }
    }

    private func send(_ step: Step, now: Timestamp, into out: inout [Action], records: inout [TapRecord]) {
        next += 1
        waitingSince = now
        var payload = step.message.payload
        if !options.captures.isEmpty, step.message.opcode == .text { payload = substitute(payload) }
        var compress = deflater != nil && (step.message.compressed || step.message.frameLengths == nil)
        var shape = options.reframe == .keep ? step.message.frameLengths : nil
        var copies = 1
        if let engine = options.rules, !engine.rules.isEmpty {
            let outcome = applyRules(engine, to: step.message, payload: payload, compressed: compress)
            if outcome.dropped { return }
            payload = outcome.payload
            for effect in outcome.effects {
                switch effect {
                case .duplicate: copies += 1
                case .uncompressed: compress = false
                case .fragment(let count, let size):
                    let total = UInt64(payload.count)
                    let pieces = max(1, count ?? Int((total + UInt64(max(size ?? 1, 1)) - 1) / UInt64(max(size ?? 1, 1))))
                    shape = Array(repeating: total / UInt64(pieces), count: pieces - 1) + [total - total / UInt64(pieces) * UInt64(pieces - 1)]
                default: break
                }
            }
        }
        for _ in 0..<copies {
            let bytes = frames(step.message.opcode, payload, compressed: compress, shape: shape)
            dissector.feed(bytes, from: .clientToServer, at: now, into: &records)
            out.append(.send(bytes))
        }
        result.sent += 1
    }

    /// The rules' outcome for a client message about to be sent, tallied per rule; actions that mean
    /// nothing to a replay (hold, delay, inject, close, exec, …) are reported once each.
    private func applyRules(_ engine: RuleEngine, to message: Recording.Message, payload: [UInt8], compressed: Bool) -> RuleOutcome {
        let record = MessageRecord(direction: .clientToServer, opcode: message.opcode, frames: message.frameLengths?.count ?? 1,
                                   wireLength: message.length, length: UInt64(payload.count), compressed: compressed, payload: payload,
                                   truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false, incomplete: false, offset: 0)
        let random = self.random
        let outcome = engine.apply(to: record, connectionID: options.connectionID, connection: ConnectionFacts(recorded.open)) {
            Double(random() >> 11) / Double(1 << 53)
        }
        for applied in outcome.applied {
            if outcome.dropped { result.droppedByRule[applied.rule, default: 0] += 1 } else if applied.before != applied.after {
                result.changedByRule[applied.rule, default: 0] += 1
            }
            for action in applied.actions {
                switch action {
                case .replace, .replaceBytes, .setJSON, .deleteJSON, .drop, .duplicate, .fragment, .uncompressed, .mark: continue
                default:
                    let note = "rule '\(applied.rule)': '\(action)' does nothing in a replay (it acts on live traffic); its edits still apply"
                    if !result.notes.contains(note) { result.notes.append(note) }
                }
            }
        }
        return outcome
    }

    /// `{{NAME}}` replaced by the value captured from a reply, and each recorded captured value by
    /// the value the same reply has in the replay.
    private func substitute(_ payload: [UInt8]) -> [UInt8] {
        guard var text = String(validating: payload, as: UTF8.self) else { return payload }
        for (name, value) in captured { text = text.replacingAll("{{\(name)}}", with: value) }
        for (old, new) in replacements { text = text.replacingAll(old, with: new) }
        return Array(text.utf8)
    }

    // MARK: - Handshake and frames

    /// The recorded request head in its order, with a fresh key (unless --keep-key), Host and target
    /// pointed at the target, the extension offer as --compression says, headers added and dropped.
    func handshakeRequest() -> [UInt8] {
        let recordedHead = recorded.open.request
        var headers = recordedHead?.headers ?? [("Host", ""), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                  ("Sec-WebSocket-Key", ""), ("Sec-WebSocket-Version", "13")]
        if recordedHead == nil, recorded.messages.contains(where: \.compressed) {
            headers.append(("Sec-WebSocket-Extensions", "permessage-deflate"))
        }
        let recordedKey = headers.first { $0.name.lowercased() == "sec-websocket-key" }?.value ?? ""
        key = options.keepKey && !recordedKey.isEmpty ? recordedKey : Base64.encode((0..<2).flatMap { _ in Self.bytes(of: random()) })
        let dropped = Set(options.dropHeaders.map { $0.lowercased() } + (options.compression == .strip ? ["sec-websocket-extensions"] : []))
        headers = headers.compactMap { name, value in
            let lower = name.lowercased()
            if dropped.contains(lower) { return nil }
            switch lower {
            case "host": return (name, target.hostHeader)
            case "sec-websocket-key": return (name, key)
            default: return (name, value)
            }
        }
        if !headers.contains(where: { $0.name.lowercased() == "host" }) { headers.insert(("Host", target.hostHeader), at: 0) }
        for (name, value) in options.addHeaders {
            if let index = headers.firstIndex(where: { $0.name.lowercased() == name.lowercased() }) {
                headers[index] = (headers[index].name, value)
            } else {
                headers.append((name, value))
            }
        }
        let path = target.path ?? recordedHead?.target ?? "/"
        let head = HTTPHead(startLine: .request(method: "GET", target: path, version: "HTTP/1.1"), headers: headers)
        sentHead = head
        return head.encoded()
    }

    private func frame(_ opcode: Opcode, _ payload: [UInt8], compressed: Bool) -> [UInt8] {
        frames(opcode, payload, compressed: compressed, shape: nil)
    }

    /// A message as masked frames, with a fresh key each (RFC 6455 §5.3).
    private func frames(_ opcode: Opcode, _ payload: [UInt8], compressed: Bool, shape: [UInt64]?) -> [UInt8] {
        let random = self.random
        return MessageFrames.encode(opcode, payload, deflater: compressed ? deflater : nil, shape: shape) { UInt32(truncatingIfNeeded: random()) }
    }

    // MARK: - Helpers

    static func jsonValue(_ payload: [UInt8], at path: JSONPath) -> String? {
        guard let json = JSONValue.parse(payload), let value = path.value(in: json) else { return nil }
        return value.text
    }

    private static func bytes(of value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    static func seconds(_ duration: Duration) -> String {
        let (s, atto) = duration.components
        let ms = s * 1000 + atto / 1_000_000_000_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }

    /// The replies the new session got, for the diff.
    public var receivedReplies: [Recording.Message] { replies }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            out += rest[..<range.lowerBound]
            out += replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }
}
