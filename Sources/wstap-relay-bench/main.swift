// wstap-relay-bench: what the sans-IO relay costs per message, without sockets, threads or a disk.
//
//     swift build -c release --product wstap-relay-bench && .build/release/wstap-relay-bench [messages [only]]
//
// `only` runs just the configurations whose name contains it (for a profiler).
//
// One reverse-mode session past its handshake is fed 64-byte text messages, a masked one from the
// client and an unmasked one from the server in turn, one frame per read, as wsbench's load sends
// them; every record is JSON-encoded into a reused buffer, as the proxy does before it writes. The
// configurations are those of scripts/bench/run.py --rules: no rules, ten rules that match nothing
// (rules-idle) and one replace on every text message (rules-edit). Rounds alternate between them and
// the fastest round of each is printed (the one least disturbed by whatever else runs), in nanoseconds
// per message. The socket benchmarks share two cores with their
// load generator and are noisy to a microsecond; this measures the relay's own part to a few ns.
import NIOCore
import WSTapDissect
import WSTapFormats
import WSTapRelay
import WSTapRules
import WSTapTestSupport
import WSTapWire

let messages = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 200_000
let rounds = 9

let idleRules = (0..<5).map { "[idle\($0)] from=client text:\"no such text \($0)\" => drop" }
    + (0..<3).map { "[json\($0)] json.type=\"t\($0)\" => set json.n \($0)" }
    + ["[pings] op=ping => drop", "[huge] len>1M => mark big"]
let only = CommandLine.arguments.dropFirst(2).first
let configurations: [(name: String, rules: [String]?)] = [
    ("no rules", nil),
    ("rules-idle", idleRules),
    ("rules-edit", ["[edit] op=text => replace /abc/ \"xyz\""]),
].filter { only.map($0.name.contains) ?? true }

/// A session past its 101, and the frames to feed it.
func makeSession(rules: [String]?) throws -> RelaySession {
    let changes = try rules.map { sources in
        ChangeSettings(rules: RuleBook(RuleEngine(rules: try sources.map { try RuleParser.parse($0) })), random: { 4 })
    }
    let session = RelaySession(connection: 1, mode: .reverse(UpstreamURL(host: "127.0.0.1", port: 9000)), changes: changes,
                               clientAddress: "127.0.0.1:5000", proxyAddress: "127.0.0.1:8080", configuration: StreamDissector.Configuration(), clock: { Timestamp(nanoseconds: 1_700_000_000_000_000_000) })
    _ = session.handle(.clientData(ByteBuffer(bytes: Wire.request(host: "127.0.0.1:8080"))))
    _ = session.handle(.upstreamConnected(serverAddress: "127.0.0.1:9000"))
    _ = session.handle(.upstreamData(ByteBuffer(bytes: Wire.response())))
    return session
}

let payload = String(repeating: "abcdefghijklmnopqrstuvwxyz", count: 3).prefix(64)
let fromClient = ByteBuffer(bytes: Wire.text(String(payload), mask: 0x1234_5678))
let fromServer = ByteBuffer(bytes: Wire.text(String(payload)))

/// Nanoseconds per message for one round of one configuration.
func round(_ session: RelaySession, writer: inout JSONWriter) -> Double {
    let clock = ContinuousClock()
    var sent = 0
    let start = clock.now
    for _ in 0..<(messages / 2) {
        for event in [RelaySession.Event.clientData(fromClient), .upstreamData(fromServer)] {
            for action in session.handle(event) {
                switch action {
                case .emit(let records):
                    for record in records { JSONLinesEncoder.encode(record, into: &writer) }
                    writer.removeAll()
                case .send(_, let buffer): sent += buffer.readableBytes
                default: break
                }
            }
        }
    }
    let elapsed = clock.now - start
    precondition(sent == messages / 2 * (fromClient.readableBytes + fromServer.readableBytes), "the relay did not send every byte on")
    let (seconds, attoseconds) = elapsed.components
    return (Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(messages / 2 * 2)
}

do {
    let sessions = try configurations.map { try makeSession(rules: $0.rules) }
    var results = Array(repeating: [Double](), count: configurations.count)
    var writer = JSONWriter(capacity: 4096)
    for _ in 0..<rounds {
        for (index, session) in sessions.enumerated() { results[index].append(round(session, writer: &writer)) }
    }
    let fastest = results.map { $0.min()! }
    print("\(messages) messages of 64 B per round, \(rounds) rounds, fastest round, ns per message (relay and JSON encoding)")
    for (index, configuration) in configurations.enumerated() {
        let over = index == 0 || configurations[0].rules != nil ? "" : "  (+\(Int((fastest[index] - fastest[0]).rounded())) over no rules)"
        let name = configuration.name + String(repeating: " ", count: max(1, 12 - configuration.name.count))
        print("\(name)\(Int(fastest[index].rounded())) ns\(over)")
    }
} catch {
    fatalError("wstap-relay-bench: \(error)")
}
