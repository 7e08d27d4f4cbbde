import NIOCore
import Testing
import WSTapDissect
import WSTapRelay
import WSTapTestSupport

/// Timeouts and the head size bound, as transcripts: the session asks for timers and is told when
/// they run out; no clock is involved.
@Suite struct RelayLimitsTests {
    func session(_ mode: RelaySession.Mode, limits: RelaySession.Limits = .init(), tls: TLSSettings = .init()) -> RelaySession {
        RelaySession(connection: 4, mode: mode, tls: tls, limits: limits, clientAddress: "127.0.0.1:5000", proxyAddress: "127.0.0.1:8080",
                     configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
    }

    func reverse(_ limits: RelaySession.Limits = .init()) throws -> RelaySession {
        session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")), limits: limits)
    }

    @Test func aClientThatNeverCompletesItsHeadGets408() throws {
        let s = try reverse()
        #expect(s.handle(.clientConnected).startedTimers == [.requestHead])
        _ = s.handle(.clientData(ByteBuffer(string: "GET / HTTP/1.1\r\nHo")))
        let fired = s.handle(.timerFired(.requestHead))
        #expect(String(decoding: fired.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        #expect(fired.closes(.client))
        let end = try #require(fired.endRecord)
        #expect(end.reason == "the client did not send a complete request head within 30 s (--head-timeout)" && end.closedBy == "proxy")
        #expect(s.handle(.timerFired(.requestHead)).isEmpty)  // a second report of the same timer does nothing
    }

    @Test func theHeadTimerStopsWithTheHeadAndTheUpstreamTimerCoversConnectAndAnswer() throws {
        let s = try reverse()
        _ = s.handle(.clientConnected)
        let head = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request)))
        #expect(head.cancelledTimers == [.requestHead] && head.startedTimers == [.upstreamHandshake])
        // Connected, but the upgrade is not answered yet: the same deadline goes on.
        let connected = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        #expect(connected.startedTimers.isEmpty && connected.cancelledTimers.isEmpty)
        let answered = s.handle(.upstreamData(ByteBuffer(string: RelaySessionTests.response)))
        #expect(answered.cancelledTimers == [.upstreamHandshake])
    }

    @Test func anUpstreamThatNeverAnswersTheUpgradeGets504() throws {
        let s = try reverse()
        _ = s.handle(.clientConnected)
        _ = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        let fired = s.handle(.timerFired(.upstreamHandshake))
        #expect(String(decoding: fired.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 504 Gateway Timeout\r\n"))
        #expect(fired.closes(.client) && fired.closes(.upstream))
        #expect(fired.endRecord?.reason == "upstream ws://127.0.0.1:9000 did not answer the WebSocket handshake within 30 s (--upstream-timeout)")
    }

    @Test func anUpstreamThatDoesNotAcceptGets504() throws {
        let s = try reverse()
        _ = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request)))
        let fired = s.handle(.timerFired(.upstreamHandshake))
        #expect(String(decoding: fired.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 504 Gateway Timeout\r\n"))
        #expect(fired.endRecord?.reason.contains("did not accept the connection within 30 s") == true)
        #expect(s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).sent(to: .upstream).isEmpty)  // too late
    }

    @Test func plainHTTPResponsesAreNotTimed() throws {
        let s = try reverse()
        _ = s.handle(.clientData(ByteBuffer(string: "GET /poll HTTP/1.1\r\nHost: a\r\n\r\n")))
        // Long polling may legitimately wait: once connected, only upgrade answers are bounded.
        #expect(s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).cancelledTimers == [.upstreamHandshake])
    }

    @Test func disabledLimitsStartNoTimers() throws {
        var limits = RelaySession.Limits()
        limits.requestHeadTimeout = nil
        limits.upstreamTimeout = nil
        let s = try reverse(limits)
        #expect(s.handle(.clientConnected).startedTimers.isEmpty)
        #expect(s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request))).startedTimers.isEmpty)
    }

    @Test func oneDeadlineCoversConnectTLSAndTheInnerHead() {
        let s = session(.forward, tls: TLSSettings(interceptConnect: true))
        _ = s.handle(.clientConnected)
        let connect = s.handle(.clientData(ByteBuffer(string: "CONNECT localhost:9443 HTTP/1.1\r\n\r\n")))
        #expect(connect.startedTimers.isEmpty && connect.cancelledTimers.isEmpty)
        let silent = s.handle(.timerFired(.requestHead))
        #expect(silent.closes(.client) && silent.sent(to: .client).isEmpty)
        #expect(silent.endRecord?.reason == "the client sent nothing in its CONNECT tunnel within 30 s (--head-timeout)")
    }

    @Test func aHeadLargerThanTheLimitGets431() throws {
        var limits = RelaySession.Limits()
        limits.maxHeadBytes = 1024
        let s = try reverse(limits)
        let big = "GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 2000))\r\n\r\n"
        let actions = s.handle(.clientData(ByteBuffer(string: big)))
        #expect(String(decoding: actions.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        #expect(actions.closes(.client) && actions.connectTarget == nil)
        #expect(actions.endRecord?.reason == "the request head is larger than 1024 bytes (--max-head-size)")
    }
}

extension Array where Element == RelaySession.Action {
    var startedTimers: [RelaySession.Timer] { compactMap { if case .startTimer(let t, _) = $0 { t } else { nil } } }
    var cancelledTimers: [RelaySession.Timer] { compactMap { if case .cancelTimer(let t) = $0 { t } else { nil } } }
    var endRecord: EndRecord? { records.compactMap { if case .end(let e) = $0.body { e } else { nil } }.first }
}

@Suite struct PlainListenerTests {
    @Test func aTLSClientHelloOnAPlainListenerIsRecognisedAtOnce() throws {
        let s = RelaySession(connection: 1, mode: .reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")), clientAddress: "c",
                             proxyAddress: "p", configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
        let actions = s.handle(.clientData(ByteBuffer(bytes: TLSHelloFixture.withSNI.prefix(40))))
        #expect(actions.closes(.client) && actions.sent(to: .client).isEmpty && actions.connectTarget == nil)
        #expect(actions.endRecord?.reason == "TLS on a plain listener: the client sent a TLS ClientHello; start wstap with --listen-tls for wss:// clients")
    }

    @Test func bytesThatCannotBeARequestGet400AtOnce() throws {
        let s = RelaySession(connection: 1, mode: .forward, clientAddress: "c", proxyAddress: "p", configuration: .init(),
                             clock: { Timestamp(nanoseconds: 1) })
        let actions = s.handle(.clientData(ByteBuffer(bytes: [0x00, 0x01, 0x02])))
        #expect(String(decoding: actions.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(actions.endRecord?.reason.contains("not HTTP: the bytes start 00") == true)
    }
}
