import WSTapDissect
import WSTapFilter
import WSTapWire

/// Reads wstap's JSON Lines (schema v1) back into records: `open`, `message` and `end`, which is what
/// rules, replay and mocks work from. Lines of other types are skipped; a line that is not a record
/// is an error that names it.
public enum JSONLinesReader {
    public struct Failure: Error, CustomStringConvertible {
        public let line: Int
        public let message: String
        public var description: String { "line \(line): \(message)" }
    }

    /// The records of `text`, in order.
    public static func records(_ text: String) throws(Failure) -> [TapRecord] {
        var out: [TapRecord] = []
        for (index, line) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated()
            where !line.isEmpty {
            if let record = try record(Array(line.utf8), line: index + 1) { out.append(record) }
        }
        return out
    }

    static func record(_ bytes: [UInt8], line: Int) throws(Failure) -> TapRecord? {
        guard let json = JSONValue.parse(bytes), case .object = json else { throw Failure(line: line, message: "not a JSON object") }
        guard case .string(let type)? = json[member: "type"], let conn = json.int("conn"), conn >= 0 else {
            throw Failure(line: line, message: "not a wstap record (no type, or no conn number)")
        }
        let time = Timestamp(nanoseconds: json.timestamp ?? 0)
        switch type {
        case "open":
            var open = OpenRecord(client: json.string("client") ?? "", server: json.string("server") ?? "", url: json.string("url") ?? "",
                                  request: nil, response: nil, subprotocol: json.string("subprotocol"), extensions: json.string("extensions"),
                                  clientTLS: nil, upstreamTLS: nil)
            open.discovery = json.string("discovery") ?? "handshake"
            return TapRecord(connection: UInt64(conn), timestamp: time, body: .open(open))
        case "message":
            guard let from = json.string("from"), from == "client" || from == "server", let opcode = json.int("opcode"), (0..<16).contains(opcode) else {
                throw Failure(line: line, message: "a message record needs from and opcode")
            }
            var payload: [UInt8] = []
            if let text = json.string("text") {
                payload = Array(text.utf8)
            } else if let encoded = json.string("base64") {
                guard let decoded = Base64Decoding.decode(encoded) else { throw Failure(line: line, message: "base64 does not decode") }
                payload = decoded
            } else if let code = json.int("code"), (0...0xFFFF).contains(code) {
                payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array((json.string("reason") ?? "").utf8)
            }
            let code = json.int("code").flatMap { (0...0xFFFF).contains($0) ? UInt16($0) : nil }
            let message = MessageRecord(
                direction: from == "client" ? .clientToServer : .serverToClient, opcode: Opcode(rawValue: UInt8(opcode)),
                frames: json.int("frames") ?? 1, wireLength: UInt64(max(0, json.int("wire_length") ?? payload.count)),
                length: UInt64(max(0, json.int("length") ?? payload.count)), compressed: json.bool("compressed") ?? false, payload: payload,
                truncated: json.bool("truncated") ?? false, closeCode: opcode == 8 ? code : nil, closeReason: opcode == 8 ? json.string("reason") : nil,
                inflateFailed: json.bool("inflate_failed") ?? false, incomplete: json.bool("incomplete") ?? false,
                offset: UInt64(max(0, json.int("offset") ?? 0)))
            return TapRecord(connection: UInt64(conn), timestamp: time, body: .message(message))
        case "end":
            let end = EndRecord(reason: json.string("reason") ?? "", closedBy: json.string("closed_by"),
                                clientBytes: UInt64(max(0, json.int("client_bytes") ?? 0)), serverBytes: UInt64(max(0, json.int("server_bytes") ?? 0)))
            return TapRecord(connection: UInt64(conn), timestamp: time, body: .end(end))
        default:
            return nil
        }
    }
}

extension JSONValue {
    func string(_ name: String) -> String? { if case .string(let s)? = self[member: name] { s } else { nil } }
    func bool(_ name: String) -> Bool? { if case .bool(let b)? = self[member: name] { b } else { nil } }
    func int(_ name: String) -> Int? {
        guard case .number(let n, _)? = self[member: name], n.rounded() == n, abs(n) < 9e15 else { return nil }
        return Int(n)
    }
    /// `ts` is seconds with a fraction, as the encoder writes it.
    var timestamp: Int64? {
        guard case .number(_, let text)? = self[member: "ts"] else { return nil }
        let parts = text.split(separator: ".", maxSplits: 1)
        guard let seconds = Int64(parts[0]), seconds.magnitude < 9_000_000_000 else { return nil }
        var fraction: Int64 = 0
        if parts.count == 2 {
            let digits = String(parts[1].prefix(9)).padding(toLength: 9)
            fraction = Int64(digits) ?? 0
        }
        return seconds * 1_000_000_000 + (seconds < 0 ? -fraction : fraction)
    }
}

private extension String {
    func padding(toLength length: Int) -> String { count >= length ? self : self + String(repeating: "0", count: length - count) }
}

/// Standard base64 (RFC 4648 §4) with padding, as the encoder writes it.
enum Base64Decoding {
    static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        var padding = 0
        for byte in text.utf8 {
            let value: UInt8
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"): value = 62
            case UInt8(ascii: "/"): value = 63
            case UInt8(ascii: "="): padding += 1; continue
            default: return nil
            }
            guard padding == 0 else { return nil }
            buffer = buffer << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((buffer >> UInt32(bits)) & 0xFF))
            }
        }
        guard padding <= 2, (text.utf8.count % 4) == 0 else { return nil }
        return out
    }
}
