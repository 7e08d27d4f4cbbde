import WSTapControl
import WSTapDissect
import WSTapTestSupport
import WSTapWire

/// The control API's routing: request targets and headers come from whatever reaches the port
/// (a browser page, a script, anything on loopback).
enum ControlTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "control-request", input: "a request target, then header lines `name: value`, separated by newlines; the first byte picks the method",
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

    private static let api = ControlAPI(store: store, access: ControlAccess(token: "t", listenHost: "127.0.0.1", port: 1))

    /// Every request gets an answer with a status from 200 to 599; refused ones never reach a route
    /// (their body is the error, never records); a stream's cursor reads without trapping.
    static func request(_ data: [UInt8]) {
        guard let first = data.first else { return }
        let lines = data.dropFirst().split(separator: 0x0A, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let methods = ["GET", "POST", "PUT", "DELETE", "HEAD"]
        var headers: [String: String] = ["host": "127.0.0.1:1", "authorization": "Bearer t"]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = String(line[line.index(after: colon)...].drop { $0 == " " })
        }
        let request = ControlRequest(method: methods[Int(first) % methods.count], target: lines.first ?? "/", headers: headers)
        let response = api.respond(to: request)
        FuzzCheck.expect((200...599).contains(response.status), "status \(response.status)")
        switch response {
        case .complete(let status, _, let body, _):
            if status == 401 || status == 403 {
                FuzzCheck.expect(!body.starts(with: Array(#"{"records""#.utf8)), "a refused request got records")
            }
        case .eventStream(var cursor):
            _ = cursor.next(from: store)
        }
    }
}
