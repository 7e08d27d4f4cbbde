import Testing
import WSTapDissect
import WSTapFilter
import WSTapTestSupport
import WSTapWire

/// Records of one conversation, dissected from the wire, for filters to select from.
enum Sample {
    static let steps: [Step] = [
        (c2s, Wire.request(protocols: "chat.v2", path: "/chat/room?x=1")),
        (s2c, Wire.response(protocol: "chat.v2")),
        (c2s, Wire.text(#"{"op":"subscribe","data":[{"id":7,"tags":["a","b"]}],"ok":true}"#, mask: 0x0102_0304)),
        (s2c, Wire.text(#"{"type":"tick","price":101.5,"id":"7"}"#)),
        (s2c, Wire.frame(.binary, Array(repeating: 0xAB, count: 5000))),
        (c2s, Wire.frame(.ping, Array("p".utf8), mask: 9)),
        (s2c, Wire.frame(.pong, Array("p".utf8))),
        (c2s, Wire.frame(.text, Array("unmasked hello".utf8))),  // a client frame without mask: a diagnostic
        (c2s, Wire.frame(.close, [0x03, 0xE8] + Array("bye".utf8), mask: 5)),
        (s2c, Wire.frame(.close, [0x03, 0xE8])),
    ]

    static let records: [TapRecord] = {
        let dissector = StreamDissector(connection: 3, info: ConnectionInfo(client: "c", server: "example.test:9000"))
        var out: [TapRecord] = []
        for (direction, bytes) in steps { dissector.feed(bytes, from: direction, at: fixtureTime, into: &out) }
        dissector.finish(at: fixtureTime, into: &out)
        out.append(TapRecord(connection: 3, timestamp: fixtureTime, body: .end(EndRecord(reason: "both closed", closedBy: "client", clientBytes: 1, serverBytes: 1))))
        return out
    }()

    static var open: OpenRecord {
        for case .open(let o) in records.map(\.body) { return o }
        fatalError("no open record")
    }

    /// One short line per record that matches, so expectations read like the console.
    static func matching(_ source: String) throws -> [String] {
        let filter = try Filter(parsing: source)
        let facts = ConnectionFacts(open)
        return records.filter { filter.matches($0, connection: facts) }.map(describe)
    }

    static func describe(_ record: TapRecord) -> String {
        switch record.body {
        case .open: "open"
        case .http: "http"
        case .frame(let f): "frame \(f.header.opcode)"
        case .message(let m): "\(m.direction.sender) \(m.opcode) \(m.length)"
        case .diagnostic(let d): "diag \(d.code.rawValue)"
        case .end: "end"
        case .gap: "gap"
        case .change(let c): "change \(c.result)"
        }
    }
}

@Suite struct FilterMatchingTests {
    @Test func directionOpcodeAndTextTogether() throws {
        #expect(try Sample.matching(#"from=client op=text text~/"op":"subscribe"/"#) == ["client text 63"])
        #expect(try Sample.matching("from=server type=message") == ["server text 38", "server binary 5000", "server pong 1", "server close 2"])
    }

    /// The UI's filter box sends what a user types; `type=change` must not be refused while change
    /// records are in the schema (it was, until the web UI's test asked for them).
    @Test func typeChangeSelectsChangeRecords() throws {
        let change = TapRecord(connection: 3, timestamp: fixtureTime, body: .change(ChangeRecord(
            direction: .clientToServer, offset: 0, rules: ["control API"], actions: [], result: .injected, sent: [])))
        let filter = try Filter(parsing: "type=change from=client")
        #expect(filter.matches(change))
        #expect(!Sample.records.contains { filter.matches($0) })
    }

    @Test func sizesTakeKAndM() throws {
        #expect(try Sample.matching("type=message len>4K") == ["server binary 5000"])
        #expect(try Sample.matching("type=message len>=5000 len<=0.01M") == ["server binary 5000"])
        #expect(try Sample.matching("type=frame wire>4K") == ["frame binary"])
    }

    @Test func jsonPathsCompareAsJSON() throws {
        #expect(try Sample.matching(#"json.type="tick""#) == ["server text 38"])
        #expect(try Sample.matching("json.type=tick json.price>100") == ["server text 38"])
        #expect(try Sample.matching("json.data[0].id=7") == ["client text 63"])
        #expect(try Sample.matching(#"json.data[0].tags[1]="b""#) == ["client text 63"])
        #expect(try Sample.matching("json.ok=true") == ["client text 63"])
        #expect(try Sample.matching("json.ok?") == ["client text 63"])
        // A quoted number finds the number and the string written that way; unquoted, only the number.
        #expect(try Sample.matching(#"json.id="7""#) == ["server text 38"])
        #expect(try Sample.matching(#"json["type"]~/^ti/"#) == ["server text 38"])
        #expect(try Sample.matching("json.missing?") == [])
    }

    @Test func notAndParenthesesAndOr() throws {
        #expect(try Sample.matching("type=message -op=ping -op=pong -op=close") == ["client text 63", "server text 38", "server binary 5000", "client text 14"])
        #expect(try Sample.matching("type=message (op=ping or op=pong)") == ["client ping 1", "server pong 1"])
        #expect(try Sample.matching("type=message not (from=client or op=binary) op!=close") == ["server text 38", "server pong 1"])
    }

    @Test func connectionFieldsApplyToEveryRecordOfTheConnection() throws {
        let all = try Sample.matching("url~/chat/")
        #expect(all.count == Sample.records.count)
        #expect(try Sample.matching("path=/chat/room type=open") == ["open"])
        #expect(try Sample.matching("host=example.test:9000 sub=chat.v2 op=ping") == ["frame ping", "client ping 1"])
        #expect(try Sample.matching("conn=4") == [])
    }

    @Test func closeCodesReasonsDiagnosticsAndFrameBits() throws {
        #expect(try Sample.matching("code=1000 reason=bye") == ["client close 5"])
        #expect(try Sample.matching("op=close -reason?") == ["frame close", "frame close", "server close 2"])
        #expect(try Sample.matching("diag=unmasked-client-frame") == ["diag unmasked-client-frame"])
        #expect(try Sample.matching("type=frame masked=false from=client") == ["frame text"])
        #expect(try Sample.matching("type=frame fin=false") == [])
    }

    @Test func bareWordsSearchTheText() throws {
        #expect(try Sample.matching("hello") == ["client text 14"])
        #expect(try Sample.matching(#""unmasked hello""#) == ["client text 14"])
        #expect(try Sample.matching("/SUBSCRIBE/i") == ["client text 63"])
        #expect(try Sample.matching("bytes:abab type=message") == ["server binary 5000"])
    }
}

@Suite struct FilterSyntaxErrorTests {
    func error(_ source: String) -> FilterError? {
        do {
            _ = try Filter(parsing: source)
            return nil
        } catch {
            return error
        }
    }

    @Test func errorsPointAtTheColumn() throws {
        let cases: [(String, Int, String)] = [
            ("len>", 5, "expected a value"),
            ("from=clinet", 6, "from is client or server"),
            ("frm=client", 1, "unknown field 'frm'"),
            ("op=txt", 4, "op is text, binary"),
            ("(op=text", 1, "'(' is not closed"),
            ("op=text)", 8, "')' without a matching '('"),
            ("len>4Q", 5, "expected a number"),
            ("text~/[a/", 7, "bad regular expression"),
            ("text~/abc", 6, "not closed with '/'"),
            ("len~/4/", 4, "cannot take '~'"),
            ("masked>1", 7, "is true or false"),
            ("diag=no-such-thing", 6, "unknown diagnostic"),
            ("json.=3", 6, "empty name in the JSON path"),
            ("", 1, "empty filter"),
            ("op=text or", 11, "expected a test"),
            ("-", 2, "expected a test right after '-'"),
            ("text=\"abc", 6, "the quote is not closed"),
            ("compressed", 11, "needs an operator"),
        ]
        for (source, column, message) in cases {
            let e = try #require(error(source), "\(source) parsed")
            #expect(e.column == column, "\(source): \(e)")
            #expect(e.message.contains(message), "\(source): \(e.message)")
        }
    }

    /// Found by the fuzz target: read as characters, a combining mark after "(" merged with it and the
    /// parenthesis was no longer seen (Tests/Regressions/filter/crash-1b2f…).
    @Test func aCombiningMarkDoesNotHideAParenthesisOrAnOperator() throws {
        let source = "\u{303}x ////"
        _ = try Filter(parsing: source)
        _ = try Filter(parsing: "not (\(source))")
        let e = try #require(error("op=\u{303}text"))
        #expect(e.column == 4 && e.message.hasPrefix("op is text"))
    }

    @Test func theDescriptionIsOneLineAndThePointerACaretUnderTheColumn() throws {
        let e = try #require(error("op=text len>x"))
        #expect(e.description == "expected a number (sizes may end in K or M), got 'x' at column 13: op=text len>x")
        #expect(e.pointer == "op=text len>x\n            ^")
    }
}

@Suite struct FilterSelectionTests {
    /// Two connections' records interleaved: the selection keeps each one's open and end around its
    /// matches, and nothing of a connection without a match.
    @Test func openAndEndOfEachMatchingConnectionAreKept() throws {
        func renumbered(_ id: UInt64) -> [TapRecord] { Sample.records.map { var r = $0; r.connection = id; return r } }
        var interleaved: [TapRecord] = []
        for (a, b) in zip(renumbered(1), renumbered(2)) { interleaved += [a, b] }
        var selection = FilterSelection(try Filter(parsing: "conn=2 op=pong type=message"))
        let kept = selection.select(interleaved)
        #expect(kept.map { "\($0.connection) \(Sample.describe($0))" } == ["2 open", "2 server pong 1", "2 end"])
        #expect(selection.followedConnections == 0)
    }

    @Test func aMatchingOpenIsWrittenAtOnceAndNothingIsHeldAfterTheEnd() throws {
        var selection = FilterSelection(try Filter(parsing: "type=open or op=close"))
        let kept = selection.select(Sample.records).map(Sample.describe)
        #expect(kept == ["open", "frame close", "client close 5", "frame close", "server close 2", "end"])
        #expect(selection.followedConnections == 0)
    }
}

@Suite struct JSONValueTests {
    @Test func documentsParseAndBadOnesAreRejected() {
        #expect(JSONValue.parse(Array(#" {"a":[1,-2.5e3,"x\u00e9\n",true,null,{}]} "#.utf8))
                == .object([("a", .array([.number(1, text: "1"), .number(-2500, text: "-2.5e3"), .string("xé\n"), .bool(true), .null, .object([])]))]))
        #expect(JSONValue.parse(Array(#""\ud83d\ude00""#.utf8)) == .string("😀"))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "tru", "\"a", "[1] 2", "\"\u{1}\"", "{\"a\":1,}", "nul"] {
            #expect(JSONValue.parse(Array(bad.utf8)) == nil, "\(bad)")
        }
        // Hostile nesting is refused, not recursed into.
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(JSONValue.parse(Array(deep.utf8)) == nil)
        let fine = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(JSONValue.parse(Array(fine.utf8)) != nil)
    }

    /// The parser computes short decimals itself; every one must be the Double that strtod gives,
    /// to the bit, long ones and exponents included (they take strtod's way).
    @Test func numbersAreTheDoublesStrtodGives() throws {
        var random = SplitMix(seed: 7)
        var texts = ["0", "-0", "0.5", "1764837951.123456", "9007199254740993", "123456789012345678901234", "1e22", "0.1", "-2.5e-3",
                     "4503599627370495.5", "0.0000000000000000000001", "0.00000000000000000000001", "12.000123", "1733.000001"]
        for _ in 0..<20_000 {
            let whole = String(random.next() >> UInt64(random.below(64)))
            let fraction = String(random.next() >> UInt64(random.below(64)))
            texts.append(random.below(2) == 0 ? whole : "\(random.below(2) == 0 ? "-" : "")\(whole).\(fraction)")
        }
        for text in texts {
            guard case .number(let value, let written)? = JSONValue.parse(Array(text.utf8)) else {
                Issue.record("\(text) did not parse")
                continue
            }
            #expect(written == text)
            #expect(value.bitPattern == Double(text)!.bitPattern, "\(text)")
        }
    }

    @Test func lookupsTakeTheLastOfDuplicateNames() {
        let value = JSONValue.parse(Array(#"{"k":1,"k":2}"#.utf8))
        #expect(value?[member: "k"] == .number(2, text: "2"))
        #expect(value?.serialized == #"{"k":1,"k":2}"#)
    }
}
