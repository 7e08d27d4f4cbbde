import NIOCore
import WSTapDissect
import WSTapFormats
import WSTapRelay
import WSTapRules
import WSTapTestSupport
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// The live relay's sans-IO core, driven as the NIO shell drives it, by a hostile client and server.
enum RelayTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "relay-session", input: "1 byte (mode), then events: [kind][u16 length][bytes]", maxLength: 2048, run: relaySession),
        FuzzTarget(name: "changing-relay", input: "1 byte (options), then events after the 101: [kind][u16 length][bytes]", maxLength: 4096,
                   run: changingRelay),
    ]

    /// Rules that act on almost everything a fuzzer makes, and a set that matches nothing.
    static let actingRules = [
        "[edit] op=text => replace /a+/ \"<$0>\"", "[json] json.id? => set json.id 0; delete json.x", "[drop] len=3 => drop",
        "[two] op=binary => duplicate", "[split] len>20 => fragment size=7", "[wait] text:w => delay 30ms", "[hold] text:h => hold",
        "[plain] text:u => uncompressed", "[pings] op=ping => replace-bytes hex:70 hex:7171", "[tag] * => mark seen",
        "[poke] text:p => inject to=client text \"pp\"; inject to=server hex:0070", "[bye] text:q => close 4000 \"q\" to=server", "[long] text:z => corrupt length",
        "[ask] text:k => exec hook",
    ]
    /// A rule no message can match (no message is from both sides), so the byte-count invariant holds
    /// whatever the input: libFuzzer reads the needle of a `text:` search out of memcmp and writes it
    /// into messages, which made a `text:` rule match (a finding of the harness, not of the relay).
    static let idleRules = ["[never] from=client from=server text:\"no such text anywhere\" => drop"]

    /// A control API command from fuzzer bytes: every kind, holds picked from those listed.
    static func steerCommand(_ bytes: [UInt8], holds play: RelayPlaybook) -> SteerCommand {
        var reader = FuzzReader(bytes)
        let sides: [Side] = [.client, .server, .both]
        switch reader.choice(5) {
        case 0:
            let opcode: Opcode = reader.choice(2) == 0 ? .text : .binary
            let fragments = 1 + reader.choice(4), compressed = reader.choice(2) == 1, side = sides[reader.choice(3)]
            return .send(OwnSend(to: side, opcode: opcode, payload: reader.bytes(reader.choice(64)), fragments: fragments, compressed: compressed))
        case 1:
            return .close(code: UInt16(990 + Int(reader.u16()) % 4100), reason: "r", to: sides[reader.choice(3)])
        case 2:
            return .abort
        case 3:
            return .listHolds
        default:
            var id = UInt64(reader.choice(8))
            if case .holds(let holds) = play.steer(.listHolds), !holds.isEmpty { id = holds[reader.choice(holds.count)].id }
            let decision: HoldDecision = switch reader.choice(3) {
            case 0: .forward
            case 1: .drop
            default: .replace(reader.bytes(reader.choice(64)))
            }
            return .release(hold: id, decision)
        }
    }

    /// A verdict for the hook, from fuzzer bytes: every kind, with injections either way now and then.
    static func verdict(_ bytes: [UInt8]) -> HookAnswer {
        var reader = FuzzReader(bytes)
        let kind = reader.choice(7)
        let sides: [Side] = [.client, .server, .both]
        let decision: HookVerdict.Decision
        switch kind {
        case 0: decision = .forward
        case 1: decision = .drop
        case 2: decision = .replace(reader.bytes(reader.choice(64)))
        case 3: decision = .delay(milliseconds: reader.choice(200))
        case 4: decision = .close(code: UInt16(1000 + reader.choice(4000)), reason: "k", to: sides[reader.choice(3)])
        case 5: return .failed("the hook ended before it answered")
        default: decision = .forward
        }
        var inject: [(to: Side, payload: RuleAction.Injected)] = []
        for _ in 0..<reader.choice(3) { inject.append((reader.choice(2) == 0 ? .client : .server, .bytes(reader.bytes(reader.choice(16))))) }
        return .verdict(HookVerdict(decision, inject: inject))
    }

    /// A relay with rules, from the 101 on, fed hostile frames both ways, time passing, FINs and the
    /// exec hook's verdicts (in any order, late, or never).
    /// Checks: no crash; records and wake-ups as the shell expects; with rules that match nothing,
    /// every byte either side sent reaches the other once both sides have closed (holds included).
    static let trace = getenv("WSTAP_FUZZ_TRACE") != nil

    static func changingRelay(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let options = reader.byte()
        let idle = options & 1 != 0
        let extensions: String? = switch (options >> 1) % 4 {
        case 0: nil
        case 1: "permessage-deflate"
        case 2: "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        default: "permessage-deflate; client_max_window_bits=9"
        }
        let rules = (try? (idle ? idleRules : actingRules).map { try RuleParser.parse($0) }) ?? []
        FuzzCheck.expect(rules.count == (idle ? idleRules : actingRules).count, "the fuzz target's rules do not parse")
        let random = SeededRandom(seed: UInt64(options))
        var settings = ChangeSettings(rules: RuleBook(RuleEngine(rules: rules)), random: { random.next() })
        settings.compression = options & 0x10 != 0 ? .reencode : .keep
        settings.holdLimit = options & 0x20 != 0 ? 256 : 1 << 20
        settings.holdTimeout = .milliseconds(100)
        settings.hookTimeout = .milliseconds(150)
        settings.hookFailure = options & 0x40 != 0 ? .closed : .open
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = 64
        let play = RelayPlaybook(configuration: configuration, changes: settings)
        play.openWebSocket(request: Wire.request(extensions: extensions), response: Wire.response(extensions: extensions))
        let base = (up: play.sentToUpstream.count, down: play.sentToClient.count)
        var received = (client: 0, server: 0)
        var open = (client: true, server: true)
        var steps = 0
        while !reader.isAtEnd && steps < 256 {
            steps += 1
            // Steering changes bytes on purpose: only with the acting rules, whose check is inflation.
            let kind = reader.byte() % (idle ? 7 : 8)
            let bytes = reader.bytes(reader.u16() % 4096)
            switch kind {
            case 7:
                let command = steerCommand(bytes, holds: play)
                let answer = play.steer(command)
                if trace { print("steer \(command): \(answer)") }
            case 6:
                // Any request asked so far, answered or not (an answer twice, or late, must change nothing).
                guard !play.hookRequests.isEmpty else { continue }
                let index = Int(bytes.first ?? 0) % play.hookRequests.count, answer = verdict(Array(bytes.dropFirst()))
                if trace { print("hook answers request \(index): \(answer)") }
                play.answer(index, answer)
            case 0, 1:
                guard open.client else { continue }
                received.client += bytes.count
                play.client(bytes)
            case 2, 3:
                guard open.server else { continue }
                received.server += bytes.count
                play.upstream(bytes)
            case 4:
                play.advance(milliseconds: Int64(bytes.first ?? 10))
            default:
                let client = (bytes.first ?? 0) & 1 == 0
                guard client ? open.client : open.server else { continue }
                if client { open.client = false } else { open.server = false }
                play.handle(.inputClosed(client ? .client : .upstream))
            }
        }
        FuzzCheck.expect(!idle || play.hookRequests.isEmpty, "a hook asked by rules that match nothing")
        if open.client { play.handle(.inputClosed(.client)) }
        if open.server { play.handle(.inputClosed(.upstream)) }
        if trace {
            // `wstap-fuzz run` with WSTAP_FUZZ_TRACE set: what the relay recorded, and what each peer got.
            let console = ConsoleSink(output: .standardError, options: .init(verbose: true))
            console.write(play.records)
            print("--- what the peers received, dissected")
            console.write(dissected(up: play.sentToUpstream, down: play.sentToClient, requestLength: base.up, responseLength: base.down))
        }
        for record in play.records {
            if case .change(let change) = record.body {
                FuzzCheck.expect(!change.rules.isEmpty, "a change record that names no rule")
                FuzzCheck.expect([.dropped, .aborted, .closed].contains(change.result) ? change.sent.isEmpty : !change.sent.isEmpty, "a change record whose copies do not fit its result")
            }
        }
        // wstap never makes a compressed message the receiver cannot inflate: dissect what each peer
        // got, and every inflate failure there must already be one of the sender's (or come after
        // frames the pipe gave up on, which then pass as they came).
        let seen = dissected(up: play.sentToUpstream, down: play.sentToClient, requestLength: base.up, responseLength: base.down)
        for direction in [Direction.clientToServer, .serverToClient] {
            let excused: Set<DiagnosticCode> = [.inflateFailed, .inflateLimitExceeded, .changesStopped]
            let senderFailed = play.records.contains { if case .diagnostic(let d) = $0.body { d.direction == direction && excused.contains(d.code) } else { false } }
            let receiverFailed = seen.contains { if case .diagnostic(let d) = $0.body { d.direction == direction && d.code == .inflateFailed } else { false } }
            FuzzCheck.expect(senderFailed || !receiverFailed, "the \(direction.receiver) got a compressed message that does not inflate, made by wstap")
        }
        if idle && settings.compression == .keep {
            FuzzCheck.expect(play.sentToUpstream.count - base.up == received.client, "client bytes lost or added with rules that match nothing")
            FuzzCheck.expect(play.sentToClient.count - base.down == received.server, "server bytes lost or added with rules that match nothing")
        }
    }

    /// Records of a dissector that reads what each peer received: the request and the 101 first, then
    /// each direction's WebSocket bytes.
    private static func dissected(up: [UInt8], down: [UInt8], requestLength: Int, responseLength: Int) -> [TapRecord] {
        let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"))
        var records: [TapRecord] = []
        let time = Timestamp(nanoseconds: 1)
        dissector.feed(Array(up[..<requestLength]), from: .clientToServer, at: time, into: &records)
        dissector.feed(Array(down[..<responseLength]), from: .serverToClient, at: time, into: &records)
        dissector.feed(Array(up[requestLength...]), from: .clientToServer, at: time, into: &records)
        dissector.feed(Array(down[responseLength...]), from: .serverToClient, at: time, into: &records)
        return records
    }

    /// What the shell knows of each side, so only events the shell could report are fed.
    private struct Shell {
        var connectRequested = false
        var upstreamConnected = false
        var clientOpen = true
        var upstreamOpen = true
        var clientInputOpen = true
        var upstreamInputOpen = true
        var closing: Set<RelaySession.Side> = []
        var timers: Set<RelaySession.Timer> = []
        var ended = false
        var tlsStarted = false
    }

    static func relaySession(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let modeChoice = reader.byte()
        let upstream = [UpstreamURL(host: "127.0.0.1", port: 9000), UpstreamURL(scheme: "wss", host: "up.test", port: 443, path: "/s?x=1")]
        let mode: RelaySession.Mode = modeChoice % 3 == 2 ? .forward : .reverse(upstream[Int(modeChoice % 3)])
        let tls = TLSSettings(interceptConnect: modeChoice & 4 != 0, passthrough: ["*.pass.test"], clientTLS: modeChoice & 8 != 0)
        var limits = RelaySession.Limits()
        limits.maxHeadBytes = 512 + Int(modeChoice >> 4) * 64
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = 64
        let session = RelaySession(connection: 1, mode: mode, tls: tls, limits: limits, clientAddress: "c", proxyAddress: "p",
                                   configuration: configuration, clock: { Timestamp(nanoseconds: 1) })
        var shell = Shell()
        func perform(_ actions: [RelaySession.Action]) {
            for action in actions {
                switch action {
                case .emit(let records):
                    for record in records {
                        FuzzCheck.expect(!shell.ended, "a record after the end record")
                        if case .end = record.body { shell.ended = true }
                    }
                case .send(let side, _):
                    FuzzCheck.expect(!shell.closing.contains(side), "bytes sent to the \(side) after closing it")
                    if side == .upstream { FuzzCheck.expect(shell.upstreamConnected, "bytes sent upstream before it was connected") }
                case .shutdownOutput:
                    break
                case .close(let side), .reset(let side):
                    shell.closing.insert(side)
                case .connect:
                    FuzzCheck.expect(!shell.connectRequested, "a second connect without a switch")
                    shell.connectRequested = true
                case .switchUpstream:
                    shell.connectRequested = true
                    shell.upstreamConnected = false
                case .startClientTLS:
                    shell.tlsStarted = true
                case .startTimer(let timer, _):
                    FuzzCheck.expect(shell.timers.insert(timer).inserted, "timer \(timer) started twice")
                case .cancelTimer(let timer):
                    FuzzCheck.expect(shell.timers.remove(timer) != nil, "timer \(timer) cancelled but not running")
                case .askHook, .forgetHook:
                    FuzzCheck.expect(false, "a hook asked with no rules loaded")
                }
            }
        }
        perform(session.handle(.clientConnected))
        var steps = 0
        while !reader.isAtEnd && steps < 256 {
            steps += 1
            let kind = reader.byte() % 12
            let bytes = reader.bytes(reader.u16() % 4096)
            let event: RelaySession.Event
            switch kind {
            case 0, 1, 2:
                guard shell.clientInputOpen && !shell.closing.contains(.client) else { continue }
                event = .clientData(ByteBuffer(bytes: bytes))
            case 3, 4:
                guard shell.upstreamConnected && shell.upstreamInputOpen && !shell.closing.contains(.upstream) else { continue }
                event = .upstreamData(ByteBuffer(bytes: bytes))
            case 5:
                guard shell.connectRequested && !shell.upstreamConnected && !shell.closing.contains(.upstream) else { continue }
                shell.upstreamConnected = true
                event = .upstreamConnected(serverAddress: "127.0.0.1:9000")
            case 6:
                guard shell.connectRequested && !shell.upstreamConnected else { continue }
                shell.connectRequested = false
                event = .upstreamConnectFailed(reason: "connection refused")
            case 7:
                guard shell.clientInputOpen else { continue }
                shell.clientInputOpen = false
                event = .inputClosed(.client)
            case 8:
                guard shell.upstreamConnected && shell.upstreamInputOpen else { continue }
                shell.upstreamInputOpen = false
                event = .inputClosed(.upstream)
            case 9:
                let side: RelaySession.Side = bytes.first.map { $0 & 1 == 0 } ?? true ? .client : .upstream
                guard side == .client || shell.upstreamConnected else { continue }
                event = bytes.count % 2 == 0 ? .reset(side) : .closed(side)
            case 10:
                guard let timer = shell.timers.first else { continue }
                shell.timers.remove(timer)
                event = .timerFired(timer)
            default:
                if shell.tlsStarted {
                    shell.tlsStarted = false
                    event = .clientTLSEstablished
                } else if tls.clientTLS {
                    event = .clientTLSHello(serverName: bytes.isEmpty ? nil : String(decoding: bytes.prefix(40), as: UTF8.self))
                } else {
                    continue
                }
            }
            perform(session.handle(event))
            _ = session.wantsClientData
        }
        // The shell reports both channels gone at the end; the connection must then have ended.
        perform(session.handle(.closed(.client)))
        perform(session.handle(.closed(.upstream)))
        FuzzCheck.expect(shell.ended, "no end record after both channels closed")
        FuzzCheck.expect(shell.timers.isEmpty, "timers left running after the end: \(shell.timers)")
    }
}
