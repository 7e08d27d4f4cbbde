import NIOCore
import Testing
import WSTapDissect
import WSTapRelay
import WSTapRules
import WSTapTestSupport
import WSTapWire

/// Exec hooks on a live relay, sans-IO: the relay asks (`askHook`), the test answers as the shell
/// would report the hook's verdict, and each peer's bytes are read as a peer reads them.
@Suite struct ExecHookTests {
    typealias Pipe = ChangingPipeTests

    static func open(_ rules: [String], extensions: String? = nil, timeout: Duration = .seconds(5),
                     failure: ChangeSettings.HookFailure = .open) throws -> RelayPlaybook {
        var settings = try Pipe.settings(rules)
        settings.hookTimeout = timeout
        settings.hookFailure = failure
        let play = RelayPlaybook(changes: settings)
        play.openWebSocket(request: Wire.request(extensions: extensions), response: Wire.response(extensions: extensions))
        return play
    }

    static func asked(_ play: RelayPlaybook) -> [String] {
        play.hookRequests.map { request in
            guard case .message(let message) = request.record.body else { return "?" }
            return String(decoding: message.payload, as: UTF8.self)
        }
    }

    /// The hook sees each message whole and inflated; later messages of the sender wait behind the one
    /// it decides, pings do not; a `forward` sends the message with its own bytes, in order, whatever
    /// order the verdicts come in.
    @Test func forwardedMessagesKeepTheirBytesAndTheirOrder() throws {
        let play = try Self.open(["[look] from=client => exec hook"], extensions: "permessage-deflate")
        let deflater = Deflater()
        let one = Wire.frame(.text, deflater.compressMessage(Array("one".utf8)), rsv1: true, mask: 1)
        let two = Wire.frame(.text, deflater.compressMessage(Array("two".utf8)), rsv1: true, mask: 2)
        let c = play.sentToUpstream.count
        play.client(one + Wire.frame(.ping, Array("alive?".utf8), mask: 3) + two)
        #expect(Self.asked(play) == ["one", "two"])
        #expect(play.hookRequests.allSatisfy { $0.command == "hook" && $0.rule == "look" })
        #expect(try Pipe.messages(Array(play.sentToUpstream[c...])).map(\.1) == ["alive?"])
        play.answer(1, .verdict(HookVerdict(.forward)))
        play.answer(1, .verdict(HookVerdict(.drop)))  // a second verdict: the first holds
        #expect(try Pipe.messages(Array(play.sentToUpstream[c...])).map(\.1) == ["alive?"], "the second waits for the first")
        play.answer(0, .verdict(HookVerdict(.forward)))
        let ping = Wire.frame(.ping, Array("alive?".utf8), mask: 3)
        #expect(Array(play.sentToUpstream[c...]) == ping + one + two)
        let changes = Pipe.changes(play)
        #expect(changes.map(\.result) == [.forwarded, .forwarded])
        #expect(changes.allSatisfy { $0.notes == ["hook 'hook' answered forward"] && $0.heldNanoseconds != nil })
    }

    /// Replace, drop, delay and inject on a compressed direction with context takeover: the peer's
    /// own inflater still reads every later message, and the injected message goes the other way.
    @Test func verdictsChangeTheServersMessagesAndTheWindowStaysInStep() throws {
        let play = try Self.open(["[h] from=server => exec hook"], extensions: "permessage-deflate")
        let deflater = Deflater()
        let texts = ["the price is 5, the price", "secret, the price", "slow, the price", "after, the price"]
        let c = play.sentToUpstream.count, s = play.sentToClient.count
        for text in texts { play.upstream(Wire.frame(.text, deflater.compressMessage(Array(text.utf8)), rsv1: true)) }
        #expect(Self.asked(play) == texts)
        play.answer(0, .verdict(HookVerdict(.replace(Array("the PRICE is 5".utf8)), inject: [(.server, .text("noted"))])))
        play.answer(1, .verdict(HookVerdict(.drop)))
        play.answer(2, .verdict(HookVerdict(.delay(milliseconds: 100))))
        play.answer(3, .verdict(HookVerdict(.forward)))
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == ["the PRICE is 5"])
        let up = Array(play.sentToUpstream[c...])
        #expect(try Pipe.texts(up) == ["noted"] && SeenFrame.parse(up).frames.allSatisfy(\.masked))
        play.advance(milliseconds: 100)
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == ["the PRICE is 5", "slow, the price", "after, the price"])
        #expect(Pipe.codes(play).filter { $0 == "reencoding" }.count == 1)
        let results = Pipe.changes(play).filter { $0.direction == .serverToClient }.map(\.result)
        #expect(results == [.edited, .dropped, .forwarded, .forwarded])
        let injected = try #require(Pipe.changes(play).first { $0.result == .injected })
        #expect(injected.rules == ["h"] && injected.direction == .clientToServer)
    }

    /// While a hook decides a compressed message, the messages behind it are framed only after it: a
    /// rule's edit of a later one, or the hook's edit of this one, re-encodes the direction in the
    /// order the messages leave, so the peer's inflater reads them all (found by the changing-relay
    /// fuzz target: the later edit was compressed first, the decided message after it, sent before it).
    @Test(arguments: [false, true])
    func messagesBehindAHookLeaveInStepWithTheWindow(hookEdits: Bool) throws {
        let play = try Self.open(["[ask] text:ask => exec hook", "[edit] text:edit => replace /edit/ \"EDIT\""], extensions: "permessage-deflate")
        let deflater = Deflater()
        let texts = ["ask about this message", "then edit this message", "and this message, untouched"]
        let s = play.sentToClient.count
        for text in texts { play.upstream(Wire.frame(.text, deflater.compressMessage(Array(text.utf8)), rsv1: true)) }
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == [], "all wait behind the first")
        let verdict = hookEdits ? HookVerdict(.replace(Array("asked about this message".utf8))) : HookVerdict(.forward)
        play.answer(0, .verdict(verdict))
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == [hookEdits ? "asked about this message" : texts[0], "then EDIT this message", texts[2]])
        #expect(Pipe.codes(play).filter { $0 == "reencoding" }.count == 1)
    }

    /// A close verdict ends the message's way as the `close` action does, each peer sees one close
    /// and what the sender sent after the message never follows it.
    @Test func aCloseVerdictClosesAndNothingOfTheSendersFollows() throws {
        let play = try Self.open(["from=client => exec hook"])
        let c = play.sentToUpstream.count, s = play.sentToClient.count
        play.client(Wire.text("bye", mask: 1) + Wire.text("after", mask: 2))
        play.answer(0, .verdict(HookVerdict(.close(code: 4000, reason: "hook says bye", to: .both))))
        let up = try Pipe.messages(Array(play.sentToUpstream[c...])), down = try Pipe.messages(Array(play.sentToClient[s...]))
        #expect(up.map(\.0) == [.close] && down.map(\.0) == [.close])
        #expect(up.first?.1.dropFirst(2) == "hook says bye")
        play.answer(1, .verdict(HookVerdict(.forward)))
        #expect(try Pipe.messages(Array(play.sentToUpstream[c...])).map(\.0) == [.close], "nothing after wstap's close")
        let changes = Pipe.changes(play)
        #expect(changes.first?.result == .closed)
        #expect(changes.contains { $0.result == .dropped && $0.notes.contains { $0.contains("nothing may follow a close") } })
    }

    /// No verdict within --exec-timeout: the message goes on as the rules left it (fail open) or is
    /// dropped (fail closed); the shell is told to forget the request, and a late verdict changes nothing.
    @Test(arguments: [ChangeSettings.HookFailure.open, .closed])
    func aHookThatDoesNotAnswerInTimeFailsAsAsked(failure: ChangeSettings.HookFailure) throws {
        let play = try Self.open(["[edit] from=client => replace /a/ \"A\"; exec hook"], timeout: .seconds(1), failure: failure)
        let c = play.sentToUpstream.count
        play.client(Wire.text("a message", mask: 1))
        #expect(Self.asked(play) == ["A messAge"], "the hook sees what the rules made of it")
        play.advance(milliseconds: 999)
        #expect(play.sentToUpstream.count == c)
        play.advance(milliseconds: 1)
        #expect(try Pipe.texts(Array(play.sentToUpstream[c...])) == (failure == .open ? ["A messAge"] : []))
        #expect(play.forgottenHooks == [play.hookRequests[0].ticket])
        let change = try #require(Pipe.changes(play).first)
        #expect(change.result == (failure == .open ? .edited : .dropped))
        #expect(change.notes.contains { $0.contains("no verdict within --exec-timeout 1 s") && $0.contains("--exec-fail \(failure.rawValue)") })
        let sent = play.sentToUpstream.count
        play.answer(0, .verdict(HookVerdict(.replace(Array("late".utf8)))))
        #expect(play.sentToUpstream.count == sent && Pipe.changes(play).count == 1)
    }

    /// The shell says the hook cannot answer (it died): the failure setting applies at once.
    @Test func aHookThatCannotAnswerFailsAtOnce() throws {
        let play = try Self.open(["from=server => exec hook"], failure: .closed)
        let s = play.sentToClient.count
        play.upstream(Wire.text("one") + Wire.text("two"))
        play.answer(0, .failed("the hook ended before it answered"))
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == [], "the second still waits for its own verdict")
        play.answer(1, .verdict(HookVerdict(.forward)))
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == ["two"])
        #expect(Pipe.changes(play).first?.notes.first { $0.contains("the hook ended before it answered; dropped (--exec-fail closed)") } != nil)
    }

    /// What waits for a hook goes before the sender's FIN; what still waits when the connection goes
    /// is recorded as never sent.
    @Test func whatWaitsForAHookIsReleasedAtTheEndOrRecordedAsNotSent() throws {
        let play = try Self.open(["from=client => exec hook"])
        let c = play.sentToUpstream.count
        play.client(Wire.text("held", mask: 9))
        play.handle(.inputClosed(.client))
        #expect(try Pipe.texts(Array(play.sentToUpstream[c...])) == ["held"])
        #expect(Pipe.changes(play).first?.notes.first { $0.contains("no verdict yet (released early: its sender closed the connection)") } != nil)

        let gone = try Self.open(["[wait] from=client => exec hook"])
        gone.client(Wire.text("held", mask: 9))
        gone.handle(.reset(.upstream))
        let change = try #require(Pipe.changes(gone).first)
        #expect(change.result == .dropped && change.rules == ["wait"] && change.notes.contains { $0.contains("while hook 'hook' decided") })
    }

    /// A message the rules drop is not handed to the hook: there is nothing left to decide.
    @Test func aMessageTheRulesDropIsNotAsked() throws {
        let play = try Self.open(["from=client => exec hook", "text=gone => drop"])
        play.client(Wire.text("gone", mask: 1))
        #expect(play.hookRequests.isEmpty && Pipe.changes(play).first?.result == .dropped)
    }
}
