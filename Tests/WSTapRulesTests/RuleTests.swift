import Testing
import WSTapDissect
import WSTapFilter
import WSTapRules
import WSTapTestSupport
import WSTapWire

func message(_ text: String, from: Direction = .clientToServer, opcode: Opcode = .text) -> TapRecord {
    let payload = Array(text.utf8)
    return TapRecord(connection: 1, timestamp: fixtureTime, body: .message(MessageRecord(
        direction: from, opcode: opcode, frames: 1, wireLength: UInt64(payload.count), length: UInt64(payload.count), compressed: false,
        payload: payload, truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false, incomplete: false, offset: 0)))
}

func outcome(_ rules: [String], _ record: TapRecord, random: Double = 0) throws -> RuleOutcome {
    let engine = RuleEngine(rules: try rules.map { try RuleParser.parse($0) })
    return engine.apply(to: record, connection: ConnectionFacts(url: "ws://h/chat", subprotocol: nil)) { random }
}

func text(_ outcome: RuleOutcome) -> String { String(decoding: outcome.payload, as: UTF8.self) }

@Suite struct RuleActionTests {
    @Test func replaceUsesGroupsOnEveryMatch() throws {
        #expect(text(try outcome([#"op=text => replace /(\w+)=(\d+)/ "$2:$1 $$""#], message("a=1, b=22"))) == "1:a $, 22:b $")
        // An empty match does not loop.
        #expect(text(try outcome([#"* => replace /x*/ "-""#], message("ab"))) == "-a-b-")
        #expect(try outcome([#"* => replace /zzz/ "y""#], message("ab")).edited == false)
    }

    /// A plain-text pattern is replaced as bytes; with `$` in the replacement it goes through the
    /// regex engine, so `$0` still means the match. Both give what a regex would.
    @Test func plainTextPatternsGiveWhatTheRegexWould() throws {
        #expect(text(try outcome([#"* => replace /ab/ "x""#], message("abcab é"))) == "xcx é")
        #expect(text(try outcome([#"* => replace /ab/ "[$0]""#], message("abcab"))) == "[ab]c[ab]")
        #expect(text(try outcome([#"* => replace /é/ "e""#], message("café, é"))) == "cafe, e")
        #expect(try outcome([#"* => replace /ab/ "x""#], message("ab", opcode: .binary)).skipped.count == 1)
    }

    /// The byte replacement (memchr and memcmp) against the standard library's `replacing` on every
    /// string of up to seven a/b letters: non-overlapping, left to right, at both ends.
    @Test func aPlainPatternIsReplacedAsTheStandardLibraryReplacesIt() throws {
        let patterns = ["a", "ab", "aa", "bab", "abba"], templates = ["", "x", "aa", "ab"]
        let inputs = (0...7).flatMap { length in
            (0..<(1 << length)).map { bits in String((0..<length).map { bits >> $0 & 1 == 0 ? "a" : "b" }) }
        }
        for pattern in patterns {
            for template in templates {
                let engine = RuleEngine(rules: [try RuleParser.parse("* => replace /\(pattern)/ \"\(template)\"")])
                for input in inputs {
                    let o = engine.apply(to: message(input), connection: nil) { 0 }
                    let expected = input.replacing(pattern, with: template)
                    #expect(text(o) == expected, "\(input) /\(pattern)/ \(template)")
                    #expect(o.edited == (expected != input), "\(input) /\(pattern)/ \(template)")
                }
            }
        }
    }

    @Test func replaceBytesWorksOnAnyPayload() throws {
        let o = try outcome(["* => replace-bytes hex:6162 hex:ff"], message("abcab", opcode: .binary))
        #expect(o.payload == [0xFF, 0x63, 0xFF] && o.edited)
    }

    @Test func setAndDeleteEditJSONAndSayWhenTheyCannot() throws {
        let doc = #"{"op":"subscribe","data":[{"id":7}],"n":1}"#
        #expect(text(try outcome([#"json.op=subscribe => set json.channel "test"; set json.data[0].id 8; delete json.n"#], message(doc)))
                == #"{"op":"subscribe","data":[{"id":8}],"channel":"test"}"#)
        #expect(text(try outcome(["* => set json.data[1] true"], message(doc))) == #"{"op":"subscribe","data":[{"id":7},true],"n":1}"#)
        let notJSON = try outcome(["* => set json.a 1"], message("plain"))
        #expect(!notJSON.edited && notJSON.skipped.map(\.reason) == ["not JSON"])
        #expect(try outcome(["* => delete json.missing"], message(doc)).edited == false)
    }

    @Test func everyMatchingRuleAppliesInOrderToWhatTheOneBeforeLeft() throws {
        let rules = [#"[a] op=text => replace /cat/ "dog""#, #"[b] text:dog => replace /dog/ "wolf"; mark seen"#, "[c] text:cat => drop"]
        let o = try outcome(rules, message("cat"))
        #expect(text(o) == "wolf" && !o.dropped)
        #expect(o.applied.map(\.rule) == ["a", "b"])
        #expect(o.effects.map(\.description) == ["mark seen"])
        // drop ends the chain.
        let dropped = try outcome(["op=text => drop", #"* => replace /a/ "b""#], message("a"))
        #expect(dropped.dropped && dropped.applied.count == 1 && text(dropped) == "a")
    }

    @Test func probabilityDrawsFromTheGivenGenerator() throws {
        #expect(try outcome(["[p p=0.25] * => drop"], message("x"), random: 0.2).dropped)
        #expect(try outcome(["[p p=0.25] * => drop"], message("x"), random: 0.25).dropped == false)
    }

    @Test func effectsAreKeptInOrderForTheRelay() throws {
        let o = try outcome([#"* => delay 200ms±50ms; hold; inject to=client text "hi"; close 4000 "bye" to=server"#], message("x"))
        #expect(o.effects.map(\.description) == ["delay 200ms±50ms", "hold", #"inject to=client text "hi""#, #"close 4000 "bye" to=server"#])
        #expect(o.changesTraffic && !o.edited)
    }
}

@Suite struct RuleSyntaxTests {
    func error(_ text: String) -> RuleError? {
        do {
            _ = try RuleParser.parse(text)
            return nil
        } catch {
            return error
        }
    }

    @Test func everyActionParsesAndPrintsBack() throws {
        let actions = [#"replace /a(b)/ "x$1""#, "replace-bytes hex:00ff hex:", #"set json.a.b[0] "s""#, "set json.n 3", "delete json.x",
                       "drop", "delay 1.5s", "delay 200ms±50ms", "hold", #"inject to=server text "ping""#, "inject to=client hex:0102",
                       "inject to=client file /tmp/x.bin", #"close 1001 "going" to=both"#, "abort", "duplicate", "fragment count=3",
                       "fragment size=4K", "uncompressed", "corrupt utf8", "corrupt mask", "corrupt length", "exec ./hook.py --flag", "mark tag"]
        for action in actions {
            let rule = try RuleParser.parse("op=text => \(action)")
            #expect(rule.actions.count == 1, "\(action)")
        }
        #expect(try RuleParser.parse("* => delay 200ms+-50ms").actions.map(\.description) == ["delay 200ms±50ms"])
        #expect(try RuleParser.parse("* => fragment size=4K").actions.map(\.description) == ["fragment size=4096"])
        #expect(try RuleParser.parse("* => close 1000").actions.map(\.description) == [#"close 1000 "" to=both"#])
        let named = try RuleParser.parse("[quiet p=0.5] url~/chat/ => drop; mark x")
        #expect(named.name == "quiet" && named.probability == 0.5 && named.actions.count == 2)
        #expect(try RuleParser.parse("* => drop").name == "line 1")
    }

    /// Found by the rules fuzz target: what a rule prints must read back as the same rule (slashes in
    /// patterns, odd JSON names, control characters and JSON values with spaces).
    @Test func printedActionsReadBackAsTheSameActions() throws {
        let sources = [#"replace /a\/b\\/ "x\u001a""#, #"delete json["a b;c\\"]"#, #"set json.x {"k":"a\u0020b\u003b"}"#,
                       #"inject to=client file "/tmp/a b""#, #"set json["."] "v""#]
        for source in sources {
            let rule = try RuleParser.parse("* => \(source)")
            let printed = "* => " + rule.actions.map(\.description).joined(separator: "; ")
            #expect(try RuleParser.parse(printed).actions.map(\.description) == rule.actions.map(\.description), "\(source) printed as \(printed)")
        }
        guard case .replace(let pattern, _) = try RuleParser.parse(#"* => replace /a\/b\\/ "x""#).actions[0] else { return }
        #expect(pattern == #"a/b\\"#)  // \/ is a slash, \\ stays for the regular expression
    }

    @Test func errorsGiveTheLineAndColumn() throws {
        let cases: [(String, Int, String)] = [
            ("op=text drop", 13, "expected '=>'"),
            ("=> drop", 1, "expected a condition"),
            ("op=txt => drop", 4, "op is text"),
            ("op=text =>", 11, "expected an action"),
            ("op=text => explode", 12, "unknown action 'explode'"),
            ("op=text => drop; ", 18, "expected an action after ';'"),
            ("op=text => drop hold", 17, "expected ';' between actions"),
            ("* => replace abc", 14, "replace takes /regular expression/"),
            ("* => replace /[a/ \"x\"", 15, "bad regular expression"),
            ("* => set json.a tru", 17, "is not a JSON value"),
            ("* => set type 1", 10, "expected a JSON path"),
            ("* => delay soon", 12, "delay takes a time"),
            ("* => delay", 11, "delay takes a time"),  // found by the rules fuzz target: an empty time trapped
            ("* => delay 200ms±", 12, "the jitter after ±"),
            ("* => inject text \"x\"", 13, "expected to=client|server"),
            ("* => close 999", 12, "close code from 1000 to 4999"),
            ("* => fragment count=0", 15, "fragment takes count=N"),
            ("* => corrupt bits", 14, "corrupt takes utf8, mask or length"),
            ("[n p=2] * => drop", 4, "p= is a probability"),
            ("[n * => drop", 1, "'[' is not closed"),
        ]
        for (text, column, message) in cases {
            let e = try #require(error(text), "\(text) parsed")
            #expect(e.column == column, "\(text): \(e)")
            #expect(e.message.contains(message), "\(text): \(e.message)")
        }
    }

    @Test func aFileSkipsCommentsAndNamesTheLine() throws {
        let file = "# rules\n\n[a] op=text => drop\r\n  # indented comment\nop=ping => mark p\n"
        let rules = try RuleParser.parseFile(file, origin: "r.txt")
        #expect(rules.map(\.line) == [3, 5] && rules.map(\.name) == ["a", "line 5"])
        do {
            _ = try RuleParser.parseFile("* => drop\nop=text => nope", origin: "r.txt")
            Issue.record("a bad second line parsed")
        } catch {
            #expect(error.description.hasPrefix("r.txt:2:12: unknown action 'nope'"), "\(error)")
        }
    }
}

@Suite struct RuleBookTests {
    /// A connection's copy of the engine follows every reload, and only a reload.
    @Test func aCopyOfTheEngineIsRefreshedAfterEachReplace() throws {
        let book = RuleBook(RuleEngine(rules: [try RuleParser.parse("[a] * => drop")]))
        var engine = RuleEngine(rules: [])
        var seen = UInt64.max
        book.refresh(&engine, seen: &seen)
        #expect(engine.rules.map(\.name) == ["a"])
        let afterFirst = seen
        book.refresh(&engine, seen: &seen)
        #expect(seen == afterFirst && engine.rules.map(\.name) == ["a"])
        book.replace(with: RuleEngine(rules: [try RuleParser.parse("[b] * => drop"), try RuleParser.parse("[c] * => drop")]))
        book.refresh(&engine, seen: &seen)
        #expect(engine.rules.map(\.name) == ["b", "c"] && seen != afterFirst)
    }
}
