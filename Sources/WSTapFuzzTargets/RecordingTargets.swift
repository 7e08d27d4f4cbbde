import WSTapDissect
import WSTapFormats

/// Recordings from other tools: HAR logs read for `read`, replay and mock.
enum RecordingTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "har-reader", input: "a HAR log", maxLength: 8192, run: harReader),
    ]

    /// Reads or is refused with a reason, after the entries before the damage; every record it makes
    /// encodes to a JSON Lines line that reads back to the same line (heads, URLs and payloads from
    /// untrusted JSON stay within what the schema can say).
    static func harReader(_ data: [UInt8]) {
        var records: [TapRecord] = []
        do {
            try HARReader.records(data) { records.append($0) }
        } catch {
            FuzzCheck.expect(!"\(error)".isEmpty, "a refusal without a reason")
        }
        let lines = records.map(JSONLinesEncoder.line)
        guard let again = try? JSONLinesReader.records(lines.joined()) else { FuzzCheck.fail("records from a HAR do not read back from JSON Lines") }
        FuzzCheck.expect(again.map(JSONLinesEncoder.line) == lines, "records from a HAR changed on a JSON Lines round trip")
    }

    /// A small log in the shape Chrome, mitmproxy and HTTP Toolkit share.
    static let seed = #"""
        {"log":{"version":"1.2","creator":{"name":"WebInspector","version":"537.36"},"entries":[
        {"startedDateTime":"2026-12-03T17:59:59.900Z","time":4.25,"request":{"method":"GET","url":"http://127.0.0.1:8765/","httpVersion":"HTTP/1.1","headers":[{"name":"Host","value":"127.0.0.1:8765"}],"bodySize":0},"response":{"status":200,"statusText":"OK","httpVersion":"HTTP/1.1","headers":[{"name":"Content-Length","value":"3"}],"bodySize":3}},
        {"_resourceType":"websocket","startedDateTime":"2026-12-03T19:00:00.123456+01:00","serverIPAddress":"::1","request":{"method":"GET","url":"wss://[::1]:8443/chat?room=1#x","httpVersion":"h2","headers":[{"name":":authority","value":"[::1]:8443"},{"name":"Sec-WebSocket-Key","value":"dGhlIHNhbXBsZSBub25jZQ=="}]},
         "response":{"status":101,"statusText":"Switching Protocols","httpVersion":"HTTP/1.1","headers":[{"name":"Sec-WebSocket-Protocol","value":"chat"},{"name":"Sec-WebSocket-Extensions","value":"permessage-deflate"}]},
         "_webSocketMessages":[{"type":"send","time":1796320800.25,"opcode":1,"data":"{\"op\":\"hi\",\"s\":\"caf\u00e9\\n\"}"},{"type":"receive","time":1796320800.261234,"opcode":2,"data":"3q2+7w=="},
         {"type":"receive","time":1.7,"opcode":8,"data":"bye","code":1000},{"type":"send","time":1.8,"opcode":9,"data":"ping"},{"type":"send","time":2,"opcode":8,"data":"A+g="}]}]}}
        """#
}
