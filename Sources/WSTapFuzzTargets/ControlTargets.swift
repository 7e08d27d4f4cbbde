import WSTapControl
import WSTapRelay
import WSTapRules
import WSTapDissect
import WSTapTestSupport
import WSTapWire

/// The control API's routing: request targets and headers come from whatever reaches the port
/// (a browser page, a script, anything on loopback).
enum ControlTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "control-request", input: "a request target, then header lines `name: value`, separated by newlines, then a blank line and a body; the first byte picks the method",
                   maxLength: 2048, run: request),
    ]

    /// One store shared by every input: a conversation on two connections.
    private static let store: RecordStore = {
        let store = RecordStore(limitBytes: 1 << 20)
        for id in 1...2 as ClosedRange<UInt64> {
            let dissector = StreamDissector(connection: id, info: ConnectionInfo(client: "127.0.0.1:1", server: "127.0.0.1:2"), configuration: .init())
            var records: [TapRecord] = []
            for (direction, bytes) in [(c2s, Wire.request()), (s2c, Wire.response()), (c2s, Wire.text(#"{"a":1}"#, mask: 3)), (s2c, Wire.text("b"))] {
                dissector.feed(bytes, from: direction, at: fixtureTime, into: &records)
            }
            store.append(records)
        }
        return store
    }()

    /// Connection 1 is a live relay core with a hold rule, fresh for every input, so the steering
    /// routes reach a real connection.
    private final class OneConnection: ConnectionSteering, @unchecked Sendable {
        // @unchecked: libFuzzer runs one input at a time, on one thread.
        let play: RelayPlaybook
        init() {
            let rules = (try? [RuleParser.parse("[gate] text=held => hold")]) ?? []
            let random = SeededRandom(seed: 1)
            play = RelayPlaybook(changes: ChangeSettings(rules: RuleBook(RuleEngine(rules: rules)), random: { random.next() }))
            play.openWebSocket(request: Wire.request(extensions: "permessage-deflate"), response: Wire.response(extensions: "permessage-deflate"))
            play.upstream(Wire.text("held"))
        }
        func steer(_ id: UInt64, _ command: SteerCommand, reply: @escaping @Sendable (SteerAnswer?) -> Void) { reply(id == 1 ? play.steer(command) : nil) }
        var liveConnections: [UInt64] { [1] }
    }

    private final class Answered: @unchecked Sendable {
        var response: ControlResponse?
    }

    /// Every request gets an answer with a status from 200 to 599; refused ones never reach a route
    /// (their body is the error, never records); a stream's cursor reads without trapping.
    static func request(_ data: [UInt8]) {
        guard let first = data.first else { return }
        // Head lines, then a blank line and the body.
        var head = Array(data.dropFirst()), body: [UInt8] = []
        if let blank = (0..<max(0, head.count - 1)).first(where: { head[$0] == 0x0A && head[$0 + 1] == 0x0A }) {
            body = Array(head[(blank + 2)...])
            head = Array(head[..<blank])
        }
        let lines = head.split(separator: 0x0A, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
        var headers: [String: String] = ["host": "127.0.0.1:1", "authorization": "Bearer t"]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = String(line[line.index(after: colon)...].drop { $0 == " " })
        }
        let request = ControlRequest(method: methods[Int(first) % methods.count], target: lines.first ?? "/", headers: headers, body: body)
        let api = ControlAPI(store: store, access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1), steering: OneConnection())
        var response = api.respond(to: request)
        if case .later(let run) = response {
            let answered = Answered()
            run { answered.response = $0 }
            guard let answer = answered.response else { return FuzzCheck.expect(false, "a steering route never answered") }
            if case .later = answer { FuzzCheck.expect(false, "a later answer answered with another wait") }
            response = answer
        }
        FuzzCheck.expect((200...599).contains(response.status), "status \(response.status)")
        switch response {
        case .complete(let status, _, let body, _):
            if status == 401 || status == 403 {
                FuzzCheck.expect(!body.starts(with: Array(#"{"records""#.utf8)), "a refused request got records")
            }
        case .eventStream(var cursor):
            _ = cursor.next(from: store)
        case .later:
            break
        }
    }
}
