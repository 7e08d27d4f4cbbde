import Testing
@testable import WSTapWire

@Suite struct CodecTests {
    @Test func acceptMatchesRFC6455Example() {
        #expect(HandshakeAccept.expected(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func base64MatchesRFC4648Vectors() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors { #expect(Base64.encode(Array(plain.utf8)) == encoded) }
        #expect(Base64.encode([0xFF, 0xFE, 0xFD, 0x00]) == "//79AA==")
    }

    /// The fast path works six bytes at a time: every length around its boundaries, against the
    /// textbook bit-by-bit encoding.
    @Test func base64MatchesTheTextbookEncodingAtEveryLength() {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
        var seed: UInt32 = 1
        let bytes = (0..<300).map { _ -> UInt8 in seed = seed &* 1_103_515_245 &+ 12_345; return UInt8(truncatingIfNeeded: seed >> 16) }
        for length in 0...bytes.count {
            let input = Array(bytes[..<length])
            var bits = input.flatMap { byte in (0..<8).reversed().map { byte >> $0 & 1 } }
            while bits.count % 6 != 0 { bits.append(0) }
            var expected = stride(from: 0, to: bits.count, by: 6).map { start in
                String(alphabet[bits[start..<start + 6].reduce(0) { Int($0) << 1 | Int($1) }])
            }.joined()
            while expected.count % 4 != 0 { expected += "=" }
            #expect(Base64.encode(input) == expected, "length \(length)")
        }
    }

    @Test func utf8ValidatorAcrossSplits() {
        let text = Array("héllo €𝄞 ok".utf8)
        for split in 0...text.count {
            var v = UTF8Validator()
            v.feed(Array(text[..<split]))
            v.feed(Array(text[split...]))
            #expect(v.isValid && v.isComplete)
        }
        #expect(!UTF8Validator.isValid([0xC0, 0x80]))  // overlong
        #expect(!UTF8Validator.isValid([0xED, 0xA0, 0x80]))  // surrogate
        #expect(!UTF8Validator.isValid([0xF4, 0x90, 0x80, 0x80]))  // > U+10FFFF
        #expect(!UTF8Validator.isValid([0xE2, 0x82]))  // cut short
        #expect(!UTF8Validator.isValid([0xFF]))
        #expect(UTF8Validator.isValid(Array(repeating: 0x41, count: 100)))
    }

    /// RFC 7692 §7.2.3 examples, literal bytes.
    @Test(arguments: [
        ([0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00] as [UInt8], "Hello"),  // §7.2.3.1
        ([0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00], "Hello"),  // §7.2.3.3 stored block
        ([0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00], "Hello"),  // §7.2.3.4 BFINAL set
        ([0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xCA, 0xC9, 0xC9, 0x07, 0x00], "Hello"),  // §7.2.3.5 two blocks
        ([0x00], ""),  // §7.2.3.6 empty block
    ])
    func rfc7692Inflate(payload: [UInt8], text: String) throws {
        let inflater = Inflater()
        var out: [UInt8] = []
        try payload.withUnsafeBytes { try inflater.inflate($0) { out += $0 } }
        try inflater.finishMessage(resetContext: false) { out += $0 }
        #expect(out == Array(text.utf8))
    }

    @Test func rfc7692SharedWindowNeedsContext() throws {
        let inflater = Inflater()
        var out: [UInt8] = []
        for payload: [UInt8] in [[0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00], [0xF2, 0x00, 0x11, 0x00, 0x00]] {
            try payload.withUnsafeBytes { try inflater.inflate($0) { out += $0 } }
            try inflater.finishMessage(resetContext: false) { out += $0 }
        }
        #expect(out == Array("HelloHello".utf8))
        // Without the first message's window the second one must fail, not produce garbage.
        let fresh = Inflater()
        #expect(throws: Inflater.Failure.self) {
            try [UInt8]([0xF2, 0x00, 0x11, 0x00, 0x00]).withUnsafeBytes { try fresh.inflate($0) { _ in } }
            try fresh.finishMessage(resetContext: false) { _ in }
        }
    }

    @Test func deflateInflateRoundTripWithAndWithoutTakeover() throws {
        for noContext in [false, true] {
            let deflater = Deflater(windowBits: 10, noContextTakeover: noContext)
            let inflater = Inflater()
            for i in 0..<5 {
                let message = Array("message \(i) repeated repeated repeated".utf8)
                var out: [UInt8] = []
                let compressed = deflater.compressMessage(message)
                try compressed.withUnsafeBytes { try inflater.inflate($0) { out += $0 } }
                try inflater.finishMessage(resetContext: noContext) { out += $0 }
                #expect(out == message)
            }
        }
    }

    /// An empty message, and a message whose last piece is empty, still end the way RFC 7692 §7.2.1
    /// wants: after a flush with nothing new zlib writes nothing, and a payload that then ends on a
    /// whole block makes the receiver's `00 00 FF FF` a stored block of 0xFF00 bytes (this broke a
    /// streamed message re-encoded by the changing pipe, and any empty message after another).
    @Test func messagesEndingWithNothingNewStillInflate() throws {
        for noContext in [false, true] {
            let deflater = Deflater(noContextTakeover: noContext)
            let inflater = Inflater()
            func received(_ payload: [UInt8]) throws -> [UInt8] {
                var out: [UInt8] = []
                try payload.withUnsafeBytes { try inflater.inflate($0) { out += $0 } }
                try inflater.finishMessage(resetContext: noContext) { out += $0 }
                return out
            }
            #expect(try received(deflater.compressMessage(Array("first".utf8))) == Array("first".utf8))
            #expect(try received(deflater.compressMessage([])) == [])
            #expect(try received(deflater.compressMessage([])) == [])
            let pieces = deflater.compress(Array("in pieces".utf8), final: false) + deflater.compress([], final: true)
            #expect(try received(pieces) == Array("in pieces".utf8))
            #expect(try received(deflater.compressMessage(Array("after".utf8))) == Array("after".utf8))
        }
    }

    @Test func extensionParametersStayWithTheirExtension() {
        let offers = ExtensionOffer.parse(["permessage-deflate; client_max_window_bits, x-foo; server_no_context_takeover", "permessage-deflate;server_max_window_bits=\"10\""])
        #expect(offers.map(\.name) == ["permessage-deflate", "x-foo", "permessage-deflate"])
        #expect(offers[1].parameters.map(\.name) == ["server_no_context_takeover"])
        #expect(offers[2].parameters.first?.value == "10")
        let (config, problems) = PerMessageDeflate.fromResponse(ExtensionOffer.parse(["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"])[0])
        #expect(problems.isEmpty)
        #expect(config.resetsContext(fromClient: false) && !config.resetsContext(fromClient: true))
        #expect(config.clientMaxWindowBits == 10)
        let (_, bad) = PerMessageDeflate.fromResponse(ExtensionOffer.parse(["permessage-deflate; client_max_window_bits=16; foo"])[0])
        #expect(bad.count == 2)
    }

    @Test func httpHeadKeepsOrderCaseAndDuplicatesAcrossSplits() throws {
        let text = "GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\nx-dup: 2\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\r\n\u{81}\u{0}"
        let bytes = Array(text.utf8)
        for split in 1..<bytes.count {
            var parser = HTTPHeadParser()
            var result = try parser.feed(Array(bytes[..<split]))
            var consumedTotal = result?.consumed ?? split
            if result == nil {
                result = try parser.feed(Array(bytes[split...]))
                consumedTotal = split + (result?.consumed ?? 0)
            }
            let head = try #require(result?.head)
            #expect(head.target == "/chat?x=1")
            #expect(head.headers.map(\.name) == ["Host", "X-Dup", "x-dup", "Upgrade", "Connection"])
            #expect(head.values("x-dup") == ["1", "2"])
            #expect(head.isWebSocketUpgradeRequest)
            #expect(consumedTotal == bytes.count - 3)  // the frame bytes after the head are left alone
        }
    }

    @Test func closeCodesAllowedOnWire() {
        #expect(CloseCode.isAllowedOnWire(1000) && CloseCode.isAllowedOnWire(4999) && CloseCode.isAllowedOnWire(1014))
        for code: UInt16 in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] { #expect(!CloseCode.isAllowedOnWire(code), "\(code)") }
    }
}

@Suite struct HexTests {
    @Test func encodesLowerCaseAndDecodesEitherCase() {
        #expect(Hex.encode([0x00, 0x0F, 0xA0, 0xFF]) == "000fa0ff")
        #expect(Hex.decode(Array("000FA0ff".utf8)) == [0x00, 0x0F, 0xA0, 0xFF])
        #expect(Hex.decode(Array("abc".utf8)) == nil && Hex.decode(Array("zz".utf8)) == nil && Hex.decode([UInt8]()) == [])
    }
}
