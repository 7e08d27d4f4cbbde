import Foundation
import Testing
import WSTapDissect
import WSTapFormats
import WSTapWire
import WSTapTestSupport

@Suite struct StreamDissectorTests {
    static let basic: [Step] = [
        (c2s, Wire.request()),
        (s2c, Wire.response()),
        (c2s, Wire.text("héllo", mask: 0x0102_0304)),
        (s2c, Wire.frame(.binary, [UInt8](repeating: 0xAB, count: 300))),
        (c2s, Wire.frame(.ping, Array("p".utf8), mask: 0x0A0B_0C0D)),
        (s2c, Wire.frame(.pong, Array("p".utf8))),
        (c2s, Wire.text("frag-", mask: 0x1111_1111, fin: false) + Wire.frame(.ping, [], mask: 0x2222_2222)
            + Wire.frame(.continuation, Array("ment".utf8), mask: 0x3333_3333)),
        (c2s, Wire.frame(.close, [0x03, 0xE8] + Array("bye".utf8), mask: 0x4444_4444)),
        (s2c, Wire.frame(.close, [0x03, 0xE8])),
    ]

    @Test func basicSessionRecords() throws {
        let lines = dissect(Self.basic)
        #expect(diagnosticCodes(lines).isEmpty, "\(lines)")
        let open = try #require(records(lines, type: "open").first)
        #expect(open.contains("\"url\":\"ws://example.test:9000/chat\""))
        #expect(open.contains("\"status\":101"))
        #expect(open.contains("[\"Sec-WebSocket-Key\",\"dGhlIHNhbXBsZSBub25jZQ==\"]"))
        let messages = records(lines, type: "message")
        #expect(messages.count == 8)
        #expect(messages[0].contains("\"text\":\"héllo\"") && messages[0].contains("\"from\":\"client\""))
        #expect(messages[1].contains("\"opcode\":2") && messages[1].contains("\"length\":300"))
        #expect(messages[4].contains("\"opcode\":9") && messages[4].contains("\"base64\":\"\""))  // ping between fragments comes first
        #expect(messages[5].contains("\"text\":\"frag-ment\"") && messages[5].contains("\"frames\":2"))
        #expect(messages[6].contains("\"code\":1000") && messages[6].contains("\"reason\":\"bye\""))
        #expect(records(lines, type: "frame").count == 9)
        #expect(messages[7].contains("\"from\":\"server\"") && messages[7].contains("\"code\":1000"))
    }

    @Test func everySplitPointGivesTheSameRecords() {
        #expect(Splits.verify(Self.basic) { dissect($0) } == [])
    }

    @Test func randomSplitsGiveTheSameRecords() {
        let steps = Self.basic + [(c2s, Wire.frame(.binary, (0..<70_000).map { UInt8($0 & 0xFF) }, mask: 0x5555_1234))]
        #expect(Splits.verify(steps, everyPointUpTo: 0, randomRounds: 10, largest: 4000, seed: 42) { dissect($0) } == [])
    }

    @Test func upgradeResponseAndFirstFrameInOneSegment() {
        let lines = dissect([(c2s, Wire.request()), (s2c, Wire.response() + Wire.text("first"))])
        #expect(records(lines, type: "message").first?.contains("\"text\":\"first\"") == true)
    }

    @Test func clientFramesBeforeTheAnswerAreHeldThenDissected() {
        let lines = dissect([(c2s, Wire.request() + Wire.text("early", mask: 1)), (s2c, Wire.response())])
        let message = records(lines, type: "message")
        #expect(message.count == 1 && message[0].contains("\"text\":\"early\""))
        #expect(message[0].contains("\"offset\":\(Wire.request().count)"))
    }

    @Test func refusedUpgradeThenRetryOnTheSameConnection() {
        let refusal = Array("HTTP/1.1 426 Upgrade Required\r\nContent-Length: 5\r\n\r\nnope!".utf8)
        let lines = dissect([(c2s, Wire.request()), (s2c, refusal), (c2s, Wire.request()), (s2c, Wire.response() + Wire.text("ok"))])
        #expect(records(lines, type: "http").count == 1)
        #expect(records(lines, type: "http")[0].contains("\"status\":426"))
        #expect(diagnosticCodes(lines) == ["upgrade-refused"])
        #expect(records(lines, type: "open").count == 1)
        #expect(records(lines, type: "message").first?.contains("\"text\":\"ok\"") == true)
    }

    @Test func chunkedRefusalBodyIsSkipped() {
        let refusal = Array("HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".utf8)
        let lines = dissect([(c2s, Wire.request()), (s2c, refusal), (c2s, Wire.request()), (s2c, Wire.response() + Wire.text("in"))])
        #expect(records(lines, type: "open").count == 1)
        #expect(records(lines, type: "message").count == 1)
    }

    @Test func emptyFinalFragmentClosesItsMessage() {
        let lines = dissect([
            (c2s, Wire.request()), (s2c, Wire.response()),
            (c2s, Wire.text("ends-with-empty", mask: 7, fin: false)),
            (c2s, Wire.frame(.continuation, [], mask: 8)),
            (c2s, Wire.text("next", mask: 9, fin: false) + Wire.frame(.continuation, Array(" one".utf8), mask: 10)),
        ])
        let messages = records(lines, type: "message")
        #expect(messages.count == 2)
        #expect(messages[0].contains("\"text\":\"ends-with-empty\"") && messages[0].contains("\"frames\":2"))
        #expect(messages[1].contains("\"text\":\"next one\""))
        #expect(diagnosticCodes(lines).isEmpty)
    }

    @Test func interleavedFragmentsInBothDirectionsKeepTheirOpcodes() {
        let lines = dissect([
            (c2s, Wire.request()), (s2c, Wire.response()),
            (c2s, Wire.text("client-part1,", mask: 1, fin: false)),
            (s2c, Wire.frame(.binary, [1, 2], fin: false)),
            (c2s, Wire.frame(.continuation, Array("client-part2".utf8), mask: 2)),
            (s2c, Wire.frame(.continuation, [3])),
        ])
        let messages = records(lines, type: "message")
        #expect(messages[0].contains("\"from\":\"client\"") && messages[0].contains("\"opcode\":1") && messages[0].contains("client-part1,client-part2"))
        #expect(messages[1].contains("\"from\":\"server\"") && messages[1].contains("\"opcode\":2") && messages[1].contains("\"base64\":\"AQID\""))
    }

    @Test func payloadCapTruncatesTheRecordNotTheCount() {
        var config = StreamDissector.Configuration()
        config.payloadCap = 4
        let lines = dissect([(c2s, Wire.request()), (s2c, Wire.response()), (s2c, Wire.text("€€€"))], configuration: config)
        let message = records(lines, type: "message")[0]
        #expect(message.contains("\"length\":9") && message.contains("\"truncated\":true"))
        #expect(message.contains("\"text\":\"€\""))  // cut at a character boundary, not mid-sequence
    }

    @Test func oddUpgradeAnswersAreEachDiagnosed() {
        let accept = HandshakeAccept.expected(forKey: Wire.key)
        let bare = "HTTP/1.0 101 Switching Protocols\nSec-WebSocket-Accept: \(accept)\n\n"
        let lines = dissect([(c2s, Wire.request()), (s2c, Array(bare.utf8)), (s2c, Wire.text("still framed"))])
        #expect(Set(diagnosticCodes(lines)) == ["missing-upgrade-header", "missing-connection-upgrade", "bad-http-version", "bare-line-feed"])
        #expect(records(lines, type: "message").count == 1)  // dissection goes on after the odd answer
    }

    @Test func bytesThatAreNotHTTPFromTheServerAreDiagnosedAtOnce() {
        let lines = dissect([(c2s, Wire.request()), (s2c, Array("SSH-2.0-OpenSSH_9.2".utf8))])
        #expect(diagnosticCodes(lines) == ["malformed-http"])
        #expect(records(lines, type: "diagnostic")[0].contains("not HTTP: the bytes start 53"))
    }

    @Test func upgradeRequestsThatBreakTheOpeningHandshakeRulesAreDiagnosed() {
        let request = "POST /chat HTTP/1.0\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: \(Wire.key)\r\nSec-WebSocket-Version: 8\r\n\r\n"
        let lines = dissect([(c2s, Array(request.utf8))])
        #expect(Set(diagnosticCodes(lines)) == ["upgrade-method-not-get", "bad-http-version", "missing-connection-upgrade", "bad-websocket-version"])
        #expect(records(lines, type: "diagnostic").allSatisfy { $0.contains(#""from":"client""#) })
    }

    /// Found by fuzzing: resynchronising after a gap looked for a header only within one piece, so the
    /// records of a capture depended on how its segments were cut.
    @Test func resynchronisingDoesNotDependOnTheSplit() {
        let junk: [UInt8] = [0x83, 0x83, 0x83]  // FIN with reserved opcode 3: never taken for a header
        let bytes = junk + Wire.text("one") + Wire.text("two")
        func run(_ split: ([UInt8]) -> [[UInt8]]) -> [String] {
            let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"), midstream: "heuristic")
            var records: [TapRecord] = []
            for piece in split(bytes) { dissector.feed(piece, from: .serverToClient, at: Timestamp(nanoseconds: 0), into: &records) }
            dissector.gap(.serverToClient, bytes: 3, at: Timestamp(nanoseconds: 0), into: &records)
            for piece in split(junk + Wire.text("three")) { dissector.feed(piece, from: .serverToClient, at: Timestamp(nanoseconds: 0), into: &records) }
            return records.map(JSONLinesEncoder.line)
        }
        let whole = run { [$0] }
        #expect(run { $0.map { [$0] } } == whole)
        #expect(records(whole, type: "message").count == 3)
    }

    /// Found by fuzzing: a malformed head's diagnostic gave the offset of the piece that completed it.
    @Test func aMalformedHeadIsReportedWhereItStartsHoweverItArrived() {
        let first = Array("GET /a HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        let bytes = first + Array("GET / HTTP/1.1\r\nno colon here\r\n\r\n".utf8)
        let whole = dissect([(c2s, bytes)])
        #expect(dissect([(c2s, bytes)], split: { $0.map { [$0] } }) == whole)
        #expect(records(whole, type: "diagnostic").last?.contains(#""offset":\#(first.count)"#) == true)
    }

    @Test func textInvalidOnlyPastThePayloadCapIsRecordedAsBase64() {
        var config = StreamDissector.Configuration()
        config.payloadCap = 4
        let lines = dissect([(c2s, Wire.request()), (s2c, Wire.response()), (s2c, Wire.frame(.text, Array("abcd".utf8) + [0xFF]))],
                            configuration: config)
        let message = records(lines, type: "message")[0]
        #expect(message.contains(#""base64":"YWJjZA==""#) && !message.contains(#""text""#) && message.contains(#""truncated":true"#))
        #expect(diagnosticCodes(lines) == ["invalid-utf8-text"])
    }

    @Test func aCloseCodeWithoutReasonHasANullReason() {
        let lines = dissect([(c2s, Wire.request()), (s2c, Wire.response()), (s2c, Wire.frame(.close, [0x03, 0xE8])),
                             (c2s, Wire.frame(.close, [0x03, 0xE8] + Array("x".utf8), mask: 1))])
        let closes = records(lines, type: "message")
        #expect(closes[0].contains(#""code":1000,"reason":null"#))
        #expect(closes[1].contains(#""code":1000,"reason":"x""#))
    }

    @Test func connectionEndingInsideAFrameAndMessageIsReported() {
        let frame = Wire.frame(.binary, [UInt8](repeating: 1, count: 100), fin: false)
        let lines = dissect([(c2s, Wire.request()), (s2c, Wire.response()), (s2c, Array(frame.prefix(50)))])
        #expect(diagnosticCodes(lines) == ["truncated-frame", "truncated-message"])
        #expect(records(lines, type: "message").first?.contains("\"incomplete\":true") == true)
    }
}

@Suite struct HTTPExchangeTests {
    @Test func exchangesCarrySizesAndDurationAcrossKeepAlive() {
        let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"))
        var records: [TapRecord] = []
        func feed(_ text: String, _ direction: Direction, atMillis: Int64) {
            dissector.feed(Array(text.utf8), from: direction, at: Timestamp(nanoseconds: atMillis * 1_000_000), into: &records)
        }
        feed("POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n", c2s, atMillis: 1000)
        feed("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n", s2c, atMillis: 1010)
        #expect(records.isEmpty)  // written when the response body ends
        feed("ok", s2c, atMillis: 1025)
        feed("GET /again HTTP/1.1\r\nHost: h\r\n\r\n", c2s, atMillis: 2000)
        feed("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", s2c, atMillis: 2005)
        dissector.finish(at: Timestamp(nanoseconds: 2_050_000_000), into: &records)
        let exchanges = records.compactMap { if case .http(let e) = $0.body { e } else { nil } }
        #expect(exchanges.map(\.url) == ["http://h/upload", "http://h/again"])
        #expect(exchanges.map(\.requestBodyBytes) == [23, 0])  // chunked framing bytes included: they are what was sent
        #expect(exchanges.map(\.responseBodyBytes) == [2, 13])
        #expect(exchanges.map(\.durationNanoseconds) == [25_000_000, 50_000_000])
    }
}

/// Where the relay takes the frames over: the byte after each side's handshake head, however it arrived.
@Suite struct WebSocketStartTests {
    func start(_ steps: [Step], split: ([UInt8]) -> [[UInt8]] = { [$0] }) -> WebSocketStart? {
        let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"))
        var records: [TapRecord] = []
        for (direction, bytes) in steps {
            for piece in split(bytes) { dissector.feed(piece, from: direction, at: Timestamp(nanoseconds: 1), into: &records) }
        }
        return dissector.webSocketStart
    }

    @Test func theStartIsTheByteAfterEachHeadAtEverySplitPoint() throws {
        // A refused attempt first: the start is that of the upgrade that succeeded, with early client
        // frames held by the dissector (they must not move the client's start).
        let refusal = Array("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".utf8)
        let request = Wire.request(extensions: "permessage-deflate; client_max_window_bits", protocols: "chat")
        let response = Wire.response(extensions: "permessage-deflate; client_no_context_takeover; client_max_window_bits=10", protocol: "chat")
        let early = Wire.text("early", mask: 0x0102_0304)
        let steps: [Step] = [(c2s, request), (s2c, refusal), (c2s, request + early), (s2c, response + Wire.text("hi"))]
        let expected = try #require(start(steps))
        #expect(expected.clientOffset == UInt64(2 * request.count))
        #expect(expected.serverOffset == UInt64(refusal.count + response.count))
        #expect(expected.negotiationSeen && expected.subprotocol == "chat")
        var deflate = PerMessageDeflate()
        deflate.clientNoContextTakeover = true
        deflate.clientMaxWindowBits = 10
        #expect(expected.deflate == deflate)
        for point in 1..<(request.count + early.count) {
            #expect(start(steps) { point < $0.count ? [Array($0[..<point]), Array($0[point...])] : [$0] } == expected, "split at \(point)")
        }
        #expect(start(steps) { $0.map { [$0] } } == expected)
    }

    @Test func noStartUntilTheUpgradeIsAnsweredAndNoneForPlainHTTP() {
        #expect(start([(c2s, Wire.request())]) == nil)
        #expect(start([(c2s, Array("GET / HTTP/1.1\r\nHost: h\r\n\r\n".utf8)), (s2c, Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8))]) == nil)
        // A 101 to something else (h2c) is not WebSocket.
        #expect(start([(c2s, Array("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".utf8)),
                       (s2c, Array("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n".utf8))]) == nil)
    }

    @Test func aMidStreamSessionStartsAtItsFirstByteWithoutNegotiation() {
        let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"), midstream: "heuristic")
        #expect(dissector.webSocketStart == WebSocketStart(clientOffset: 0, serverOffset: 0, negotiationSeen: false, deflate: nil, subprotocol: nil,
                                                           url: "ws://s/"))
    }
}

@Suite struct ConnectionEndTests {
    @Test func theWordingFollowsTheFacts() {
        let closed = ConnectionEnd(first: (.serverToClient, .fin), closeFrameFrom: .clientToServer, isWebSocket: true)
        #expect(closed.reason == ("close frame from client, then server fin", "client"))
        let dropped = ConnectionEnd(first: (.serverToClient, .reset), closeFrameFrom: nil, isWebSocket: true)
        #expect(dropped.reason == ("server reset without a close frame", "server"))
        // A connection that never became a WebSocket owes no close frame.
        let http = ConnectionEnd(first: (.clientToServer, .fin), closeFrameFrom: nil, isWebSocket: false)
        #expect(http.reason == ("client fin", "client"))
        #expect(ConnectionEnd(first: nil, closeFrameFrom: nil, isWebSocket: false).reason == ("connection closed", nil))
    }
}
