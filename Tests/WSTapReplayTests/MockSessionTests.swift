import Testing
import WSTapDissect
import WSTapFilter
import WSTapRecording
import WSTapReplay
import WSTapTestSupport
import WSTapWire

/// The mock core driven by hand: the test is the client.
final class MockPlay {
    let session: MockSession
    var now = Timestamp(nanoseconds: 1_000_000_000_000)
    private(set) var response = ""
    private(set) var received: [SeenFrame] = []
    private(set) var upstreamSent: [[UInt8]] = []
    private(set) var connectedUpstream: ReplayTarget?
    private(set) var wake: Timestamp?
    private(set) var finished = false
    private(set) var records: [TapRecord] = []
    private var pending: [UInt8] = []

    init(_ script: MockScript, options: MockOptions = MockOptions(), request: [UInt8] = Wire.request(path: "/chat?room=1")) {
        var generator = SplitMix(seed: 3)
        session = MockSession(script: script, options: options, connectionID: 1, clientAddress: "127.0.0.1:5000", listenAddress: "127.0.0.1:9000",
                              secure: false, at: now, random: { generator.next() })
        perform(session.start())
        client(request)
    }

    func client(_ bytes: [UInt8]) { perform(session.handle(.received(bytes, at: now))) }
    func clientText(_ text: String) { client(Wire.text(text, mask: 0x1234_5678)) }
    func timerFires() {
        guard let wake else { return }
        now = wake
        perform(session.handle(.timer(at: wake)))
    }

    var texts: [String] { received.filter { $0.opcode == .text }.map { String(decoding: $0.payload, as: UTF8.self) } }

    func perform(_ actions: [MockSession.Action]) {
        for action in actions {
            switch action {
            case .send(let bytes):
                if response.isEmpty {
                    response = String(decoding: bytes, as: UTF8.self)
                    continue
                }
                pending += bytes
                let (frames, rest) = SeenFrame.parse(pending)
                received += frames
                pending = rest ?? []
            case .emit(let more): records += more
            case .wake(let at): wake = at
            case .connectUpstream(let target): connectedUpstream = target
            case .sendUpstream(let bytes): upstreamSent.append(bytes)
            case .close, .closeUpstream, .notice: break
            case .finished: finished = true
            }
        }
    }
}

private func chat(_ messages: [Recording.Message], extensions: String? = nil) -> MockScript {
    var connection = recorded(messages)
    connection.open.extensions = extensions
    return MockScript(Recording(connections: [connection]))
}

@Suite struct MockSessionTests {
    /// The upgrade is answered, on-connect messages go at once, each request gets its reply, however
    /// the client's bytes are split.
    @Test func repliesFollowTheirRequestsWhateverTheSplit() {
        let script = chat([message(.serverToClient, "welcome"), message(.clientToServer, "a"), message(.serverToClient, "A1"),
                           message(.serverToClient, "A2"), message(.clientToServer, "b"), message(.serverToClient, "B")])
        let bytes = Wire.request(path: "/chat?room=1") + Wire.text("a", mask: 1) + Wire.text("b", mask: 2)
        for cut in 1..<bytes.count {
            var generator = SplitMix(seed: 3)
            let session = MockSession(script: script, options: MockOptions(), connectionID: 1, clientAddress: "c", listenAddress: "s", secure: false,
                                      at: Timestamp(nanoseconds: 0), random: { generator.next() })
            var out: [UInt8] = []
            for piece in [Array(bytes[..<cut]), Array(bytes[cut...])] {
                for case .send(let b) in session.handle(.received(piece, at: Timestamp(nanoseconds: 1))) { out += b }
            }
            let text = String(decoding: out, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n") && text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
            let head = text.utf8.count - (text.split(separator: "\r\n\r\n", maxSplits: 1).last.map { $0.utf8.count } ?? 0)
            let frames = SeenFrame.parse(Array(out[head...])).frames
            #expect(frames.map { String(decoding: $0.payload, as: UTF8.self) } == ["welcome", "A1", "A2", "B"], "cut at \(cut)")
            #expect(frames.allSatisfy { !$0.masked })
        }
    }

    @Test func matchingLooksAheadThenWrapsSoEachClientKeepsItsPlace() {
        let play = MockPlay(chat([message(.clientToServer, "a"), message(.serverToClient, "A"), message(.clientToServer, "b"),
                                  message(.serverToClient, "B"), message(.clientToServer, "c"), message(.serverToClient, "C")]))
        play.clientText("b")
        play.clientText("c")
        play.clientText("a")
        play.clientText("a")
        #expect(play.texts == ["B", "C", "A", "A"])
        #expect(play.session.summary.matched == 4 && play.session.summary.unmatched == 0)
    }

    @Test func jsonMatchingLeavesIgnoredPathsOut() throws {
        var options = MockOptions()
        options.match = .json
        options.ignore = [try JSONPath(parsing: "json.ts"), try JSONPath(parsing: "json.id")]
        let play = MockPlay(chat([message(.clientToServer, #"{"op":"get","id":1,"ts":5}"#), message(.serverToClient, "got")]), options: options)
        play.clientText(#"{ "ts": 99, "op": "get", "id": 7 }"#)
        play.clientText(#"{"op":"put","id":1,"ts":5}"#)
        #expect(play.texts == ["got"])
        #expect(play.session.summary.matched == 1 && play.session.summary.unmatched == 1)
    }

    @Test func regexMatchingTakesTheRecordedTextAsAPattern() {
        var options = MockOptions()
        options.match = .regex
        let play = MockPlay(chat([message(.clientToServer, "get item [0-9]+"), message(.serverToClient, "item")]), options: options)
        play.clientText("get item 42")
        play.clientText("get item 42 now")
        #expect(play.texts == ["item"])
    }

    @Test func unmatchedMessagesAreEchoedOrCloseTheConnection() {
        var echo = MockOptions()
        echo.unmatched = .echo
        let echoed = MockPlay(chat([message(.clientToServer, "a"), message(.serverToClient, "A")]), options: echo)
        echoed.clientText("zzz")
        #expect(echoed.texts == ["zzz"])

        var close = MockOptions()
        close.unmatched = .close(code: 4001)
        let closed = MockPlay(chat([message(.clientToServer, "a"), message(.serverToClient, "A")]), options: close)
        closed.clientText("zzz")
        let frame = closed.received.last
        #expect(frame?.opcode == .close && frame?.payload.prefix(2) == [0x0F, 0xA1])
        #expect(!closed.finished)
        closed.client(Wire.frame(.close, [0x0F, 0xA1], mask: 9))
        #expect(closed.finished)
        #expect(closed.records.last.map { if case .end = $0.body { true } else { false } } == true)
    }

    /// Passthrough: the first unmatched message opens the real server's connection; it is sent once
    /// the upgrade is answered, and the real server's messages come back to the client.
    @Test func unmatchedMessagesPassThroughToARealServer() {
        var options = MockOptions()
        options.unmatched = .passthrough(to: ReplayTarget(secure: false, host: "127.0.0.1", port: 9100, path: "/real"))
        let play = MockPlay(chat([message(.clientToServer, "a"), message(.serverToClient, "A")]), options: options)
        play.clientText("zzz")
        #expect(play.connectedUpstream?.port == 9100 && play.upstreamSent.isEmpty)
        play.perform(play.session.handle(.upstreamConnected(address: "127.0.0.1:9100", at: play.now)))
        let request = String(decoding: play.upstreamSent.first ?? [], as: UTF8.self)
        #expect(request.hasPrefix("GET /real HTTP/1.1\r\n") && request.contains("Host: 127.0.0.1:9100\r\n"))
        let key = request.split(separator: "\r\n").first { $0.hasPrefix("Sec-WebSocket-Key: ") }.map { String($0.dropFirst(19)) } ?? ""
        play.perform(play.session.handle(.upstreamReceived(Wire.response(accept: HandshakeAccept.expected(forKey: key)) + Wire.text("from real"), at: play.now)))
        let forwarded = SeenFrame.parse(play.upstreamSent.dropFirst().flatMap { $0 }).frames
        #expect(forwarded.map { String(decoding: $0.payload, as: UTF8.self) } == ["zzz"] && forwarded.allSatisfy(\.masked))
        play.clientText("a")
        #expect(play.texts == ["from real", "A"])
        #expect(play.session.summary.passedThrough == 1)
    }

    @Test func timingPaceWaitsTheRecordedDelays() {
        var options = MockOptions()
        options.pace = .timing
        let play = MockPlay(chat([message(.clientToServer, "a", at: 0), message(.serverToClient, "A1", at: 200), message(.serverToClient, "A2", at: 500)]),
                            options: options)
        let start = play.now
        play.clientText("a")
        #expect(play.texts.isEmpty && play.wake == start.adding(.milliseconds(200)))
        play.timerFires()
        #expect(play.texts == ["A1"] && play.wake == start.adding(.milliseconds(500)))
        play.timerFires()
        #expect(play.texts == ["A1", "A2"])
    }

    @Test func deflateIsAcceptedAndRepliesInflate() throws {
        let play = MockPlay(chat([message(.clientToServer, "a"), message(.serverToClient, "hello hello hello", compressed: true)], extensions: "permessage-deflate"),
                            request: Wire.request(extensions: "permessage-deflate; client_max_window_bits; server_no_context_takeover", path: "/chat"))
        #expect(play.response.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"))
        play.clientText("a")
        let frame = try #require(play.received.first)
        #expect(frame.rsv1)
        let inflater = ZlibReferenceInflater()
        var plain: [UInt8] = []
        try frame.payload.withUnsafeBytes { try inflater.inflate($0) { plain += $0 } }
        try inflater.finishMessage(resetContext: true) { plain += $0 }
        #expect(String(decoding: plain, as: UTF8.self) == "hello hello hello")
    }

    @Test func aClientThatIsNotWebSocketOrNeverAsksIsRefusedOrTimedOut() {
        let play = MockPlay(chat([]), request: Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(play.response.hasPrefix("HTTP/1.1 400 Bad Request\r\n") && play.finished)
        let old = MockPlay(chat([]), request: Array("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(Wire.key)\r\nSec-WebSocket-Version: 8\r\n\r\n".utf8))
        #expect(old.response.hasPrefix("HTTP/1.1 426 Upgrade Required\r\n") && old.response.contains("Sec-WebSocket-Version: 13\r\n"))
        let silent = MockPlay(chat([]), request: Array("GET / HT".utf8))
        #expect(!silent.finished)
        silent.timerFires()
        #expect(silent.finished && silent.session.summary.notes.contains { $0.contains("no upgrade request") })
    }
}
