import NIOCore
import Testing
import WSTapDissect
import WSTapFormats
import WSTapRelay
import WSTapTestSupport
import WSTapWire

/// The hand-over at the 101 and the WebSocket relay after it: bytes leave as they came, records are
/// those of an offline dissection of what each peer received, wherever reads end.
@Suite struct WebSocketRelayTests {
    /// A conversation with the awkward orders: a client frame sent before the answer, the 101 and the
    /// server's first frames in one read, fragments with a ping between them, compression, a close.
    static let deflated: [UInt8] = [0x41, 0x03, 0xF2, 0x48, 0xCD] + [0x80, 0x04, 0xC9, 0xC9, 0x07, 0x00]  // RFC 7692 §7.2.3.2
    static let steps: [Step] = [
        (c2s, Wire.request(extensions: "permessage-deflate", host: "localhost:8080") + Wire.text("early", mask: 0x0102_0304)),
        (s2c, Wire.response(extensions: "permessage-deflate") + Wire.text("welcome") + deflated),
        (c2s, Wire.text("frag-", mask: 0x1111_1111, fin: false) + Wire.frame(.ping, [], mask: 0x2222_2222)
            + Wire.frame(.continuation, Array("ment".utf8), mask: 0x3333_3333)),
        (s2c, Wire.frame(.pong, [])),
        (c2s, Wire.frame(.close, [0x03, 0xE8] + Array("bye".utf8), mask: 0x4444_4444)),
        (s2c, Wire.frame(.close, [0x03, 0xE8])),
    ]

    struct Outcome: Equatable {
        var toUpstream: [UInt8]
        var toClient: [UInt8]
        var records: [String]
    }

    static func relay(_ steps: [Step]) -> Outcome {
        let play = RelayPlaybook()
        var connected = false
        for (direction, bytes) in steps {
            if direction == c2s { play.client(bytes) } else { play.upstream(bytes) }
            // As the shell does: the upstream is connected once the session asked for it.
            if !connected && play.actions.connectTarget != nil {
                connected = true
                play.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
            }
        }
        play.handle(.inputClosed(.client))
        play.handle(.inputClosed(.upstream))
        return Outcome(toUpstream: play.sentToUpstream, toClient: play.sentToClient, records: play.records.map(JSONLinesEncoder.line))
    }

    @Test func bytesLeaveAsTheyCameAndRecordsAreThoseOfAnOfflineDissection() throws {
        let live = Self.relay(Self.steps)
        let clientSent = Self.steps.filter { $0.0 == c2s }.flatMap(\.1)
        let serverSent = Self.steps.filter { $0.0 == s2c }.flatMap(\.1)
        #expect(live.toClient == serverSent)
        // Only the Host value changes on the way up (reverse mode); every frame byte is the client's.
        let host = Array("Host: localhost:8080".utf8), rewritten = Array("Host: 127.0.0.1:9000".utf8)
        let at = try #require((0...(clientSent.count - host.count)).first { clientSent[$0..<($0 + host.count)].elementsEqual(host) })
        #expect(live.toUpstream == Array(clientSent[..<at]) + rewritten + Array(clientSent[(at + host.count)...]))

        // Live equals offline: the same records from what each peer received, but the end record,
        // which only the relay knows how to word.
        var offlineSteps: [Step] = Self.steps
        offlineSteps[0].1 = Array(live.toUpstream.prefix(offlineSteps[0].1.count))
        let offline = dissect(offlineSteps)
        #expect(Array(live.records.dropLast()) == offline)
        #expect(live.records.last?.contains("\"type\":\"end\"") == true)
        #expect(records(offline, type: "message").count == 8)
        #expect(diagnosticCodes(offline) == [])
    }

    @Test func theOutcomeDoesNotDependOnWhereReadsEnd() {
        #expect(Splits.verify(Self.steps) { Self.relay($0) } == [])
    }

    @Test func afterTheHandOverBothDirectionsGoThroughTheWebSocketRelay() {
        // Records before bytes, per read, in the WebSocket phase of both directions.
        let play = RelayPlaybook()
        play.openWebSocket()
        for (direction, bytes) in [(c2s, Wire.text("hi", mask: 7)), (s2c, Wire.text("ho"))] {
            let actions = direction == c2s ? play.client(bytes) : play.upstream(bytes)
            guard actions.count == 2, case .emit(let emitted) = actions[0], case .send(let side, let buffer) = actions[1] else {
                Issue.record("expected emit then send, got \(actions)")
                continue
            }
            #expect(side == (direction == c2s ? .upstream : .client))
            #expect(Array(buffer.readableBytesView) == bytes)
            #expect(emitted.contains { if case .message = $0.body { true } else { false } })
        }
    }

    @Test func theFrameMatcherIgnoresMaskKeysButNotPayloads() {
        let a = SeenFrame.parse(Wire.text("same", mask: 0x0101_0101) + Wire.frame(.ping, [1], mask: 5))
        let b = SeenFrame.parse(Wire.text("same", mask: 0x7F7F_7F7F) + Wire.frame(.ping, [1], mask: 9))
        #expect(a.frames == b.frames && a.frames.count == 2 && a.rest == nil)
        #expect(SeenFrame.parse(Wire.text("diff", mask: 0x0101_0101)).frames != SeenFrame.parse(Wire.text("same", mask: 0x0101_0101)).frames)
        #expect(SeenFrame.parse(Wire.text("same")).frames != SeenFrame.parse(Wire.text("same", mask: 1)).frames)  // masked or not counts
        #expect(SeenFrame.parse(Wire.text("cut") .dropLast()).rest?.count == 4)
    }
}
