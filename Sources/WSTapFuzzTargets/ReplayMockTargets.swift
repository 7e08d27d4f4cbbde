import WSTapDissect
import WSTapFilter
import WSTapRecording
import WSTapReplay
import WSTapTestSupport
import WSTapWire

/// The replay client and the mock server: each reads bytes from a peer nobody vouches for (the
/// server replayed against, the client of the mock).
enum ReplayMockTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "replay-session", input: "a choice of options, then what the server sends, in pieces, with time passing", maxLength: 4096, run: replaySession),
        FuzzTarget(name: "mock-session", input: "a choice of options, then what a client sends, in pieces, with time passing, and a passthrough server's bytes", maxLength: 4096, run: mockSession),
    ]

    /// A recording both targets use: on-connect, JSON requests with replies, a compressed reply.
    static let recording: Recording.Connection = {
        func message(_ direction: Direction, _ text: String, _ ms: Int64, compressed: Bool = false) -> Recording.Message {
            Recording.Message(direction: direction, opcode: .text, payload: Array(text.utf8), length: UInt64(text.utf8.count), truncated: false,
                              compressed: compressed, frameLengths: [UInt64(text.utf8.count)], time: Timestamp(nanoseconds: ms * 1_000_000))
        }
        let head = HTTPHead(startLine: .request(method: "GET", target: "/chat", version: "HTTP/1.1"), headers: [
            ("Host", "h"), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", Wire.key), ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Sec-WebSocket-Protocol", "chat"),
        ])
        let open = OpenRecord(client: "c", server: "s", url: "ws://h/chat", request: head, response: nil, subprotocol: "chat",
                              extensions: "permessage-deflate", clientTLS: nil, upstreamTLS: nil)
        return Recording.Connection(id: 1, open: open, openedAt: Timestamp(nanoseconds: 0), messages: [
            message(.serverToClient, "hello", 1), message(.clientToServer, #"{"id":1,"op":"a"}"#, 2), message(.serverToClient, #"{"id":1,"r":"x"}"#, 3),
            message(.clientToServer, #"{"id":2,"op":"{{t}}"}"#, 4), message(.serverToClient, #"{"id":2,"t":"tok"}"#, 5, compressed: true),
        ])
    }()

    /// Whatever the server sends: the session finishes at most once, writes one `end` and nothing
    /// after it, sends nothing after it closed, and masks every frame it sends.
    static func replaySession(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let choice = reader.byte()
        var options = ReplayOptions()
        options.pace = [.reply, .asap, .timing, .idle(.milliseconds(5))][Int(choice % 4)]
        options.stepTimeout = .milliseconds(50)
        if choice & 4 != 0 { options.correlate = try? JSONPath(parsing: "json.id") }
        if choice & 8 != 0 { options.captures = [ReplayOptions.Capture(name: "t", path: try! JSONPath(parsing: "json.t"))] }
        if choice & 16 != 0 { options.compression = .strip }
        options.payloadCap = 256
        var generator = SplitMix(seed: UInt64(choice))
        let session = ReplaySession(recorded: recording, target: ReplayTarget(secure: false, host: "127.0.0.1", port: 9, path: nil),
                                    options: options, random: { generator.next() })
        var now = Timestamp(nanoseconds: 1_000_000_000)
        var finished = false, closed = false, ended = false, requestSeen = false
        var sent: [UInt8] = []
        func perform(_ actions: [ReplaySession.Action]) {
            FuzzCheck.expect(!finished || actions.isEmpty, "actions after the replay finished")
            for action in actions {
                switch action {
                case .send(let bytes):
                    FuzzCheck.expect(!closed, "bytes sent after closing")
                    if requestSeen { sent += bytes } else { requestSeen = true }
                case .emit(let records):
                    for record in records {
                        FuzzCheck.expect(!ended, "a record after the end record")
                        if case .end = record.body { ended = true }
                    }
                case .close: closed = true
                case .finished: finished = true
                case .wake: break
                }
            }
        }
        perform(session.handle(.connected(serverAddress: "127.0.0.1:9", at: now)))
        // The server's upgrade answer is right or not as the input says; then its bytes.
        if choice & 32 == 0 {
            perform(session.handle(.received(Wire.response(extensions: choice & 64 != 0 ? "permessage-deflate" : nil, protocol: "chat",
                                                            accept: nil), at: now)))
        }
        while !reader.isAtEnd {
            switch reader.choice(4) {
            case 0:
                now = now.adding(.milliseconds(Int64(reader.byte())))
                perform(session.handle(.timer(at: now)))
            default:
                perform(session.handle(.received(reader.piece(max: 300), at: now)))
            }
        }
        perform(session.handle(.inputEnded(at: now)))
        FuzzCheck.expect(finished, "the server's end did not finish the replay")
        let (frames, rest) = SeenFrame.parse(sent)
        FuzzCheck.expect(frames.allSatisfy { $0.masked }, "an unmasked frame from the replay client")
        FuzzCheck.expect((rest ?? []).isEmpty, "the replay client sent bytes that are not whole frames")
    }

    /// Whatever a client sends: the mock finishes at most once, writes one `end` and nothing after
    /// it, sends nothing after it closed, and asks for one passthrough connection at most.
    static func mockSession(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let choice = reader.byte()
        var options = MockOptions()
        options.match = MockOptions.Match.allCases[Int(choice % 3)]
        options.ignore = [try! JSONPath(parsing: "json.id")]
        options.pace = choice & 4 != 0 ? .timing : .reply
        options.unmatched = [.ignore, .echo, .close(code: 4001), .passthrough(to: ReplayTarget(secure: false, host: "127.0.0.1", port: 9, path: nil))][Int(choice >> 3) % 4]
        options.payloadCap = 256
        options.timeout = .milliseconds(50)
        var generator = SplitMix(seed: UInt64(choice))
        let script = MockScript(Recording(connections: [recording]))
        var now = Timestamp(nanoseconds: 1_000_000_000)
        let session = MockSession(script: script, options: options, connectionID: 1, clientAddress: "c", listenAddress: "s", secure: false,
                                  at: now, random: { generator.next() })
        var finished = false, closed = false, ended = false, upstreamAsked = false
        func perform(_ actions: [MockSession.Action]) {
            FuzzCheck.expect(!finished || actions.isEmpty, "actions after the mock session finished")
            for action in actions {
                switch action {
                case .send: FuzzCheck.expect(!closed, "bytes sent after closing")
                case .emit(let records):
                    for record in records {
                        FuzzCheck.expect(!ended, "a record after the end record")
                        if case .end = record.body { ended = true }
                    }
                case .close: closed = true
                case .finished: finished = true
                case .connectUpstream:
                    FuzzCheck.expect(!upstreamAsked, "a second passthrough connection")
                    upstreamAsked = true
                case .sendUpstream: FuzzCheck.expect(upstreamAsked, "bytes for a passthrough connection never asked for")
                case .wake, .closeUpstream, .notice: break
                }
            }
        }
        perform(session.start())
        if choice & 128 == 0 { perform(session.handle(.received(Wire.request(extensions: "permessage-deflate", protocols: "chat"), at: now))) }
        while !reader.isAtEnd {
            switch reader.choice(6) {
            case 0:
                now = now.adding(.milliseconds(Int64(reader.byte())))
                perform(session.handle(.timer(at: now)))
            case 1 where upstreamAsked:
                perform(session.handle(.upstreamConnected(address: "127.0.0.1:9", at: now)))
            case 2 where upstreamAsked:
                perform(session.handle(.upstreamReceived(reader.piece(max: 200), at: now)))
            default:
                perform(session.handle(.received(reader.piece(max: 300), at: now)))
            }
        }
        perform(session.handle(.inputEnded(at: now)))
        FuzzCheck.expect(finished && ended, "the client's end did not end the mock session with an end record")
    }
}
