import NIOCore
import WSTapDissect

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
        // Checked for every read: no array built.
        let a = clientToServer.nextWake, b = serverToClient.nextWake
        let next = a == nil ? b : b == nil ? a : min(a!, b!)
        if next != wakeAt {
            wakeAt = next
            actions.append(.wake(at: next))
        }
    }
}

extension WebSocketRelay {
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
