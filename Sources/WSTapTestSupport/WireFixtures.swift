import WSTapDissect
import WSTapFormats
import WSTapWire

/// Byte builders for tests: frames and handshakes as they appear on the wire.
public enum Wire {
    /// RFC 6455 §1.3's sample key; `HandshakeAccept.expected(forKey:)` of it is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=.
    public static let key = "dGhlIHNhbXBsZSBub25jZQ=="

    public static func frame(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true, rsv1: Bool = false, rsv2: Bool = false,
                             mask: UInt32? = nil, encoding: LengthEncoding? = nil, declaredLength: UInt64? = nil) -> [UInt8] {
        let header = FrameHeader(fin: fin, rsv1: rsv1, rsv2: rsv2, opcode: opcode, maskKey: mask,
                                 payloadLength: declaredLength ?? UInt64(payload.count), lengthEncoding: encoding)
        var body = payload
        if let mask { Masking.apply(key: mask, offset: 0, to: &body) }
        return header.encoded() + body
    }

    public static func text(_ s: String, mask: UInt32? = nil, fin: Bool = true) -> [UInt8] { frame(.text, Array(s.utf8), fin: fin, mask: mask) }

    public static func request(extensions: String? = nil, protocols: String? = nil, key: String = key, path: String = "/chat",
                               host: String = "example.test:9000") -> [UInt8] {
        var text = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
        if let extensions { text += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
        if let protocols { text += "Sec-WebSocket-Protocol: \(protocols)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    public static func response(extensions: String? = nil, protocol proto: String? = nil, accept: String? = HandshakeAccept.expected(forKey: key)) -> [UInt8] {
        var text = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        if let accept { text += "Sec-WebSocket-Accept: \(accept)\r\n" }
        if let extensions { text += "Sec-WebSocket-Extensions: \(extensions)\r\n" }
        if let proto { text += "Sec-WebSocket-Protocol: \(proto)\r\n" }
        return Array((text + "\r\n").utf8)
    }
}

/// The time every record of a fixture run carries, live or offline, so their records compare equal.
public let fixtureTime = Timestamp(nanoseconds: 1_700_000_000_000_000_000)

/// One read of a conversation: who sent it and its bytes.
public typealias Step = (Direction, [UInt8])
public let c2s = Direction.clientToServer
public let s2c = Direction.serverToClient

/// Runs a conversation through a fresh dissector. `split` cuts every step's bytes into pieces (see
/// `Splits`). Returns the JSON lines, the canonical form tests compare.
public func dissect(_ steps: [Step], configuration: StreamDissector.Configuration = .init(), split: ([UInt8]) -> [[UInt8]] = { [$0] }) -> [String] {
    let dissector = StreamDissector(connection: 1, info: ConnectionInfo(client: "127.0.0.1:5000", server: "127.0.0.1:9000"), configuration: configuration)
    var records: [TapRecord] = []
    let ts = fixtureTime
    for (direction, bytes) in steps {
        for piece in split(bytes) { dissector.feed(piece, from: direction, at: ts, into: &records) }
    }
    dissector.finish(at: ts, into: &records)
    return records.map(JSONLinesEncoder.line)
}

public func records(_ lines: [String], type: String) -> [String] { lines.filter { $0.contains("\"type\":\"\(type)\"") } }

public func diagnosticCodes(_ lines: [String]) -> [String] {
    let marker = Array("\"code\":\"".utf8)
    return records(lines, type: "diagnostic").compactMap { line in
        let bytes = Array(line.utf8)
        guard let at = (0...(max(0, bytes.count - marker.count))).first(where: { bytes[$0..<min(bytes.count, $0 + marker.count)].elementsEqual(marker) })
        else { return nil }
        return String(decoding: bytes[(at + marker.count)...].prefix { $0 != UInt8(ascii: "\"") }, as: UTF8.self)
    }
}
