import Testing
import WSTapControl
import WSTapDissect
import WSTapRelay
import WSTapRules
import WSTapTestSupport
import WSTapWire

/// Live connections for the API: real relay cores (playbooks past the 101), reached by number.
/// The proxy's registry does the same on each connection's event loop.
final class PlaybookConnections: ConnectionSteering, @unchecked Sendable {
    // @unchecked: a test drives it from one thread.
    let plays: [UInt64: RelayPlaybook]
    init(_ plays: [UInt64: RelayPlaybook]) { self.plays = plays }
    func steer(_ id: UInt64, _ command: SteerCommand, reply: @escaping @Sendable (SteerAnswer?) -> Void) { reply(plays[id].map { $0.steer(command) }) }
    var liveConnections: [UInt64] { plays.keys.sorted() }
}

private final class Answered: @unchecked Sendable {
    var response: ControlResponse?
}

@Suite struct ControlSteeringTests {
    let store = RecordStore()

    func play(_ rules: [String]) throws -> RelayPlaybook {
        let parsed = try rules.map { try RuleParser.parse($0) }
        let random = SeededRandom(seed: 3)
        let play = RelayPlaybook(changes: ChangeSettings(rules: RuleBook(RuleEngine(rules: parsed)), random: { random.next() }))
        play.openWebSocket()
        return play
    }

    /// The response, waited for when a connection answers it (here at once, as the playbook is synchronous).
    func call(_ api: ControlAPI, _ method: String, _ target: String, _ body: String = "") -> ControlResponse {
        let response = api.respond(to: ControlRequest(method: method, target: target, headers: ["host": "127.0.0.1:1", "authorization": "Bearer t"],
                                                      body: Array(body.utf8)))
        guard case .later(let run) = response else { return response }
        let answered = Answered()
        run { answered.response = $0 }
        return answered.response ?? .error(500, "never answered")
    }

    func api(_ plays: [UInt64: RelayPlaybook]) -> ControlAPI {
        ControlAPI(store: store, access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1), steering: PlaybookConnections(plays))
    }

    @Test func aHoldIsListedAcrossConnectionsAndEditedByItsNumber() throws {
        let one = try play(["[gate] from=server text=held => hold"]), two = try play([])
        let api = api([1: one, 2: two])
        let s = one.sentToClient.count
        one.upstream(Wire.text("held"))
        let all = body(call(api, "GET", "/api/holds"))
        #expect(all.hasPrefix(#"{"holds":[{"conn":1,"id":3,"from":"server","#) && all.contains(#""text":"held","rules":["gate"]"#))
        #expect(body(call(api, "GET", "/api/connections/2/holds")) == #"{"holds":[]}"#)
        let released = call(api, "POST", "/api/connections/1/holds/3", #"{"action":"edit","text":"new"}"#)
        #expect(released.status == 200 && body(released) == #"{"result":"released"}"#)
        #expect(SeenFrame.parse(Array(one.sentToClient[s...])).frames.map { text($0.payload) } == ["new"])
        #expect(call(api, "POST", "/api/connections/1/holds/3", #"{"action":"forward"}"#).status == 404)
    }

    @Test func sendsAndClosesReachThePeersAndBadBodiesSayWhy() throws {
        let one = try play([])
        let api = api([1: one])
        let c = one.sentToUpstream.count
        #expect(call(api, "POST", "/api/connections/1/messages", #"{"to":"server","base64":"AQID"}"#).status == 200)
        #expect(SeenFrame.parse(Array(one.sentToUpstream[c...])).frames.map(\.payload) == [[1, 2, 3]])
        for (bad, reason) in [("", "peer"), (#"{"to":"server"}"#, "base64"), (#"{"to":"moon","text":"x"}"#, "client, server or both"),
                              (#"{"to":"server","text":"x","fragments":0}"#, "fragments"), ("[1]", "JSON object"),
                              (#"{"to":"server","base64":"!!"}"#, "base64")] {
            let answer = call(api, "POST", "/api/connections/1/messages", bad)
            #expect(answer.status == 400 && body(answer).contains(reason), "\(bad): \(body(answer))")
        }
        #expect(call(api, "POST", "/api/connections/1/close", #"{"code":1006}"#).status == 409)
        #expect(call(api, "POST", "/api/connections/1/close", #"{"code":"x"}"#).status == 400)
        #expect(call(api, "POST", "/api/connections/1/holds/1", #"{"action":"maybe"}"#).status == 400)
        #expect(call(api, "POST", "/api/connections/7/abort").status == 404)
        #expect(call(api, "GET", "/api/connections/1/messages").status == 405)
        #expect(call(api, "POST", "/api/connections/1/close", #"{"code":4001,"reason":"bye"}"#).status == 200)
        #expect(SeenFrame.parse(Array(one.sentToUpstream[c...])).frames.last?.opcode == .close)
    }

    @Test func withoutLiveConnectionsSteeringSaysSo() {
        let api = ControlAPI(store: store, access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1))
        #expect(call(api, "POST", "/api/connections/1/abort").status == 409)
        #expect(body(call(api, "GET", "/api/holds")) == #"{"holds":[]}"#)
    }
}

@Suite struct ControlRulesTests {
    let store = RecordStore()
    let book = RuleBook(RuleEngine(rules: []))

    var api: ControlAPI {
        ControlAPI(store: store, access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1), rules: RuleControl(book: book, notice: { _ in }))
    }

    func call(_ method: String, _ target: String, _ body: String = "") -> ControlResponse {
        api.respond(to: ControlRequest(method: method, target: target, headers: ["host": "127.0.0.1:1", "authorization": "Bearer t"], body: Array(body.utf8)))
    }

    @Test func rulesAreReplacedReadBackAndRefusedWhereTheyAreWrong() {
        let put = call("PUT", "/api/rules", "# a comment\n[shout] from=server => replace /echo/ \"ECHO\"\n")
        #expect(put.status == 200 && body(put).contains(#""name":"shout","line":2"#))
        #expect(book.engine.rules.map(\.name) == ["shout"])
        #expect(body(call("GET", "/api/rules")).contains(#"replace /echo/ \"ECHO\""#))
        let bad = call("PUT", "/api/rules", "[x] from=nobody => drop")
        #expect(bad.status == 400 && body(bad).contains(#""line":1,"column":"#))
        #expect(call("PUT", "/api/rules", "[h] * => exec ./hook.py").status == 400)
        #expect(call("PUT", "/api/rules", "[f] * => inject to=client file /etc/passwd").status == 400)
        // What was refused left the rules in force alone.
        #expect(book.engine.rules.map(\.name) == ["shout"])
        #expect(call("DELETE", "/api/rules").status == 405)
    }

    @Test func rulesAreTriedOnTheRecordsHeld() {
        store.append(conversation(1, messages: 3))
        let tried = call("POST", "/api/rules/test", "[shout] from=server => replace /echo/ \"ECHO\"\n[none] text:zzz => drop")
        #expect(tried.status == 200)
        let answer = body(tried)
        #expect(answer.hasPrefix(#"{"messages":6,"rules":[{"name":"shout""#))
        #expect(answer.contains(#""matched":3,"changed":3,"sample":{"before":"echo 0","after":"ECHO 0"}"#))
        #expect(answer.contains(#""name":"none","line":2,"text":"#) && answer.contains(#""matched":0,"changed":0,"sample":null"#))
        #expect(body(call("POST", "/api/rules/test?conn=2", "[all] * => drop")).hasPrefix(#"{"messages":0,"#))
    }
}
