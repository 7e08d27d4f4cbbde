import NIOCore
import Testing
import WSTapDissect
import WSTapRelay
import WSTapRules
import WSTapTestSupport
import WSTapWire

/// What the control API asks of a live connection (send, close, abort, holds), carried out by the
/// sans-IO relay and judged as the peers would judge the bytes: parsed, unmasked, inflated.
@Suite struct SteeringTests {
    typealias Pipe = ChangingPipeTests

    static func hold(_ play: RelayPlaybook) throws -> HeldMessage {
        guard case .holds(let holds) = play.steer(.listHolds) else { throw Failure("no hold list") }
        return try #require(holds.first)
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func done(_ answer: SteerAnswer) -> Bool { if case .done = answer { true } else { false } }
    static func refused(_ answer: SteerAnswer) -> String? { if case .refused(let why) = answer { why } else { nil } }

    // MARK: - Holds

    /// A held server message is listed, edited from the API and forwarded; the ping behind it was
    /// never held, and the record says what was received, what was sent and who changed it.
    @Test func aHeldMessageIsListedEditedAndForwardedWhilePingsPass() throws {
        let play = try Pipe.open(["[stop] from=server text=held => hold"])
        let s = play.sentToClient.count
        play.upstream(Wire.text("held") + Wire.frame(.ping, Array("p".utf8)))
        #expect(try Pipe.messages(Array(play.sentToClient[s...])).map(\.0) == [.ping])
        let held = try Self.hold(play)
        #expect(held.direction == .serverToClient && held.opcode == .text && held.payload == Array("held".utf8))
        #expect(held.rules == ["stop"] && held.releaseAt != nil && !held.decided)
        #expect(Pipe.codes(play).contains("held"))

        #expect(Self.done(play.steer(.release(hold: held.id, .replace(Array("edited".utf8))))))
        #expect(try Pipe.messages(Array(play.sentToClient[s...])).map(\.1) == ["p", "edited"])
        let change = try #require(Pipe.changes(play).last)
        #expect(change.result == .edited && change.rules == ["stop"] && change.heldNanoseconds != nil)
        #expect(change.notes.contains { $0.contains("edited from the control API") })
        #expect(!Pipe.codes(play).contains("hold-released"))
        // Gone: nothing more to list or release.
        guard case .holds(let left) = play.steer(.listHolds) else { throw Failure("no hold list") }
        #expect(left.isEmpty)
        guard case .notFound = play.steer(.release(hold: held.id, .forward)) else { throw Failure("a released hold was found again") }
    }

    /// On a compressed, context-takeover direction an edit of a held message is compressed by wstap,
    /// and so is the message that queued behind it: both inflate at the client with one window.
    @Test func anEditedHeldCompressedMessageAndTheOneBehindItInflateAtThePeer() throws {
        let play = try Pipe.open(["[stop] from=server text=first => hold"], extensions: "permessage-deflate")
        let deflater = Deflater()
        let s = play.sentToClient.count
        play.upstream(Wire.frame(.text, deflater.compressMessage(Array("first".utf8)), rsv1: true))
        play.upstream(Wire.frame(.text, deflater.compressMessage(Array("first, then second".utf8)), rsv1: true))
        #expect(play.sentToClient.count == s)
        let held = try Self.hold(play)
        #expect(held.compressed && held.payload == Array("first".utf8))
        #expect(Self.done(play.steer(.release(hold: held.id, .replace(Array("changed".utf8))))))
        #expect(try Pipe.texts(Array(play.sentToClient[s...])) == ["changed", "first, then second"])
        #expect(Pipe.codes(play).contains("reencoding"))
    }

    /// Dropped from the API: the messages behind it go on, in order.
    @Test func aHoldDroppedFromTheAPILetsTheNextMessagesGoInOrder() throws {
        let play = try Pipe.open(["[stop] from=client text=held => hold"])
        let c = play.sentToUpstream.count
        play.client(Wire.text("held", mask: 1) + Wire.text("next", mask: 2) + Wire.text("last", mask: 3))
        #expect(play.sentToUpstream.count == c)
        #expect(Self.done(play.steer(.release(hold: try Self.hold(play).id, .drop))))
        #expect(try Pipe.texts(Array(play.sentToUpstream[c...])) == ["next", "last"])
        #expect(Pipe.changes(play).contains { $0.result == .dropped && $0.notes.contains { $0.contains("dropped from the control API") } })
    }

    /// Two holds: deciding the second first keeps it behind the first, which still times out alone.
    @Test func aDecidedHoldWaitsBehindAnEarlierOne() throws {
        let play = RelayPlaybook(changes: try Pipe.settings(["[stop] from=client text~/^h/ => hold"], holdTimeout: .seconds(5)))
        play.openWebSocket()
        let c = play.sentToUpstream.count
        play.client(Wire.text("h1", mask: 1) + Wire.text("h2", mask: 2))
        guard case .holds(let holds) = play.steer(.listHolds) else { throw Failure("no hold list") }
        #expect(holds.map(\.payload) == [Array("h1".utf8), Array("h2".utf8)])
        guard case .done(let said) = play.steer(.release(hold: holds[1].id, .forward)) else { throw Failure("not released") }
        #expect(said.contains("held before it"))
        #expect(play.sentToUpstream.count == c)
        #expect(Self.refused(play.steer(.release(hold: holds[1].id, .drop))) != nil)
        play.advance(milliseconds: 5000)
        #expect(try Pipe.texts(Array(play.sentToUpstream[c...])) == ["h1", "h2"])
        #expect(Pipe.codes(play).filter { $0 == "hold-released" }.count == 1)
    }

    // MARK: - Sending

    /// A compressed message in three frames to the client; the server's next message, compressed
    /// with a window that lacks it, is compressed anew by wstap and still inflates.
    @Test func aCompressedFragmentedSendAndTheServersNextMessageInflateAtTheClient() throws {
        let play = try Pipe.open([], extensions: "permessage-deflate")
        let s = play.sentToClient.count
        #expect(Self.done(play.steer(.send(OwnSend(to: .client, opcode: .text, payload: Array("from wstap, in pieces".utf8),
                                                 fragments: 3, compressed: true)))))
        let deflater = Deflater()
        play.upstream(Wire.frame(.text, deflater.compressMessage(Array("from the server".utf8)), rsv1: true))
        let seen = try Pipe.messages(Array(play.sentToClient[s...]))
        #expect(seen.map(\.1) == ["from wstap, in pieces", "from the server"])
        #expect(seen.first?.frames == 3)
        let injected = try #require(Pipe.changes(play).first)
        #expect(injected.result == .injected && injected.rules == [WebSocketRelay.controlAPI] && injected.sent.first?.compressed == true)
        #expect(Pipe.codes(play).contains("reencoding"))
    }

    /// A send toward a server is masked and never lands between the frames of the client's fragmented
    /// message: that message is gathered whole before it goes on, so wstap's goes before it.
    @Test func aSendToTheServerNeverLandsInsideTheClientsFragmentedMessage() throws {
        let play = try Pipe.open([])
        let c = play.sentToUpstream.count
        play.client(Wire.frame(.text, Array("part one ".utf8), fin: false, mask: 5))
        #expect(Self.done(play.steer(.send(OwnSend(to: .server, opcode: .binary, payload: [1, 2, 3])))))
        play.client(Wire.frame(.continuation, Array("part two".utf8), mask: 6))
        let frames = SeenFrame.parse(Array(play.sentToUpstream[c...])).frames
        #expect(frames.map(\.opcode) == [.binary, .text, .continuation])
        #expect(frames.allSatisfy { $0.masked })
        #expect(frames.first?.payload == [1, 2, 3])
    }

    // MARK: - Closing

    /// Close 4001 to both: each peer gets it; each one's answer is the end of its side and goes no
    /// further (the other peer has its close already).
    @Test func aCloseToBothReachesBothPeersAndTheirAnswersStop() throws {
        let play = try Pipe.open([])
        let s = play.sentToClient.count, c = play.sentToUpstream.count
        #expect(Self.done(play.steer(.close(code: 4001, reason: "bye", to: .both))))
        let toClient = SeenFrame.parse(Array(play.sentToClient[s...])).frames
        let toServer = SeenFrame.parse(Array(play.sentToUpstream[c...])).frames
        #expect(toClient.map(\.opcode) == [.close] && toServer.map(\.opcode) == [.close])
        #expect(toClient.first?.payload == [0x0F, 0xA1] + Array("bye".utf8) && toServer.first?.masked == true)
        play.client(Wire.frame(.close, [0x0F, 0xA1], mask: 7))
        play.upstream(Wire.frame(.close, [0x0F, 0xA1]))
        #expect(SeenFrame.parse(Array(play.sentToClient[s...])).frames.count == 1)
        #expect(SeenFrame.parse(Array(play.sentToUpstream[c...])).frames.count == 1)
    }

    @Test func abortResetsBothConnections() throws {
        let play = try Pipe.open([])
        #expect(Self.done(play.steer(.abort)))
        #expect(play.actions.resets(.client) && play.actions.resets(.upstream))
        let end = play.records.compactMap { if case .end(let e) = $0.body { e } else { nil } }.first
        #expect(end?.reason.contains("control API") == true)
    }

    // MARK: - Refusals

    @Test func whatCannotBeSentIsRefusedAndNothingMoves() throws {
        let play = try Pipe.open([])
        let s = play.sentToClient.count, c = play.sentToUpstream.count
        #expect(Self.refused(play.steer(.send(OwnSend(to: .client, opcode: .text, payload: [0xFF])))) != nil)
        #expect(Self.refused(play.steer(.send(OwnSend(to: .client, opcode: .ping, payload: [])))) != nil)
        #expect(Self.refused(play.steer(.close(code: 1005, reason: "", to: .both)))?.contains("1005") == true)
        #expect(Self.refused(play.steer(.close(code: 1000, reason: String(repeating: "x", count: 124), to: .both))) != nil)
        #expect(play.sentToClient.count == s && play.sentToUpstream.count == c)

        let early = RelayPlaybook(changes: try Pipe.settings([]))
        #expect(Self.refused(early.steer(.listHolds))?.contains("WebSocket") == true)
        let plain = RelayPlaybook()
        plain.openWebSocket()
        #expect(Self.refused(plain.steer(.abort))?.contains("--ui") == true)
        #expect(!plain.actions.resets(.client))
    }
}
