import Testing
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRules
import WSTapWire

/// The exec hook protocol's lines (docs/hooks.md): what wstap writes, and every verdict it takes or
/// refuses. A refused line makes the proxy restart the hook, so each refusal must say what was wrong.
@Suite struct HookProtocolTests {
    @Test func aRequestIsOneLineWithTheIdTheRuleAndTheWholeMessage() throws {
        let payload = Array(String(repeating: "x", count: 5000).utf8) + Array("\n\"end\"".utf8)
        let record = TapRecord(connection: 3, timestamp: Timestamp(nanoseconds: 1_000_000_000), body: .message(MessageRecord(
            direction: .clientToServer, opcode: .text, frames: 1, wireLength: UInt64(payload.count), length: UInt64(payload.count),
            compressed: false, payload: payload, truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false,
            incomplete: false, offset: 200, textValidity: .valid)))
        let line = HookProtocol.request(id: 42, rule: "my rule", record: record)
        #expect(line.last == 0x0A && line.dropLast().firstIndex(of: 0x0A) == nil, "one line: the newline inside the text is escaped")
        let json = try #require(JSONValue.parse(line.dropLast()))
        #expect(json[member: "id"] == .number(42, text: "42"))
        #expect(json[member: "rule"] == .string("my rule"))
        let message = try #require(json[member: "message"])
        #expect(message[member: "text"] == .string(String(decoding: payload, as: UTF8.self)))
        #expect(message[member: "from"] == .string("client") && message[member: "conn"] == .number(3, text: "3"))
    }

    @Test func everyVerdictParses() throws {
        func parse(_ line: String) throws -> (UInt64, HookVerdict) { try HookProtocol.verdict(Array(line.utf8)) }
        #expect(try parse(#"{"id":1,"verdict":"forward"}"#) == (1, HookVerdict(.forward)))
        #expect(try parse(#"{"verdict":"drop","id":2}"# + "\r") == (2, HookVerdict(.drop)))
        #expect(try parse(#"{"id":3,"verdict":"replace","text":"new"}"#) == (3, HookVerdict(.replace(Array("new".utf8)))))
        #expect(try parse(#"{"id":4,"verdict":"replace","base64":"AAH/"}"#) == (4, HookVerdict(.replace([0, 1, 255]))))
        #expect(try parse(#"{"id":5,"verdict":"delay","ms":250}"#) == (5, HookVerdict(.delay(milliseconds: 250))))
        #expect(try parse(#"{"id":6,"verdict":"close"}"#) == (6, HookVerdict(.close(code: 1000, reason: "", to: .both))))
        #expect(try parse(#"{"id":7,"verdict":"close","code":4001,"reason":"bye","to":"server"}"#)
            == (7, HookVerdict(.close(code: 4001, reason: "bye", to: .server))))
        let injecting = try parse(#"{"id":8,"verdict":"forward","inject":[{"to":"client","text":"hi"},{"to":"server","base64":"AQI="}]}"#)
        #expect(injecting == (8, HookVerdict(.forward, inject: [(.client, .text("hi")), (.server, .bytes([1, 2]))])))
    }

    @Test(arguments: [
        ("not json", "not a JSON object"),
        (#"[1]"#, "not a JSON object"),
        (#"{"verdict":"drop"}"#, "no \"id\""),
        (#"{"id":-1,"verdict":"drop"}"#, "no \"id\""),
        (#"{"id":1.5,"verdict":"drop"}"#, "no \"id\""),
        (#"{"id":1}"#, "no \"verdict\""),
        (#"{"id":1,"verdict":"explode"}"#, "unknown verdict 'explode'"),
        (#"{"id":1,"verdict":"replace"}"#, "replace needs"),
        (#"{"id":1,"verdict":"replace","base64":"*"}"#, "does not decode"),
        (#"{"id":1,"verdict":"delay"}"#, "delay needs"),
        (#"{"id":1,"verdict":"close","code":999}"#, "1000 to 4999"),
        (#"{"id":1,"verdict":"close","to":"nobody"}"#, "client, server or both"),
        (#"{"id":1,"verdict":"forward","inject":{"to":"client"}}"#, "must be a list"),
        (#"{"id":1,"verdict":"forward","inject":[{"text":"x"}]}"#, "needs \"to\""),
        (#"{"id":1,"verdict":"forward","inject":[{"to":"both","text":"x"}]}"#, "client or server"),
        (#"{"id":1,"verdict":"forward","inject":[{"to":"client"}]}"#, "needs \"text\" or \"base64\""),
    ])
    func aLineThatIsNotAVerdictSaysWhy(line: String, why: String) {
        #expect {
            try HookProtocol.verdict(Array(line.utf8))
        } throws: { error in
            (error as? HookProtocol.Garbage)?.description.contains(why) == true
        }
    }

    @Test func aCloseReasonMustFitInAFrame() {
        let reason = String(repeating: "r", count: 124)
        #expect(throws: HookProtocol.Garbage.self) { try HookProtocol.verdict(Array(#"{"id":1,"verdict":"close","reason":"\#(reason)"}"#.utf8)) }
    }
}
