import Foundation
import NIOCore
import Testing
import WSTapDissect
import WSTapRelay
import WSTapTestSupport

/// Transcript-style tests of the sans-IO relay: events in, actions out, no sockets.
@Suite struct RelaySessionTests {
    static let key = "dGhlIHNhbXBsZSBub25jZQ=="
    static let request = "GET /chat?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n"
    static let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    static let maskedHello: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]

    func session(_ mode: RelaySession.Mode) -> RelaySession {
        RelaySession(connection: 7, mode: mode, clientAddress: "127.0.0.1:5000", proxyAddress: "127.0.0.1:8080",
                     configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
    }

    func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }
    func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    @Test func reverseModeConnectsOnceTheHeadIsCompleteAndForwardsEarlyFramesUnchanged() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        let head = Array(Self.request.utf8)
        _ = s.handle(.clientConnected)
        #expect(s.handle(.clientData(buffer(Array(head[..<20])))).isEmpty)
        let actions = s.handle(.clientData(buffer(Array(head[20...]) + Self.maskedHello)))
        #expect(actions.connectTarget == "127.0.0.1:9000")
        #expect(actions.sent(to: .upstream).isEmpty)  // nothing leaves before the upstream is connected

        let connected = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        let upstreamBytes = connected.sent(to: .upstream)
        let text = String(decoding: upstreamBytes, as: UTF8.self)
        #expect(text.hasPrefix("GET /chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"))  // path kept, Host rewritten
        #expect(Array(upstreamBytes.suffix(Self.maskedHello.count)) == Self.maskedHello)  // frame bytes untouched

        let answered = s.handle(.upstreamData(buffer(Self.response)))
        #expect(String(decoding: answered.sent(to: .client), as: UTF8.self) == Self.response)
        let records = (connected + answered).records
        #expect(records.contains { if case .open(let o) = $0.body { o.url == "ws://127.0.0.1:9000/chat?x=1" } else { false } })
        #expect(records.contains { if case .message(let m) = $0.body { m.payload == Array("Hello".utf8) } else { false } })
    }

    @Test func theRequestHeadLeavesWithItsOwnBytesExceptHost() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        let head: [UInt8] = Array("GET /x HTTP/1.1\r\nHost:  localhost:8080\r\nX-U: caf".utf8) + [0xC3, 0xA9]
            + Array("\r\nCookie: a=".utf8) + [0xFF] + Array("\r\nX-Fold: a\r\n b\r\nUpgrade: websocket\r\n\r\n".utf8)
        _ = s.handle(.clientData(buffer(head)))
        let sent = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).sent(to: .upstream)
        let expected: [UInt8] = Array("GET /x HTTP/1.1\r\nHost:  127.0.0.1:9000\r\nX-U: caf".utf8) + [0xC3, 0xA9]
            + Array("\r\nCookie: a=".utf8) + [0xFF] + Array("\r\nX-Fold: a\r\n b\r\nUpgrade: websocket\r\n\r\n".utf8)
        #expect(sent == expected)
    }

    @Test func everyRequestOnAKeptAliveConnectionIsPointedAtTheUpstream() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer("GET /a HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(buffer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
        let second = s.handle(.clientData(buffer("GET /b HTTP/1.1\r\nHost: localhost:8080\r\n\r\n")))
        #expect(String(decoding: second.sent(to: .upstream), as: UTF8.self) == "GET /b HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n")
    }

    /// RFC 9112 §6.3: chunking frames the body, so an intermediary removes Content-Length before forwarding.
    @Test func contentLengthBesideChunkingIsRemovedBothWays() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        let request = "POST /up HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        _ = s.handle(.clientData(buffer(request)))
        let sent = String(decoding: s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).sent(to: .upstream), as: UTF8.self)
        #expect(sent == "POST /up HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        let response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 99\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        let answered = s.handle(.upstreamData(buffer(response)))
        #expect(String(decoding: answered.sent(to: .client), as: UTF8.self) == "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        // The record shows the response as the server sent it.
        let exchange = answered.records.compactMap { if case .http(let e) = $0.body { e } else { nil } }.first
        #expect(exchange?.response.value("content-length") == "99")
    }

    @Test func aResponseHeadSplitAcrossReadsReachesTheClientWhole() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        let response = Array(Self.response.utf8) + [0x81, 0x02, 0x68, 0x69]
        var toClient: [UInt8] = []
        for byte in response { toClient += s.handle(.upstreamData(buffer([byte]))).sent(to: .client) }
        #expect(toClient == response)
    }

    @Test func bytesThatAreNotHTTPFromTheUpstreamArePassedOnAsTheyCame() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        var toClient = s.handle(.upstreamData(buffer("HTT"))).sent(to: .client)
        toClient += s.handle(.upstreamData(buffer("X/9 garbage \u{1}\u{2}"))).sent(to: .client)
        toClient += s.handle(.upstreamData(buffer("more"))).sent(to: .client)
        #expect(String(decoding: toClient, as: UTF8.self) == "HTTX/9 garbage \u{1}\u{2}more")
        // A partial head held at the server's FIN goes on before the FIN.
        let t = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = t.handle(.clientData(buffer(Self.request)))
        _ = t.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        #expect(t.handle(.upstreamData(buffer("HTTP/1.1 200 OK\r\n"))).sent(to: .client).isEmpty)
        #expect(String(decoding: t.handle(.inputClosed(.upstream)).sent(to: .client), as: UTF8.self) == "HTTP/1.1 200 OK\r\n")
    }

    @Test func upstreamPathReplacesTheClientsPath() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://[::1]:9000/socket?v=2")))
        _ = s.handle(.clientData(buffer(Self.request)))
        let sent = String(decoding: s.handle(.upstreamConnected(serverAddress: "[::1]:9000")).sent(to: .upstream), as: UTF8.self)
        #expect(sent.hasPrefix("GET /socket?v=2 HTTP/1.1\r\nHost: [::1]:9000\r\n"))
    }

    @Test func unreachableUpstreamGets502AndAnEndRecord() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9")))
        _ = s.handle(.clientData(buffer(Self.request)))
        let actions = s.handle(.upstreamConnectFailed(reason: "connection refused"))
        let reply = String(decoding: actions.sent(to: .client), as: UTF8.self)
        #expect(reply.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        #expect(reply.hasSuffix("wstap: cannot reach upstream ws://127.0.0.1:9: connection refused\n"))
        #expect(actions.closes(.client))
        let end = try #require(actions.records.compactMap { if case .end(let e) = $0.body { e } else { nil } }.first)
        #expect(end.reason.contains("connection refused") && end.closedBy == "proxy")
    }

    @Test func halfCloseIsRelayedAndTheEndSaysWhoWentFirst() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(buffer(Self.response)))
        let clientFin = s.handle(.inputClosed(.client))
        #expect(clientFin.shutsDown(.upstream) && !clientFin.closes(.client))  // the server may still talk
        let more = s.handle(.upstreamData(buffer([0x81, 0x02, 0x68, 0x69])))
        #expect(more.sent(to: .client) == [0x81, 0x02, 0x68, 0x69])
        let serverFin = s.handle(.inputClosed(.upstream))
        #expect(serverFin.shutsDown(.client) && serverFin.closes(.client) && serverFin.closes(.upstream))
        let end = try #require(serverFin.records.compactMap { if case .end(let e) = $0.body { e } else { nil } }.first)
        #expect(end.closedBy == "client" && end.reason == "client fin without a close frame")
    }

    @Test func clientFinBeforeACompleteHeadClosesTheClientSocket() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer("GET / HTTP/1.1\r\nHo")))
        let fin = s.handle(.inputClosed(.client))
        #expect(fin.closes(.client))
        let end = try #require(fin.records.compactMap { if case .end(let e) = $0.body { e } else { nil } }.first)
        #expect(end.reason == "client closed before sending a request")
    }

    @Test func anHTTPOnlyConnectionEndsWithoutTalkOfCloseFrames() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer("GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(buffer("HTTP/1.1 204 No Content\r\n\r\n")))
        _ = s.handle(.inputClosed(.client))
        let end = try #require(s.handle(.inputClosed(.upstream)).endRecord)
        #expect(end.reason == "client fin" && end.closedBy == "client")
    }

    /// Found by fuzzing: a client FIN after wstap had refused a later request flushed the held partial
    /// head upstream and wrote records after the end record.
    @Test func nothingHappensAfterTheConnectionEnded() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer("GET /a HTTP/1.1\r\nHost: a\r\n\r\n")))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(buffer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
        let refused = s.handle(.clientData(buffer("GET /b HTTP/1.1\r\nX\u{1}: 1\r\n\r\nGET /c HTTP/1.1\r\n")))
        #expect(refused.endRecord != nil)
        #expect(s.handle(.inputClosed(.client)).isEmpty)
    }

    @Test func aResetIsPassedOnAsAReset() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(buffer(Self.response)))
        let reset = s.handle(.reset(.upstream))
        #expect(reset.contains { if case .reset(.client) = $0 { true } else { false } })
        #expect(reset.endRecord?.reason == "server reset without a close frame; reset passed on to the client")
    }

    @Test func aResetBeforeTheRequestEndsTheConnectionSayingSo() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientConnected)
        _ = s.handle(.clientData(buffer("GET / HT")))
        let reset = s.handle(.reset(.client))
        #expect(reset.contains { if case .close(.client) = $0 { true } else { false } })
        #expect(reset.endRecord?.reason == "client reset the connection before sending a request")
    }

    /// A response head still being read when the server resets reaches the client before the reset.
    @Test func anUpstreamResetPassesOnTheHeldPartOfItsAnswerFirst() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        #expect(s.handle(.upstreamData(buffer("HTTP/1.1 101 Swi"))).sent(to: .client).isEmpty)
        let reset = s.handle(.reset(.upstream))
        #expect(String(decoding: reset.sent(to: .client), as: UTF8.self) == "HTTP/1.1 101 Swi")
        let sendIndex = reset.firstIndex { if case .send(.client, _) = $0 { true } else { false } }
        let resetIndex = reset.firstIndex { if case .reset(.client) = $0 { true } else { false } }
        #expect(sendIndex != nil && resetIndex != nil && sendIndex! < resetIndex!)
    }

    @Test func connectTunnelIsAnsweredOnceUpAndCleartextInsideIsDissected() {
        let s = session(.forward)
        let actions = s.handle(.clientData(buffer("CONNECT 127.0.0.1:9000 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n\r\n")))
        #expect(actions.connectTarget == "127.0.0.1:9000")
        let up = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        #expect(String(decoding: up.sent(to: .client), as: UTF8.self) == "HTTP/1.1 200 Connection Established\r\n\r\n")
        let inner = s.handle(.clientData(buffer(Self.request)))
        #expect(String(decoding: inner.sent(to: .upstream), as: UTF8.self) == Self.request)  // tunnel bytes untouched
        let answered = s.handle(.upstreamData(buffer(Self.response)))
        #expect(answered.records.contains { if case .open = $0.body { true } else { false } })
    }

    @Test func tlsInsideConnectIsRelayedButNotDissected() {
        let s = session(.forward)
        _ = s.handle(.clientData(buffer("CONNECT example.test:443 HTTP/1.1\r\n\r\n")))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:443"))
        let hello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]
        let actions = s.handle(.clientData(buffer(hello)))
        #expect(actions.sent(to: .upstream) == hello)
        #expect(actions.records.isEmpty)
    }

    @Test func forwardModeRewritesAbsoluteFormAndRefusesOriginForm() {
        let s = session(.forward)
        let actions = s.handle(.clientData(buffer("GET ws://127.0.0.1:9000/abs HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nProxy-Connection: keep-alive\r\nUpgrade: websocket\r\n\r\n")))
        #expect(actions.connectTarget == "127.0.0.1:9000")
        let sent = String(decoding: s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).sent(to: .upstream), as: UTF8.self)
        #expect(sent.hasPrefix("GET /abs HTTP/1.1\r\n") && !sent.contains("Proxy-Connection"))

        let refused = session(.forward).handle(.clientData(buffer(Self.request)))
        #expect(String(decoding: refused.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 400 Bad Request"))
        #expect(refused.connectTarget == nil)
    }

    @Test func clientLeavingWhileConnectingEndsOnce() throws {
        let s = session(.reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")))
        _ = s.handle(.clientData(buffer(Self.request)))
        let gone = s.handle(.closed(.client))
        #expect(gone.records.filter { if case .end = $0.body { true } else { false } }.count == 1)
        #expect(s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000")).isEmpty)
        #expect(s.handle(.closed(.upstream)).records.isEmpty)
    }

    @Test func upstreamURLParsing() throws {
        #expect(try UpstreamURL.parse("ws://h") == UpstreamURL(host: "h", port: 80))
        #expect(try UpstreamURL.parse("wss://h/p?q") == UpstreamURL(scheme: "wss", host: "h", port: 443, path: "/p?q"))
        #expect(try UpstreamURL.parse("http://h:81/") == UpstreamURL(host: "h", port: 81))
        #expect(try UpstreamURL.parse("ws://h:82?x=1").path == "/?x=1")
        for bad in ["h:80", "ftp://h", "ws://", "ws://h:0", "ws://h:x", "ws://[::1"] {
            #expect(throws: UpstreamURL.ParseError.self, "\(bad)") { try UpstreamURL.parse(bad) }
        }
    }
}

@Suite struct InterceptionTests {
    func forwardSession(passthrough: [String] = []) -> RelaySession {
        RelaySession(connection: 3, mode: .forward, tls: TLSSettings(interceptConnect: true, passthrough: passthrough),
                     clientAddress: "c", proxyAddress: "p", configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
    }

    @Test func connectIsAnsweredAtOnceAndTheClientHelloDecides() throws {
        let s = forwardSession()
        let answered = s.handle(.clientData(ByteBuffer(string: "CONNECT localhost:9443 HTTP/1.1\r\nHost: localhost:9443\r\n\r\n")))
        #expect(String(decoding: answered.sent(to: .client), as: UTF8.self) == "HTTP/1.1 200 Connection Established\r\n\r\n")
        #expect(answered.connectTarget == nil)  // nothing is reached before the ClientHello is seen
        let hello = TLSHelloBytes.withSNI
        #expect(s.handle(.clientData(ByteBuffer(bytes: hello.prefix(40)))).isEmpty)  // incomplete record: wait
        let tls = s.handle(.clientData(ByteBuffer(bytes: hello.dropFirst(40))))
        guard case .startClientTLS(let host, let replay) = tls.first else { Issue.record("\(tls)"); return }
        #expect(host == "foo.example" && Array(replay.readableBytesView) == hello)
        _ = s.handle(.clientTLSEstablished)
        let connect = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request)))
        #expect(connect.connectTarget == "localhost:9443")
        #expect(connect.connectTLS == .some(UpstreamTLS(serverName: "foo.example")))  // the client's SNI goes upstream
    }

    @Test func theURLTakesItsPortFromTheConnectTargetNotFromHost() {
        let s = forwardSession()
        _ = s.handle(.clientData(ByteBuffer(string: "CONNECT localhost:9443 HTTP/1.1\r\n\r\n")))
        _ = s.handle(.clientData(ByteBuffer(bytes: TLSHelloBytes.withSNI)))
        _ = s.handle(.clientTLSEstablished)
        _ = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request.replacingOccurrences(of: "Host: localhost:8080", with: "Host: localhost"))))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9443"))
        let opened = s.handle(.upstreamData(ByteBuffer(string: RelaySessionTests.response)))
        let open = opened.records.compactMap { if case .open(let o) = $0.body { o } else { nil } }.first
        #expect(open?.url == "wss://localhost:9443/chat?x=1")
    }

    @Test func failuresNameWhatTheClientAskedFor() {
        let s = forwardSession()
        _ = s.handle(.clientData(ByteBuffer(string: "CONNECT example.test:443 HTTP/1.1\r\n\r\n")))
        _ = s.handle(.clientData(ByteBuffer(bytes: TLSHelloBytes.withSNI)))
        _ = s.handle(.clientTLSEstablished)
        _ = s.handle(.clientData(ByteBuffer(string: "GET /page HTTP/1.1\r\nHost: example.test\r\n\r\n")))
        let failed = s.handle(.upstreamConnectFailed(reason: "connection refused"))
        #expect(String(decoding: failed.sent(to: .client), as: UTF8.self).hasSuffix("wstap: cannot reach upstream https://foo.example:443: connection refused\n"))

        let plain = forwardSession()
        _ = plain.handle(.clientData(ByteBuffer(string: "GET http://a.test:81/x HTTP/1.1\r\nHost: a.test:81\r\n\r\n")))
        let refused = plain.handle(.upstreamConnectFailed(reason: "connection refused"))
        #expect(refused.endRecord?.reason == "cannot reach upstream http://a.test:81/x: connection refused")
    }

    @Test func clientLeavingAnAnsweredConnectOrItsTLSHandshakeIsClosed() {
        let answered = forwardSession()
        _ = answered.handle(.clientData(ByteBuffer(string: "CONNECT localhost:9443 HTTP/1.1\r\n\r\n")))
        #expect(answered.handle(.inputClosed(.client)).closes(.client))

        let handshaking = forwardSession()
        _ = handshaking.handle(.clientData(ByteBuffer(string: "CONNECT localhost:9443 HTTP/1.1\r\n\r\n")))
        _ = handshaking.handle(.clientData(ByteBuffer(bytes: TLSHelloBytes.withSNI)))
        #expect(handshaking.handle(.inputClosed(.client)).closes(.client))
    }

    @Test func passthroughAndNonTLSTunnelsAreRelayedAsBytes() {
        let s = forwardSession(passthrough: ["*.example"])
        _ = s.handle(.clientData(ByteBuffer(string: "CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n")))
        let actions = s.handle(.clientData(ByteBuffer(bytes: TLSHelloBytes.withSNI)))
        #expect(actions.connectTarget == "10.0.0.1:443" && actions.connectTLS == .some(nil))
        let up = s.handle(.upstreamConnected(serverAddress: "10.0.0.1:443"))
        #expect(up.sent(to: .upstream) == TLSHelloBytes.withSNI && up.sent(to: .client).isEmpty)  // no second 200

        let plain = forwardSession()
        _ = plain.handle(.clientData(ByteBuffer(string: "CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n")))
        #expect(plain.handle(.clientData(ByteBuffer(string: "GET / HTTP/1.1\r\n"))).connectTLS == .some(nil))
    }

    @Test func globPatterns() {
        let settings = TLSSettings(passthrough: ["*.bank.example", "exact.test", "h?st"])
        #expect(settings.isPassthrough("www.bank.example") && settings.isPassthrough("EXACT.test") && settings.isPassthrough("host"))
        #expect(!settings.isPassthrough("bank.example.evil") && !settings.isPassthrough("exact.test.x"))
    }
}

/// The ClientHello from WSTapWireTests, for transcript tests.
enum TLSHelloBytes {
    static var withSNI: [UInt8] { TLSHelloFixture.withSNI }
}

@Suite struct RelayOrderingTests {
    @Test func recordsAreEmittedBeforeTheBytesTheyDescribeAreForwarded() throws {
        let s = RelaySession(connection: 1, mode: .reverse(try UpstreamURL.parse("ws://127.0.0.1:9000")), clientAddress: "c", proxyAddress: "p",
                             configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
        _ = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request)))
        _ = s.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
        _ = s.handle(.upstreamData(ByteBuffer(string: RelaySessionTests.response)))
        let actions = s.handle(.clientData(ByteBuffer(bytes: RelaySessionTests.maskedHello)))
        guard case .emit = actions.first, case .send(.upstream, _) = actions.last else {
            Issue.record("expected emit then send, got \(actions)")
            return
        }
    }
}

@Suite struct ForwardHTTPTests {
    func session() -> RelaySession {
        RelaySession(connection: 9, mode: .forward, clientAddress: "c", proxyAddress: "p", configuration: .init(), clock: { Timestamp(nanoseconds: 1) })
    }

    @Test func eachRequestGoesToItsOwnHostInOriginForm() {
        let s = session()
        let first = s.handle(.clientData(ByteBuffer(string: "GET http://a.test:81/x HTTP/1.1\r\nHost: a.test:81\r\nProxy-Connection: keep-alive\r\n\r\n")))
        #expect(first.connectTarget == "a.test:81")
        let sent = s.handle(.upstreamConnected(serverAddress: "10.0.0.1:81"))
        #expect(String(decoding: sent.sent(to: .upstream), as: UTF8.self) == "GET /x HTTP/1.1\r\nHost: a.test:81\r\n\r\n")

        // A chunked POST to the same host is forwarded as it comes, body untouched.
        let post = s.handle(.clientData(ByteBuffer(string: "POST http://a.test:81/up HTTP/1.1\r\nHost: a.test:81\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")))
        #expect(String(decoding: post.sent(to: .upstream), as: UTF8.self) == "POST /up HTTP/1.1\r\nHost: a.test:81\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")

        // A request for another host waits until a.test has answered both requests.
        let other = s.handle(.clientData(ByteBuffer(string: "GET http://b.test:82/y HTTP/1.1\r\nHost: b.test:82\r\n\r\n")))
        #expect(other.sent(to: .upstream).isEmpty && other.connectTarget == nil)
        let answer1 = s.handle(.upstreamData(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")))
        #expect(!answer1.switches)
        let answer2 = s.handle(.upstreamData(ByteBuffer(string: "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")))
        #expect(String(decoding: answer2.sent(to: .client), as: UTF8.self).hasPrefix("HTTP/1.1 201"))
        #expect(answer2.switchTarget == "b.test:82")
        let moved = s.handle(.upstreamConnected(serverAddress: "10.0.0.2:82"))
        #expect(String(decoding: moved.sent(to: .upstream), as: UTF8.self) == "GET /y HTTP/1.1\r\nHost: b.test:82\r\n\r\n")
        let exchanges = (first + sent + post + answer1 + answer2 + moved).records.filter { if case .http = $0.body { true } else { false } }
        #expect(exchanges.count == 2)
    }

    @Test func anUpgradeAfterPlainRequestsBecomesAPipe() {
        let s = session()
        _ = s.handle(.clientData(ByteBuffer(string: "GET http://a.test/poll HTTP/1.1\r\nHost: a.test\r\n\r\n")))
        _ = s.handle(.upstreamConnected(serverAddress: "10.0.0.1:80"))
        _ = s.handle(.upstreamData(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
        let upgrade = s.handle(.clientData(ByteBuffer(string: RelaySessionTests.request.replacingOccurrences(of: "GET /chat?x=1", with: "GET http://a.test/chat?x=1"))))
        #expect(String(decoding: upgrade.sent(to: .upstream), as: UTF8.self).hasPrefix("GET /chat?x=1 HTTP/1.1"))
        let opened = s.handle(.upstreamData(ByteBuffer(string: RelaySessionTests.response)))
        #expect(opened.records.contains { if case .open = $0.body { true } else { false } })
        let frame = s.handle(.clientData(ByteBuffer(bytes: RelaySessionTests.maskedHello)))
        #expect(frame.sent(to: .upstream) == RelaySessionTests.maskedHello)
    }
}
