import WSTapDissect
import WSTapFilter
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// Reads HAR 1.2 logs into records: each WebSocket entry (`_resourceType: "websocket"` with
/// `_webSocketMessages`, as Chrome DevTools, mitmproxy and HTTP Toolkit write them, and wstap's own
/// `--har`) becomes an `open`, its `message`s and an `end`; every other entry an `http` record.
///
/// HAR keeps messages, not frames: a message read from HAR is one frame, not compressed, with its
/// length as its wire length and offset 0 (docs/record-schema.md, "Records read from HAR").
///
/// Entries are found by a scan of the document's structure and parsed one at a time, so a big log is
/// never one parsed tree, and a log cut short yields the entries before the cut, then the error.
public enum HARReader {
    public struct Failure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    /// Reads the HAR file at `path`, handing each record to `body` in entry order.
    public static func read(path: String, _ body: (TapRecord) throws -> Void) throws {
        let bytes: [UInt8]
        do { bytes = try FileBytes.read(path) } catch { throw Failure(message: "cannot read: \(error)") }
        try records(bytes, body)
    }

    /// The records of the HAR document in `bytes`.
    public static func records(_ bytes: [UInt8], _ body: (TapRecord) throws -> Void) throws {
        var scanner = StructureScanner(bytes: bytes)
        var number = 0
        try scanner.forEachEntry { range in
            number += 1
            guard let entry = JSONValue.parse(bytes[range]), case .object = entry else {
                throw Failure(message: "entry \(number) is not valid JSON")
            }
            for record in try self.records(entry: entry, number: number) { try body(record) }
        }
    }

    /// One entry's records; its connection id is its place in the log (from 1, as in a live session).
    static func records(entry: JSONValue, number: Int) throws(Failure) -> [TapRecord] {
        let conn = UInt64(number)
        let started = Timestamp(nanoseconds: entry.string("startedDateTime").flatMap(ISO8601Time.nanoseconds) ?? 0)
        guard let requestJSON = entry[member: "request"], case .object = requestJSON else {
            throw Failure(message: "entry \(number) has no request")
        }
        let url = requestJSON.string("url") ?? ""
        let parts = URLParts(url)
        let request = head(requestJSON, request: true, parts: parts)
        let responseJSON = entry[member: "response"]
        let response = responseJSON.map { head($0, request: false, parts: parts) }
        let messagesJSON = entry[member: "_webSocketMessages"]
        let isWebSocket = entry.string("_resourceType") == "websocket" || messagesJSON != nil
        guard isWebSocket else {
            let duration = entry.fixedPoint("time", unit: 1_000_000) ?? 0
            let exchange = HTTPExchangeRecord(
                url: url, request: request, response: response ?? HTTPHead(startLine: .response(version: "HTTP/1.1", status: 0, reason: ""), headers: []),
                wasUpgradeAttempt: request.isWebSocketUpgradeRequest,
                requestBodyBytes: UInt64(max(0, requestJSON.int("bodySize") ?? 0)),
                responseBodyBytes: UInt64(max(0, responseJSON?.int("bodySize") ?? 0)), durationNanoseconds: max(0, duration))
            return [TapRecord(connection: conn, timestamp: Timestamp(nanoseconds: started.nanoseconds + max(0, duration)), body: .http(exchange))]
        }
        let server = entry.string("serverIPAddress").map { address in
            let host = address.contains(":") && !address.hasPrefix("[") ? "[\(address)]" : address
            return "\(host):\(parts.port)"
        } ?? ""
        var open = OpenRecord(client: "", server: server, url: parts.webSocketURL, request: request, response: response,
                              subprotocol: response?.value("sec-websocket-protocol"), extensions: response?.value("sec-websocket-extensions"),
                              clientTLS: nil, upstreamTLS: nil)
        open.discovery = "har"
        var out = [TapRecord(connection: conn, timestamp: started, body: .open(open))]
        var last = started
        var closedBy: String?
        var sentBytes: [Direction: UInt64] = [:]
        if case .array(let messages)? = messagesJSON {
            for (index, item) in messages.enumerated() {
                let message = try self.message(item, entry: number, index: index + 1)
                let time = item.fixedPoint("time", unit: 1_000_000_000).map { Timestamp(nanoseconds: $0) } ?? last
                last = max(last, time)
                if message.opcode == .close && closedBy == nil { closedBy = message.direction.sender }
                sentBytes[message.direction, default: 0] += message.length
                out.append(TapRecord(connection: conn, timestamp: time, body: .message(message)))
            }
        }
        // HAR keeps no connection end: the entry's last message stands for it.
        out.append(TapRecord(connection: conn, timestamp: last, body: .end(EndRecord(
            reason: "end of the HAR entry (HAR keeps no connection end)", closedBy: closedBy,
            clientBytes: sentBytes[.clientToServer] ?? 0, serverBytes: sentBytes[.serverToClient] ?? 0))))
        return out
    }

    /// `{type: send|receive, time, opcode, data}`; binary data is base64, as all three writers do.
    static func message(_ item: JSONValue, entry: Int, index: Int) throws(Failure) -> MessageRecord {
        let place = "entry \(entry) message \(index)"
        let direction: Direction
        switch item.string("type") {
        case "send": direction = .clientToServer
        case "receive": direction = .serverToClient
        default: throw Failure(message: "\(place): type must be send or receive")
        }
        let opcodeValue = item.int("opcode") ?? 1
        guard (0..<16).contains(opcodeValue) else { throw Failure(message: "\(place): opcode \(opcodeValue) is not a WebSocket opcode") }
        let opcode = Opcode(rawValue: UInt8(opcodeValue))
        let data = item.string("data") ?? ""
        var payload: [UInt8]
        var closeCode: UInt16?
        var closeReason: String?
        let inflateFailed = item.bool("_inflateFailed") == true && !opcode.isControl
        switch opcode {
        case .text where inflateFailed:
            guard let decoded = Base64Decoding.decode(data) else { throw Failure(message: "\(place): the data of a message that did not inflate is not base64") }
            payload = decoded
        case .text:
            payload = Array(data.utf8)
        default:
            if opcode == .close, let code = item.int("code"), (0...0xFFFF).contains(code) {
                // Some tools give a close's code beside its reason.
                payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(data.utf8)
            } else if let decoded = Base64Decoding.decode(data) {
                payload = decoded  // binary, and every payload wstap's --har writes that is not text
            } else if opcode.isControl {
                payload = Array(data.utf8)
            } else {
                throw Failure(message: "\(place): binary data is not base64")
            }
        }
        if opcode == .close, payload.count >= 2 {
            closeCode = UInt16(payload[0]) << 8 | UInt16(payload[1])
            closeReason = String(validating: payload[2...], as: UTF8.self)
        }
        // wstap's --har marks payloads cut at --max-payload (with their whole length) and ones that
        // did not inflate (their data is then the compressed bytes, as base64).
        let truncated = item.bool("_truncated") == true
        let length = truncated ? UInt64(max(item.int("_length") ?? payload.count, payload.count)) : UInt64(payload.count)
        return MessageRecord(direction: direction, opcode: opcode, frames: 1, wireLength: inflateFailed ? UInt64(payload.count) : length, length: length,
                             compressed: inflateFailed, payload: payload, truncated: truncated, closeCode: closeCode, closeReason: closeReason,
                             inflateFailed: inflateFailed, incomplete: false, offset: 0,
                             textValidity: opcode == .text && !inflateFailed ? .valid : .unchecked)
    }

    /// A request or response head from HAR's `method`/`url`/`status`, `httpVersion` and `headers`.
    /// HTTP/2 pseudo-headers are left out (an HTTP/1.1 upgrade has none); `:authority` becomes `Host`
    /// when the entry has no Host of its own.
    static func head(_ json: JSONValue, request: Bool, parts: URLParts) -> HTTPHead {
        var headers: [(name: String, value: String)] = []
        var authority: String?
        if case .array(let items)? = json[member: "headers"] {
            for item in items {
                guard let name = item.string("name"), let value = item.string("value"), !name.isEmpty else { continue }
                if name.hasPrefix(":") {
                    if name == ":authority" { authority = value }
                    continue
                }
                headers.append((name, value))
            }
        }
        var version = json.string("httpVersion") ?? ""
        if !version.hasPrefix("HTTP/1") { version = "HTTP/1.1" }  // "", "h2", "HTTP/2.0": the upgrade was HTTP/1.1
        if request {
            if !headers.contains(where: { $0.name.lowercased() == "host" }) {
                headers.insert(("Host", authority ?? parts.authority), at: 0)
            }
            return HTTPHead(startLine: .request(method: json.string("method") ?? "GET", target: parts.target, version: version), headers: headers)
        }
        return HTTPHead(startLine: .response(version: version, status: json.int("status") ?? 0, reason: json.string("statusText") ?? ""), headers: headers)
    }

    /// The pieces of an entry's URL a head and an open record need.
    struct URLParts {
        var scheme = "ws"
        var authority = ""
        var target = "/"
        var port = 80

        init(_ url: String) {
            var rest = Substring(url)
            if let colon = rest.firstIndex(of: ":"), rest[colon...].hasPrefix("://") {
                scheme = rest[..<colon].lowercased()
                rest = rest[rest.index(colon, offsetBy: 3)...]
            }
            let slash = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
            authority = String(rest[..<slash])
            if let at = authority.lastIndex(of: "@") { authority = String(authority[authority.index(after: at)...]) }
            let path = rest[slash...]
            target = path.isEmpty ? "/" : path.hasPrefix("?") ? "/" + path : String(path)
            if let hash = target.firstIndex(of: "#") { target = String(target[..<hash]) }
            let secure = scheme == "wss" || scheme == "https"
            port = secure ? 443 : 80
            if let colon = authority.lastIndex(of: ":"), !authority[colon...].contains("]"), let value = Int(authority[authority.index(after: colon)...]) {
                port = value
            }
        }

        /// ws:// or wss:// with the same authority and target.
        var webSocketURL: String {
            let secure = scheme == "wss" || scheme == "https"
            return "\(secure ? "wss" : "ws")://\(authority)\(target)"
        }
    }
}

/// Finds `log.entries[…]` in a JSON document without parsing it: strings and nesting are followed,
/// nothing else is checked (each entry is parsed on its own afterwards).
struct StructureScanner {
    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
        // A UTF-8 byte order mark, as some Windows tools write.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
    }

    mutating func forEachEntry(_ body: (Range<Int>) throws -> Void) throws {
        let notHAR = HARReader.Failure(message: "not a HAR file: no log.entries array")
        guard try member(named: "log", in: notHAR), peek() == UInt8(ascii: "{") else { throw notHAR }
        guard try member(named: "entries", in: notHAR), peek() == UInt8(ascii: "[") else { throw notHAR }
        index += 1
        var number = 0
        while true {
            skipWhitespace()
            guard let byte = peek() else { throw HARReader.Failure(message: "the file ends inside log.entries, after \(number) entries (cut short?)") }
            if byte == UInt8(ascii: "]") { return }
            if number > 0 {
                guard byte == UInt8(ascii: ",") else { throw HARReader.Failure(message: "entry \(number + 1) is not valid JSON") }
                index += 1
                skipWhitespace()
            }
            number += 1
            let start = index
            guard try skipValue() else { throw HARReader.Failure(message: "the file ends inside entry \(number) (cut short?)") }
            try body(start..<index)
        }
    }

    /// Moves into the object at `index` and up to the value of its member `name`; false if it has none.
    private mutating func member(named name: String, in failure: HARReader.Failure) throws -> Bool {
        skipWhitespace()
        guard peek() == UInt8(ascii: "{") else { throw failure }
        index += 1
        let wanted = Array(name.utf8)
        while true {
            skipWhitespace()
            guard let byte = peek() else { throw failure }
            if byte == UInt8(ascii: "}") { return false }
            if byte == UInt8(ascii: ",") { index += 1; skipWhitespace() }
            guard peek() == UInt8(ascii: "\"") else { throw failure }
            let keyStart = index + 1
            guard skipString() else { throw failure }
            let key = bytes[keyStart..<(index - 1)]
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw failure }
            index += 1
            skipWhitespace()
            if key.elementsEqual(wanted) { return true }
            guard try skipValue() else { throw failure }
        }
    }

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipWhitespace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 { index += 1 }
    }

    /// Past the string starting at `index`; false if the document ends inside it.
    private mutating func skipString() -> Bool {
        index += 1
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""): index += 1; return true
            default: index += 1
            }
        }
        return false
    }

    /// Past one value (object, array, string or scalar); false if the document ends inside it.
    /// Nesting is counted, not recursed into: hostile depth costs nothing.
    private mutating func skipValue() throws -> Bool {
        guard let first = peek() else { return false }
        switch first {
        case UInt8(ascii: "\""):
            return skipString()
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            while let byte = peek() {
                switch byte {
                case UInt8(ascii: "\""):
                    guard skipString() else { return false }
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["):
                    depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { index += 1; return true }
                default: break
                }
                index += 1
            }
            return false
        default:
            // A number, true, false or null: it ends where the next separator starts.
            while let byte = peek(), byte != UInt8(ascii: ","), byte != UInt8(ascii: "}"), byte != UInt8(ascii: "]"), !Self.isSpace(byte) { index += 1 }
            return index < bytes.count
        }
    }

    private static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 }
}

/// `2024-05-01T12:00:00.123Z`, `2024-05-01T12:00:00.123456+00:00` (mitmproxy), or with another offset.
enum ISO8601Time {
    static func nanoseconds(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= b.count else { return nil }
            var value = 0
            for i in range {
                guard (0x30...0x39).contains(b[i]) else { return nil }
                value = value * 10 + Int(b[i] - 0x30)
            }
            return value
        }
        guard b.count >= 19, let year = number(0..<4), b[4] == 0x2D, let month = number(5..<7), b[7] == 0x2D, let day = number(8..<10),
              b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: " "), let hour = number(11..<13), let minute = number(14..<16),
              let second = number(17..<19), (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        var i = 19
        var fraction: Int64 = 0
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            var digits = 0
            while i < b.count, (0x30...0x39).contains(b[i]) {
                if digits < 9 { fraction = fraction * 10 + Int64(b[i] - 0x30); digits += 1 }
                i += 1
            }
            for _ in digits..<9 { fraction *= 10 }
        }
        var offsetSeconds = 0
        if i < b.count {
            if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
                i += 1
            } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-"), let h = number((i + 1)..<(i + 3)) {
                let colon = i + 3 < b.count && b[i + 3] == UInt8(ascii: ":")
                guard let m = number((i + (colon ? 4 : 3))..<(i + (colon ? 6 : 5))) else { return nil }
                offsetSeconds = (h * 3600 + m * 60) * (b[i] == UInt8(ascii: "-") ? -1 : 1)
                i += colon ? 6 : 5
            }
        }
        guard i == b.count else { return nil }
        // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second - offsetSeconds)
        // Nanoseconds since 1970 in 64 bits reach from 1677 to 2262; a time outside is no time at all.
        guard seconds.magnitude < 9_223_372_035 else { return nil }
        return seconds * 1_000_000_000 + fraction
    }
}

/// A whole file's bytes (HAR is one JSON document).
enum FileBytes {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func read(_ path: String) throws -> [UInt8] {
        let fd = path == "-" ? STDIN_FILENO : Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: String(cString: strerror(errno))) }
        defer { if fd != STDIN_FILENO { Glibc.close(fd) } }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(description: String(cString: strerror(errno)))
            }
            if count == 0 { return out }
            out += chunk[..<count]
        }
    }
}
