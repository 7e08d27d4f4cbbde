import Testing
import WSTapDissect
import WSTapFilter
import WSTapRecording
import WSTapReplay
import WSTapRules
import WSTapTestSupport
import WSTapWire

/// The replay core driven by hand: events in, actions out, the server played by the test.
final class ReplayPlay {
    let session: ReplaySession
    var now = Timestamp(nanoseconds: 1_000_000_000_000)
    /// What the session sent after its handshake, frame by frame, unmasked.
    private(set) var sent: [SeenFrame] = []
    private(set) var request = ""
    private(set) var wake: Timestamp?
    private(set) var finished = false
    private(set) var records: [TapRecord] = []
    private var pending: [UInt8] = []
    private var random = SplitMix(seed: 7)

    init(_ recorded: Recording.Connection, options: ReplayOptions = ReplayOptions(), response extensions: String? = nil) {
        var generator = SplitMix(seed: 7)
        session = ReplaySession(recorded: recorded, target: ReplayTarget(secure: false, host: "127.0.0.1", port: 9100, path: nil),
                                options: options, random: { generator.next() })
        _ = random
        perform(session.handle(.connected(serverAddress: "127.0.0.1:9100", at: now)))
        let key = request.split(separator: "\r\n").first { $0.lowercased().hasPrefix("sec-websocket-key:") }.map { String($0.dropFirst(18).drop { $0 == " " }) } ?? ""
        server(Wire.response(extensions: extensions, accept: HandshakeAccept.expected(forKey: key)))
    }

    func server(_ bytes: [UInt8]) { perform(session.handle(.received(bytes, at: now))) }
    func serverText(_ text: String) { server(Wire.text(text)) }

    /// Time passes to the wake-up the session asked for.
    func timerFires() {
        guard let wake else { return }
        now = wake
        perform(session.handle(.timer(at: wake)))
    }

    var sentTexts: [String] { sent.filter { $0.opcode == .text }.map { String(decoding: $0.payload, as: UTF8.self) } }

    private func perform(_ actions: [ReplaySession.Action]) {
        for action in actions {
            switch action {
            case .send(let bytes):
                if request.isEmpty {
                    request = String(decoding: bytes, as: UTF8.self)
                    continue
                }
                pending += bytes
                let (frames, rest) = SeenFrame.parse(pending)
                sent += frames
                pending = rest ?? []
            case .emit(let more): records += more
            case .wake(let at): wake = at
            case .close: break
            case .finished: finished = true
            }
        }
    }
}

func message(_ direction: Direction, _ text: String, at ms: Int64 = 0, compressed: Bool = false) -> Recording.Message {
    Recording.Message(direction: direction, opcode: .text, payload: Array(text.utf8), length: UInt64(text.utf8.count), truncated: false,
                      compressed: compressed, frameLengths: [UInt64(text.utf8.count)], time: Timestamp(nanoseconds: 1_000_000_000_000 + ms * 1_000_000))
}

func recorded(_ messages: [Recording.Message], request: HTTPHead? = nil, subprotocol: String? = nil) -> Recording.Connection {
    let head = request ?? HTTPHead(startLine: .request(method: "GET", target: "/chat?room=1", version: "HTTP/1.1"), headers: [
        ("Host", "recorded.example:8000"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("X-Order", "kept"),
        ("Sec-WebSocket-Key", Wire.key), ("Sec-WebSocket-Version", "13"),
    ])
    var open = OpenRecord(client: "c", server: "s", url: "ws://recorded.example:8000/chat?room=1", request: head, response: nil,
                          subprotocol: subprotocol, extensions: nil, clientTLS: nil, upstreamTLS: nil)
    open.discovery = "handshake"
    return Recording.Connection(id: 4, open: open, openedAt: Timestamp(nanoseconds: 1_000_000_000_000), messages: messages)
}

@Suite struct ReplaySessionTests {
    @Test func theHandshakeIsTheRecordedHeadWithAFreshKeyAndTheTargetsHost() {
        let play = ReplayPlay(recorded([]))
        let lines = play.request.split(separator: "\r\n").map(String.init)
        #expect(lines.first == "GET /chat?room=1 HTTP/1.1")
        #expect(lines.dropFirst().map { String($0.prefix { $0 != ":" }) } == ["Host", "Upgrade", "Connection", "X-Order", "Sec-WebSocket-Key", "Sec-WebSocket-Version"])
        #expect(lines.contains("Host: 127.0.0.1:9100") && lines.contains("X-Order: kept"))
        #expect(!lines.contains("Sec-WebSocket-Key: \(Wire.key)"))
        var keep = ReplayOptions()
        keep.keepKey = true
        keep.addHeaders = [("X-Order", "changed"), ("X-New", "1")]
        keep.dropHeaders = ["connection"]
        let kept = ReplayPlay(recorded([]), options: keep).request
        #expect(kept.contains("Sec-WebSocket-Key: \(Wire.key)") && kept.contains("X-Order: changed\r\n") && kept.contains("X-New: 1\r\n"))
        #expect(!kept.contains("Connection:"))
    }

    /// Client message i goes once the server messages recorded before it have come, however the
    /// server's bytes are split.
    @Test func replyPacingWaitsForTheRecordedReplies() {
        let play = ReplayPlay(recorded([message(.clientToServer, "a"), message(.serverToClient, "A"), message(.clientToServer, "b"),
                                        message(.serverToClient, "B1"), message(.serverToClient, "B2"), message(.clientToServer, "c"),
                                        message(.serverToClient, "C")]))
        #expect(play.sentTexts == ["a"])
        play.serverText("A")
        #expect(play.sentTexts == ["a", "b"])
        let b1b2 = Wire.text("B1") + Wire.text("B2")
        play.server(Array(b1b2.prefix(3)))
        #expect(play.sentTexts == ["a", "b"])
        play.server(Array(b1b2.dropFirst(3)))
        #expect(play.sentTexts == ["a", "b", "c"])
        #expect(!play.sent.contains { $0.opcode == .close })
        play.serverText("C")
        #expect(play.sent.last?.opcode == .close && play.sent.last?.payload == [0x03, 0xE8])
        #expect(!play.finished)
        play.server(Wire.frame(.close, [0x03, 0xE8]))
        #expect(play.finished && play.session.result.timeouts.isEmpty && play.session.result.sent == 3)
        #expect(play.sent.allSatisfy { $0.masked })
        #expect(ReplayDiff.compare(recorded: play.session.recordedReplies, replayed: play.session.receivedReplies).isEmpty)
    }

    /// asap sends every client message at once, and still waits for the recorded replies before its
    /// close: closing at once made a server that stops at a close (Python websockets) look as if it
    /// had answered nothing, and --diff reported every reply missing.
    @Test func asapSendsEverythingThenWaitsForTheRepliesBeforeClosing() {
        var options = ReplayOptions()
        options.pace = .asap
        let play = ReplayPlay(recorded([message(.clientToServer, "a"), message(.serverToClient, "A"), message(.clientToServer, "b"),
                                        message(.serverToClient, "B")]), options: options)
        #expect(play.sentTexts == ["a", "b"])
        #expect(!play.sent.contains { $0.opcode == .close })
        play.serverText("A")
        #expect(!play.sent.contains { $0.opcode == .close })
        play.serverText("B")
        #expect(play.sent.last?.opcode == .close)
        play.server(Wire.frame(.close, [0x03, 0xE8]))
        #expect(play.finished && play.session.result.timeouts.isEmpty)
        #expect(ReplayDiff.compare(recorded: play.session.recordedReplies, replayed: play.session.receivedReplies).isEmpty)
    }

    @Test func aReplyThatNeverComesTimesOutAndTheReplayGoesOn() {
        var options = ReplayOptions()
        options.stepTimeout = .seconds(2)
        let play = ReplayPlay(recorded([message(.clientToServer, "a"), message(.serverToClient, "A"), message(.clientToServer, "b")]), options: options)
        #expect(play.sentTexts == ["a"])
        play.timerFires()
        #expect(play.sentTexts == ["a", "b"])
        #expect(play.session.result.timeouts.count == 1 && play.session.result.timeouts[0].contains("client message 2"))
        // The missing reply also keeps the close waiting, then the close goes.
        play.timerFires()
        #expect(play.sent.last?.opcode == .close)
        play.timerFires()
        #expect(play.finished)
    }

    /// With --correlate json.id the replies may come in any order.
    @Test func correlatedRepliesMayComeInAnyOrder() throws {
        var options = ReplayOptions()
        options.correlate = try JSONPath(parsing: "json.id")
        let play = ReplayPlay(recorded([message(.clientToServer, #"{"id":1}"#), message(.clientToServer, #"{"id":2}"#),
                                        message(.serverToClient, #"{"id":1,"r":"x"}"#), message(.serverToClient, #"{"id":2,"r":"y"}"#),
                                        message(.clientToServer, #"{"id":3}"#)]), options: options)
        #expect(play.sentTexts == [#"{"id":1}"#, #"{"id":2}"#])
        play.serverText(#"{"id":2,"r":"y"}"#)
        #expect(play.sentTexts.count == 2)
        play.serverText(#"{"id":1,"r":"x"}"#)
        #expect(play.sentTexts.count == 3)
        let differences = ReplayDiff.compare(recorded: play.session.recordedReplies, replayed: play.session.receivedReplies, correlate: options.correlate)
        #expect(differences.isEmpty)
        #expect(!ReplayDiff.compare(recorded: play.session.recordedReplies, replayed: play.session.receivedReplies).isEmpty)  // in order they differ
    }

    @Test func aCapturedValueIsSubstitutedIntoLaterMessages() throws {
        var options = ReplayOptions()
        options.captures = [ReplayOptions.Capture(name: "token", path: try JSONPath(parsing: "json.session.token"))]
        let play = ReplayPlay(recorded([message(.clientToServer, #"{"op":"login"}"#), message(.serverToClient, #"{"session":{"token":"old"}}"#),
                                        message(.clientToServer, #"{"op":"get","token":"{{token}}"}"#)]), options: options)
        play.serverText(#"{"session":{"token":"t-42"}}"#)
        #expect(play.sentTexts.last == #"{"op":"get","token":"t-42"}"#)
    }

    /// Without a placeholder: the recorded token in a later message becomes the replayed one.
    @Test func theRecordedValueOfACaptureIsReplacedByTheReplayedOne() throws {
        var options = ReplayOptions()
        options.captures = [ReplayOptions.Capture(name: "token", path: try JSONPath(parsing: "json.token"))]
        let play = ReplayPlay(recorded([message(.clientToServer, "login"), message(.serverToClient, #"{"token":"rec-1"}"#),
                                        message(.clientToServer, #"{"op":"get","token":"rec-1","again":"rec-1"}"#)]), options: options)
        play.serverText(#"{"token":"new-2"}"#)
        #expect(play.sentTexts.last == #"{"op":"get","token":"new-2","again":"new-2"}"#)
    }

    /// Negotiated permessage-deflate: client messages go compressed (RSV1), and inflate back.
    @Test func compressedWhenTheServerAcceptsDeflate() throws {
        let texts = ["hello hello hello", "hello again, hello"]
        let play = ReplayPlay(recorded(texts.map { message(.clientToServer, $0, compressed: true) }), response: "permessage-deflate")
        #expect(play.sent.prefix(2).allSatisfy { $0.rsv1 })
        let inflater = ZlibReferenceInflater()
        var out: [String] = []
        for frame in play.sent.prefix(2) {
            var plain: [UInt8] = []
            try frame.payload.withUnsafeBytes { try inflater.inflate($0) { plain += $0 } }
            try inflater.finishMessage(resetContext: false) { plain += $0 }
            out.append(String(decoding: plain, as: UTF8.self))
        }
        #expect(out == texts)
        // The new session's records show them as sent, inflated.
        let recordedTexts = play.records.compactMap { if case .message(let m) = $0.body, m.direction == .clientToServer, m.opcode == .text { String(decoding: m.payload, as: UTF8.self) } else { nil } }
        #expect(recordedTexts == texts)
    }

    /// "Replay with this message changed": rules act on what is sent, and are tallied per rule.
    @Test func rulesChangeDropAndDuplicateWhatIsSent() throws {
        var options = ReplayOptions()
        options.rules = RuleEngine(rules: try [
            "[price] json.op=buy => set json.qty 0",
            "[quiet] text=noise => drop",
            "[twice] text=again => duplicate",
            "[later] text=again => hold",
        ].map { try RuleParser.parse($0) })
        let play = ReplayPlay(recorded([message(.clientToServer, #"{"op":"buy","qty":5}"#), message(.clientToServer, "noise"),
                                        message(.clientToServer, "again")]), options: options)
        #expect(play.sentTexts == [#"{"op":"buy","qty":0}"#, "again", "again"])
        let result = play.session.result
        #expect(result.changedByRule == ["price": 1] && result.droppedByRule == ["quiet": 1])
        #expect(result.notes.count == 1 && result.notes[0].contains("'later'") && result.notes[0].contains("hold"))
        // The new session's records show what was sent, not what was recorded.
        let recordedTexts = play.records.compactMap { if case .message(let m) = $0.body, m.direction == .clientToServer, m.opcode == .text { String(decoding: m.payload, as: UTF8.self) } else { nil } }
        #expect(recordedTexts == play.sentTexts)
    }

    @Test func pingsAreAnsweredAndAnUnansweredUpgradeFails() {
        let play = ReplayPlay(recorded([message(.clientToServer, "a"), message(.serverToClient, "A")]))
        play.server(Wire.frame(.ping, [1, 2]))
        #expect(play.sent.contains { $0.opcode == .pong && $0.payload == [1, 2] && $0.masked })

        var generator = SplitMix(seed: 1)
        var options = ReplayOptions()
        options.stepTimeout = .seconds(1)
        let silent = ReplaySession(recorded: recorded([]), target: ReplayTarget(secure: false, host: "h", port: 1, path: "/x"), options: options,
                                   random: { generator.next() })
        let start = Timestamp(nanoseconds: 0)
        _ = silent.handle(.connected(serverAddress: "h:1", at: start))
        #expect(silent.handle(.timer(at: start.adding(.seconds(1)))).contains(.finished))
        #expect(silent.result.failure?.contains("no answer to the upgrade") == true)
    }
}

@Suite struct ReplayDiffTests {
    @Test func jsonIsComparedAsStructureWithIgnoredPaths() throws {
        let a = [message(.serverToClient, #"{"type":"tick","price":101.5,"ts":1,"tags":["a"]}"#)]
        let sameReordered = [message(.serverToClient, #"{"tags":["a"],"ts":1,"price":1.015e2,"type":"tick"}"#)]
        #expect(ReplayDiff.compare(recorded: a, replayed: sameReordered).isEmpty)
        let changed = [message(.serverToClient, #"{"type":"tick","price":99,"ts":2,"tags":["a"],"new":true}"#)]
        let differences = ReplayDiff.compare(recorded: a, replayed: changed, ignore: [try JSONPath(parsing: "json.ts")])
        #expect(differences.map(\.description) == ["server message 1: json.price: recorded 101.5, replayed 99; json.new: not recorded, replayed true"])
        #expect(ReplayDiff.compare(recorded: a + a, replayed: a).map(\.description) == [#"server message 2: missing in the replay (recorded 49 B "{"type":"tick","price":101.5,"ts":1,"tags":["a"]}")"#])
        #expect(ReplayDiff.compare(recorded: [message(.serverToClient, "plain")], replayed: [message(.serverToClient, "plain!")]).count == 1)
    }
}
