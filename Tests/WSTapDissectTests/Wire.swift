import WSTapDissect
import WSTapFormats
import WSTapWire

/// Byte builders for dissector tests: frames and handshakes as they appear on the wire.
enum Wire {
    static let key = "dGhlIHNhbXBsZSBub25jZQ=="

    static func frame(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false,
                      mask: UInt32? = nil, encoding: LengthEncoding? = nil, declaredLength: UInt64? = nil) -> [UInt8] {
        let header = FrameHeader(fin: fin, rsv1: rsv1, rsv2: rsv2, opcode: opcode, maskKey: mask,
                                 payloadLength: declaredLength ?? UInt64(payload.count), lengthEncoding: encoding)
        var body = payload
        if let mask { Masking.apply(key: mask, offset: 0, to: &body) }
        return header.encoded() + body
    }

    static func text(_ s: String, mask: UInt32? = nil, fin: Bool = true) -> [UInt8] { frame(.text, Array(s.utf8), fin: fin, mask: mask) }

    static func request(extensions: String? = nil, protocols: String? = nil, key: String = key, path: String = "/chat") -> [UInt8] {
        var text = "GET \(path) HTTP/1.1\r\nHost: example.test:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
        if let extensions { text += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
        if let protocols { text += "Sec-WebSocket-Protocol: \(protocols)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    static func response(extensions: String? = nil, protocol proto: String? = nil, accept: String? = HandshakeAccept.expected(forKey: key)) -> [UInt8] {
        var text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        if let accept { text += "Sec-WebSocket-Accept: \(accept)\r\n" }
        if let extensions { text += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
        if let proto { text += "Sec-WebSocket-Protocol: \(proto)\r\n" }
        return Array((text + "\r\n").utf8)
    }
}

typealias Step = (Direction, [UInt8])
let c2s = Direction.clientToServer
let s2c = Direction.serverToClient

/// Runs a conversation through a fresh dissector. `split` cuts every step's bytes into pieces with the
/// given function. Returns the JSON lines, the canonical form tests compare.
func dissect(_ steps: [Step], configuration: StreamDissector.Configuration = .init(), split: ([UInt8]) -> [[UInt8]] = { [$0] }) -> [String] {
    let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "127.0.0.1:5000", server: "127.0.0.1:9000"), configuration: configuration)
    var records: [TapRecord] = []
    let ts = Timestamp(nanoseconds: 1_700_000_000_000_000_000)
    for (direction, bytes) in steps {
        for piece in split(bytes) { dissector.feed(piece, from: direction, at: ts, into: &records) }
    }
    dissector.finish(at: ts, into: &records)
    return records.map(JSONLinesEncoder.line)
}

func records(_ lines: [String], type: String) -> [String] { lines.filter { $0.contains("\"type\":\"\(type)\"") } }
func diagnosticCodes(_ lines: [String]) -> [String] {
    records(lines, type: "diagnostic").compactMap { line in
        guard let r = line.range(of: "\"code\":\"") else { return nil }
        return String(line[r.upperBound...].prefix { $0 != "\"" })
    }
}
