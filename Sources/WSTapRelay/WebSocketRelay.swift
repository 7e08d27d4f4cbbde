import NIOCore
import WSTapDissect
import WSTapRules
import WSTapWire

/// The sans-IO relay of a connection's WebSocket part, from the buffer after the one that held the 101.
///
/// `RelaySession` routes, answers CONNECT, intercepts TLS and follows HTTP up to the upgrade; once the
/// dissector says WebSocket has started it hands every later byte here. Each direction has its own
/// `DirectionPipe`, so what one direction does (hold a message, re-encode after an edit) never
/// stalls the other. Time comes in with each event; the relay never reads a clock.
///
/// Records go out before the bytes they describe: once a peer has seen a byte, its records are
/// written, so killing wstap at any moment loses nothing a peer has already seen.
public final class WebSocketRelay {
    public enum Event {
        /// Bytes as they arrived from the side that sent them.
        case received(Direction, ByteBuffer, at: Timestamp)
        /// The direction's sender closed (FIN): what is held of it goes now.
        case inputEnded(Direction, at: Timestamp)
        /// The time asked for with `wake(at:)` has come.
        case tick(at: Timestamp)
        /// What the exec hook said about the message of `askHook`'s ticket.
        case hookAnswered(ticket: UInt64, HookAnswer, at: Timestamp)
    }

    public enum Action {
        /// Bytes for the peer of the direction's sender: `.clientToServer` bytes go to the server.
        case send(Direction, ByteBuffer)
        case emit([TapRecord])
        /// Report `tick` at this time (replacing the wake-up asked for before); nil: none is needed.
        case wake(at: Timestamp?)
        /// A rule's `abort` (its name): reset both connections after what was sent; nothing more is.
        case abort(rule: String)
        /// Hand the message to the exec hook; report the verdict as `hookAnswered`.
        case askHook(HookRequest)
        /// The hook took longer than --exec-timeout: the message has gone on; a late verdict changes nothing.
        case hookTimedOut(ticket: UInt64)
    }

    /// What the upgrade settled (offsets, compression): the pipes that change messages need it.
    public let start: WebSocketStart
    private let dissector: StreamDissector
    private var clientToServer: DirectionPipe
    private var serverToClient: DirectionPipe
    private var wakeAt: Timestamp?

    /// - Parameters:
    ///   - dissector: the connection's dissector, already past the 101; it keeps recording every byte.
    ///   - changes: the rules and their settings; nil relays every byte as it comes.
    public init(start: WebSocketStart, dissector: StreamDissector, changes: ChangeSettings? = nil) {
        self.start = start
        self.dissector = dissector
        if let changes {
            let cap = dissector.configuration.payloadCap
            clientToServer = DirectionPipe(ChangingPipe(direction: .clientToServer, start: start, connection: dissector.connection, settings: changes, payloadCap: cap))
            serverToClient = DirectionPipe(ChangingPipe(direction: .serverToClient, start: start, connection: dissector.connection, settings: changes, payloadCap: cap))
        } else {
            clientToServer = DirectionPipe(nil)
            serverToClient = DirectionPipe(nil)
        }
    }

    /// Appends what to do to `actions` (the caller's buffer, reused from read to read: this runs for
    /// every read of every WebSocket connection).
    public func handle(_ event: Event, into actions: inout [Action]) {
        switch event {
        case .received(let direction, let buffer, let time):
            var records: [TapRecord] = []
            buffer.withUnsafeReadableBytes { dissector.feed($0, from: direction, at: time, into: &records) }
            let crossing = direction == .clientToServer
                ? clientToServer.received(buffer, at: time, direction: direction, records: &records, into: &actions)
                : serverToClient.received(buffer, at: time, direction: direction, records: &records, into: &actions)
            hand(crossing, to: direction.opposite, at: time, into: &actions)
        case .inputEnded(let direction, let time):
            var records: [TapRecord] = []
            let crossing = direction == .clientToServer
                ? clientToServer.inputEnded(at: time, direction: direction, records: &records, into: &actions)
                : serverToClient.inputEnded(at: time, direction: direction, records: &records, into: &actions)
            hand(crossing, to: direction.opposite, at: time, into: &actions)
        case .tick(let time):
            // The wake-up asked for has been used: ask again for what is still due, even the same time
            // (the shell's timer runs on a monotonic clock, the records' time is the wall clock's).
            wakeAt = nil
            var records: [TapRecord] = []
            let towardClient = clientToServer.tick(at: time, direction: .clientToServer, records: &records, into: &actions)
            hand(towardClient, to: .serverToClient, at: time, into: &actions)
            records = []
            let towardServer = serverToClient.tick(at: time, direction: .serverToClient, records: &records, into: &actions)
            hand(towardServer, to: .clientToServer, at: time, into: &actions)
        case .hookAnswered(let ticket, let answer, let time):
            // The ticket's low bit says which pipe asked.
            let direction: Direction = ticket & 1 == 0 ? .clientToServer : .serverToClient
            var records: [TapRecord] = []
            let crossing = direction == .clientToServer
                ? clientToServer.hookAnswered(ticket, answer, at: time, direction: direction, records: &records, into: &actions)
                : serverToClient.hookAnswered(ticket, answer, at: time, direction: direction, records: &records, into: &actions)
            hand(crossing, to: direction.opposite, at: time, into: &actions)
        }
        requestWake(into: &actions)
    }

    /// Asks for the earliest wake-up the pipes need, when it changed. Checked for every read: no array built.
    private func requestWake(into actions: inout [Action]) {
        let a = clientToServer.nextWake, b = serverToClient.nextWake
        let next = a == nil ? b : b == nil ? a : min(a!, b!)
        if next != wakeAt {
            wakeAt = next
            actions.append(.wake(at: next))
        }
    }
}

extension WebSocketRelay {
    /// The name the control API's own messages and decisions go by in records.
    public static let controlAPI = "control API"

    /// Carries out what the control API asks, between reads: its actions go to `actions` as an
    /// event's would (records first, then bytes), and the answer comes back at once.
    public func steer(_ command: SteerCommand, at time: Timestamp, into actions: inout [Action]) -> SteerAnswer {
        guard clientToServer.isChanging else {
            return .refused("this connection is relayed without rules, byte for byte: connections opened while wstap runs with --ui (or with rules) can be steered")
        }
        let answer: SteerAnswer
        switch command {
        case .send(let message):
            guard message.opcode == .text || message.opcode == .binary else { return .refused("only text and binary messages can be sent") }
            if message.opcode == .text && !UTF8Validator.isValid(message.payload) { return .refused("a text message must be UTF-8; send it as binary") }
            let action = "send \(message.opcode == .text ? "text" : "binary") to \(message.to.rawValue)"
            for direction in message.to.directions {
                var own = OwnMessage(direction: direction, opcode: message.opcode, payload: message.payload, rule: Self.controlAPI, action: action)
                own.fragments = message.fragments
                own.compressed = message.compressed
                hand([own], to: direction, at: time, into: &actions)
            }
            answer = .done("sent to the \(message.to == .both ? "client and the server" : message.to.rawValue)")
        case .close(let code, let reason, let side):
            guard CloseCode.isAllowedOnWire(code) else { return .refused("close code \(code) may not be sent in a close frame (RFC 6455 §7.4): use 1000–1003, 1007–1014 or 3000–4999") }
            guard reason.utf8.count <= 123 else { return .refused("a close reason is at most 123 bytes of UTF-8 (RFC 6455 §5.5)") }
            let payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8)
            let action = "close \(code) to \(side.rawValue)"
            for direction in side.directions {
                hand([OwnMessage(direction: direction, opcode: .close, payload: payload, rule: Self.controlAPI, action: action)], to: direction, at: time, into: &actions)
            }
            answer = .done("close \(code) sent to the \(side == .both ? "client and the server" : side.rawValue)")
        case .abort:
            actions.append(.abort(rule: Self.controlAPI))
            return .done("both TCP connections reset")
        case .listHolds:
            return .holds(clientToServer.holds + serverToClient.holds)
        case .release(let id, let decision):
            let direction: Direction = id & 1 == 0 ? .clientToServer : .serverToClient
            var records: [TapRecord] = []
            var found: Bool?
            let crossing = direction == .clientToServer
                ? clientToServer.release(hold: id, decision, at: time, direction: direction, found: &found, records: &records, into: &actions)
                : serverToClient.release(hold: id, decision, at: time, direction: direction, found: &found, records: &records, into: &actions)
            hand(crossing, to: direction.opposite, at: time, into: &actions)
            switch found {
            case nil: return .notFound("no message is held as hold \(id) on this connection (it may have gone on already)")
            case false?: return .refused("hold \(id) has its decision already; it goes once the messages held before it have")
            case true?:
                let waiting = (direction == .clientToServer ? clientToServer.holds : serverToClient.holds).contains { $0.id == id }
                answer = .done(waiting ? "decided; it goes once the messages held before it have" : "released")
            }
        }
        requestWake(into: &actions)
        return answer
    }

    /// wstap's own messages (inject, close) that one direction's rules made for the other direction.
    private func hand(_ own: [OwnMessage], to direction: Direction, at time: Timestamp, into actions: inout [Action]) {
        guard !own.isEmpty else { return }
        if direction == .clientToServer {
            clientToServer.send(own, at: time, direction: direction, into: &actions)
        } else {
            serverToClient.send(own, at: time, direction: direction, into: &actions)
        }
    }

    /// The connection is gone: records for what the pipes still held, which never reached its peer.
    public func abandon(at time: Timestamp, into records: inout [TapRecord]) {
        for direction in [Direction.clientToServer, .serverToClient] {
            var out = PipeOutput()
            if direction == .clientToServer { clientToServer.abandon(at: time, into: &out) } else { serverToClient.abandon(at: time, into: &out) }
            records += out.records
        }
    }
}

/// One direction of a WebSocket relay: what arrives from the sender, what leaves for its peer.
/// Without rules every read leaves as it came, as one write, without a copy (the default, and the
/// only mode while no rules are loaded); with rules, messages are gathered, decided on and sent on
/// by its `ChangingPipe`.
struct DirectionPipe {
    /// Nil: pass-through. An optional rather than an enum case, so the pipe is changed in place
    /// (`changing!`) instead of being copied out of the case and back for every read.
    private var changing: ChangingPipe?

    init(_ changing: ChangingPipe?) { self.changing = changing }

    var nextWake: Timestamp? { changing?.nextWake }
    var isChanging: Bool { changing != nil }
    var holds: [HeldMessage] { changing?.holds ?? [] }

    mutating func release(hold id: UInt64, _ decision: HoldDecision, at time: Timestamp, direction: Direction, found: inout Bool?,
                          records: inout [TapRecord], into actions: inout [WebSocketRelay.Action]) -> [OwnMessage] {
        var result: Bool?
        let own = withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in
            result = pipe.release(hold: id, decision, now: time, into: &out)
        }
        found = result
        return own
    }

    /// `records` are the dissector's for this read: they go out before anything the pipe adds.
    /// Each returns wstap's own messages the rules made for the other direction.
    mutating func received(_ buffer: ByteBuffer, at time: Timestamp, direction: Direction, records: inout [TapRecord],
                           into actions: inout [WebSocketRelay.Action]) -> [OwnMessage] {
        guard changing != nil else {
            if !records.isEmpty { actions.append(.emit(records)) }
            actions.append(.send(direction, buffer))
            return []
        }
        return withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in pipe.received(buffer, at: time, into: &out) }
    }

    mutating func inputEnded(at time: Timestamp, direction: Direction, records: inout [TapRecord], into actions: inout [WebSocketRelay.Action]) -> [OwnMessage] {
        withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in pipe.inputEnded(at: time, into: &out) }
    }

    mutating func tick(at time: Timestamp, direction: Direction, records: inout [TapRecord], into actions: inout [WebSocketRelay.Action]) -> [OwnMessage] {
        withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in pipe.tick(at: time, into: &out) }
    }

    mutating func hookAnswered(_ ticket: UInt64, _ answer: HookAnswer, at time: Timestamp, direction: Direction, records: inout [TapRecord],
                               into actions: inout [WebSocketRelay.Action]) -> [OwnMessage] {
        withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in pipe.hookAnswered(ticket, answer, now: time, into: &out) }
    }

    /// wstap's own messages for this direction's receiver.
    mutating func send(_ own: [OwnMessage], at time: Timestamp, direction: Direction, into actions: inout [WebSocketRelay.Action]) {
        var records: [TapRecord] = []
        _ = withChangingPipe(direction: direction, records: &records, into: &actions) { pipe, out in
            for message in own { pipe.send(message, now: time, into: &out) }
        }
    }

    mutating func abandon(at time: Timestamp, into out: inout PipeOutput) {
        guard changing != nil else { return }
        changing!.abandon(at: time, into: &out)
    }

    /// Runs `body` on the changing pipe (nothing for a pass-through) and turns what it produced into actions.
    private mutating func withChangingPipe(direction: Direction, records: inout [TapRecord], into actions: inout [WebSocketRelay.Action],
                                           _ body: (inout ChangingPipe, inout PipeOutput) -> Void) -> [OwnMessage] {
        guard changing != nil else { return [] }
        var out = PipeOutput()
        body(&changing!, &out)
        Self.flush(&out, direction: direction, records: &records, into: &actions)
        // After an abort nothing more goes anywhere.
        return out.abort == nil ? out.forOtherDirection : []
    }

    private static func flush(_ out: inout PipeOutput, direction: Direction, records: inout [TapRecord], into actions: inout [WebSocketRelay.Action]) {
        records += out.records
        if !records.isEmpty { actions.append(.emit(records)) }
        if out.bytes.readableBytes > 0 { actions.append(.send(direction, out.bytes)) }
        for ticket in out.hookTimedOut { actions.append(.hookTimedOut(ticket: ticket)) }
        if let rule = out.abort {
            actions.append(.abort(rule: rule))
            return
        }
        for request in out.hookRequests { actions.append(.askHook(request)) }
    }
}
