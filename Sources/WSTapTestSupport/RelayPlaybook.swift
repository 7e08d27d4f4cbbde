import NIOCore
import WSTapDissect
import WSTapRelay
import WSTapWire

/// Drives a `RelaySession` as the NIO shell would, keeping what each action did: the bytes each side
/// received, the records, and the other actions in order. Tests read a conversation as events in and
/// outcomes out, without sockets.
public final class RelayPlaybook {
    public let session: RelaySession
    /// Everything sent to each side so far, in order.
    public private(set) var sentToClient: [UInt8] = []
    public private(set) var sentToUpstream: [UInt8] = []
    public private(set) var records: [TapRecord] = []
    /// Every action, in the order the session returned them.
    public private(set) var actions: [RelaySession.Action] = []
    /// Messages handed to exec hooks, in order, and the tickets the session said to forget.
    public private(set) var hookRequests: [HookRequest] = []
    public private(set) var forgottenHooks: [UInt64] = []

    /// The session's clock: `fixtureTime` until a test moves it on (`advance`).
    public let clock: PlaybookClock

    public init(_ session: RelaySession, clock: PlaybookClock = PlaybookClock()) {
        self.session = session
        self.clock = clock
    }

    /// A reverse-mode session to ws://127.0.0.1:9000, as most transcripts need; with `changes`, rules
    /// apply to its WebSocket messages.
    public convenience init(configuration: StreamDissector.Configuration = .init(), changes: ChangeSettings? = nil) {
        let clock = PlaybookClock()
        self.init(RelaySession(connection: 1, mode: .reverse(UpstreamURL(host: "127.0.0.1", port: 9000)), changes: changes,
                               clientAddress: "127.0.0.1:5000", proxyAddress: "127.0.0.1:8080", configuration: configuration,
                               clock: { clock.now }), clock: clock)
    }

    /// The timer the session asked for last (nil when it cancelled it or asked for none).
    public private(set) var timers: [RelaySession.Timer: Timestamp] = [:]

    /// Moves the clock on by `milliseconds` and fires the timers that are due, as the shell would.
    public func advance(milliseconds: Int64) {
        clock.now = Timestamp(nanoseconds: clock.now.nanoseconds + milliseconds * 1_000_000)
        for (timer, due) in timers.sorted(by: { $0.value < $1.value }) where due <= clock.now { fire(timer) }
    }

    /// Fires a running timer now, due or not, as a shell whose clock runs ahead would.
    public func fire(_ timer: RelaySession.Timer) {
        timers[timer] = nil
        handle(.timerFired(timer))
    }

    /// Hands the event to the session and returns what it asked for (also kept in the totals).
    @discardableResult
    public func handle(_ event: RelaySession.Event) -> [RelaySession.Action] {
        take(session.handle(event))
    }

    /// A control API command, as the shell hands it over between events.
    @discardableResult
    public func steer(_ command: SteerCommand) -> SteerAnswer {
        let (answer, produced) = session.steer(command)
        take(produced)
        return answer
    }

    @discardableResult
    private func take(_ produced: [RelaySession.Action]) -> [RelaySession.Action] {
        for action in produced {
            switch action {
            case .send(.client, let buffer): sentToClient += buffer.readableBytesView
            case .send(.upstream, let buffer): sentToUpstream += buffer.readableBytesView
            case .emit(let emitted): records += emitted
            case .startTimer(let timer, let after):
                timers[timer] = clock.now.adding(after)
            case .cancelTimer(let timer): timers[timer] = nil
            case .askHook(let request): hookRequests.append(request)
            case .forgetHook(let ticket): forgottenHooks.append(ticket)
            default: break
            }
        }
        actions += produced
        return produced
    }

    /// The hook's answer to the `index`th request (0 is the first), as the shell reports it.
    @discardableResult public func answer(_ index: Int, _ answer: HookAnswer) -> [RelaySession.Action] {
        handle(.hookAnswered(ticket: hookRequests[index].ticket, answer))
    }

    @discardableResult public func client(_ bytes: [UInt8]) -> [RelaySession.Action] { handle(.clientData(ByteBuffer(bytes: bytes))) }
    @discardableResult public func upstream(_ bytes: [UInt8]) -> [RelaySession.Action] { handle(.upstreamData(ByteBuffer(bytes: bytes))) }

    /// Reverse mode up to an open WebSocket: the client's upgrade request, the connect, the server's
    /// 101. Returns the actions of the three events.
    @discardableResult
    public func openWebSocket(request: [UInt8] = Wire.request(), response: [UInt8] = Wire.response()) -> [RelaySession.Action] {
        client(request) + handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")) + upstream(response)
    }

    /// Plays `steps` (client steps as client data, server steps as upstream data).
    public func play(_ steps: [Step]) {
        for (direction, bytes) in steps {
            if direction == .clientToServer { client(bytes) } else { upstream(bytes) }
        }
    }
}

/// A clock a test moves by hand.
public final class PlaybookClock: @unchecked Sendable {
    public var now = fixtureTime
    public init() {}
}

/// Random bits from a seed, as `ChangeSettings.random` wants them (mask keys, probabilities). For one
/// thread: tests and fuzz targets drive one session at a time.
public final class SeededRandom: @unchecked Sendable {
    private var generator: SplitMix
    public init(seed: UInt64) { generator = SplitMix(seed: seed) }
    public func next() -> UInt64 { generator.next() }
}

extension Array where Element == RelaySession.Action {
    public var connectTarget: String? {
        for case .connect(let host, let port, _) in self { return "\(host):\(port)" }
        return nil
    }

    public var connectTLS: UpstreamTLS?? {
        for case .connect(_, _, let tls) in self { return .some(tls) }
        return .none
    }

    public func sent(to side: RelaySession.Side) -> [UInt8] {
        var bytes: [UInt8] = []
        for case .send(let s, let buffer) in self where s == side { bytes += buffer.readableBytesView }
        return bytes
    }

    public func closes(_ side: RelaySession.Side) -> Bool { contains { if case .close(let s) = $0 { s == side } else { false } } }
    public func resets(_ side: RelaySession.Side) -> Bool { contains { if case .reset(let s) = $0 { s == side } else { false } } }
    public func shutsDown(_ side: RelaySession.Side) -> Bool { contains { if case .shutdownOutput(let s) = $0 { s == side } else { false } } }

    public var records: [TapRecord] {
        var all: [TapRecord] = []
        for case .emit(let records) in self { all += records }
        return all
    }

    public var switches: Bool { contains { if case .switchUpstream = $0 { true } else { false } } }
    public var switchTarget: String? {
        for case .switchUpstream(let host, let port, _) in self { return "\(host):\(port)" }
        return nil
    }
}

/// A frame as a peer understands it: header bits, opcode and the unmasked payload, with whether it was
/// masked but not the key. Frames wstap builds itself get fresh random mask keys, so tests compare
/// these instead of bytes.
public struct SeenFrame: Equatable, CustomStringConvertible {
    public var fin: Bool
    public var rsv1: Bool, rsv2: Bool, rsv3: Bool
    public var opcode: Opcode
    public var masked: Bool
    public var payload: [UInt8]

    public init(fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false, rsv3: Bool = false, opcode: Opcode, masked: Bool, payload: [UInt8]) {
        self.fin = fin
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.rsv3 = rsv3
        self.opcode = opcode
        self.masked = masked
        self.payload = payload
    }

    /// The frames in `bytes` and what is left after the last whole frame (nil if nothing is).
    public static func parse(_ bytes: [UInt8]) -> (frames: [SeenFrame], rest: [UInt8]?) {
        var parser = FrameParser()
        var frames: [SeenFrame] = []
        var current: (FrameHeader, [UInt8])?
        var index = 0
        var lastEnd = 0
        bytes.withUnsafeBytes { raw in
            while let event = parser.next(raw, index: &index) {
                switch event {
                case .header(let header): current = (header, [])
                case .payload(let range, _): current?.1 += raw[range]
                case .frameEnd:
                    guard let (header, masked) = current else { continue }
                    var payload = masked
                    if let key = header.maskKey { Masking.apply(key: key, offset: 0, to: &payload) }
                    frames.append(SeenFrame(fin: header.fin, rsv1: header.rsv1, rsv2: header.rsv2, rsv3: header.rsv3, opcode: header.opcode,
                                            masked: header.maskKey != nil, payload: payload))
                    current = nil
                    lastEnd = index
                }
            }
        }
        return (frames, lastEnd < bytes.count ? Array(bytes[lastEnd...]) : nil)
    }

    public var description: String {
        "\(opcode)\(fin ? "" : " FIN=0")\(rsv1 ? " RSV1" : "")\(masked ? " masked" : "") \(payload.count) bytes"
    }
}
