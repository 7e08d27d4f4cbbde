import Dispatch
import WSTapDissect
import WSTapFilter
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// Reads wstap's JSON Lines (schema v1, docs/record-schema.md) back into records, every type of them,
/// so that a recording converts to HAR or back to JSONL, and replay, mocks and rules work from it.
/// What it reads encodes to the same line again (a test holds every shared capture to that).
///
/// A line that is not a record is an error that names it; the records before it have been handed
/// over already, so a caller keeps what was read up to the damage.
public enum JSONLinesReader {
    public struct Failure: Error, CustomStringConvertible {
        public let line: Int
        public let message: String
        public var description: String { line > 0 ? "line \(line): \(message)" : message }
    }

    /// A line longer than this is refused rather than held: a file without newlines must not be read
    /// into memory whole. A whole 64 MiB payload (--max-payload unlimited at the default
    /// --max-inflate) still fits in base64.
    public static let maximumLineBytes = 96 << 20

    /// The records of `text`, in order.
    public static func records(_ text: String) throws(Failure) -> [TapRecord] {
        var out: [TapRecord] = []
        var number = 0
        for line in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            var bytes = Array(line)
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            guard !bytes.isEmpty else { continue }
            if let record = try record(bytes, line: number) { out.append(record) }
        }
        return out
    }

    /// Reads the file at `path` line by line (a recording can be larger than memory) and hands each
    /// record to `body` in order. Lines are parsed in batches of about a megabyte, spread over the
    /// cores (parsing is nearly all of the time; replay of a 92 MB recording waited on it), and
    /// handed over in file order; a damaged line stops the read after the records before it.
    public static func read(path: String, _ body: (TapRecord) throws -> Void) throws {
        let fd = path == "-" ? STDIN_FILENO : Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(line: 0, message: "cannot open: \(String(cString: strerror(errno)))") }
        defer { if fd != STDIN_FILENO { Glibc.close(fd) } }
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var number = 0
        var batch = LineBatch()
        func take(_ line: ArraySlice<UInt8>) throws {
            number += 1
            var bytes = Array(line)
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            guard !bytes.isEmpty else { return }
            batch.add(bytes, line: number)
            if batch.bytes >= LineBatch.size { try batch.flush(body) }
        }
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                try batch.flush(body)
                throw Failure(line: number + 1, message: "cannot read: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            var start = 0
            let got = chunk[..<count]
            while let newline = got[start...].firstIndex(of: UInt8(ascii: "\n")) {
                if pending.isEmpty {
                    try take(got[start..<newline])
                } else {
                    pending += got[start..<newline]
                    try take(pending[...])
                    pending.removeAll(keepingCapacity: false)
                }
                start = newline + 1
            }
            pending += got[start...]
            if pending.count > maximumLineBytes {
                try batch.flush(body)
                throw Failure(line: number + 1, message: "longer than \(maximumLineBytes >> 20) MiB without a line end: not JSON Lines")
            }
        }
        if !pending.isEmpty { try take(pending[...]) }
        try batch.flush(body)
    }

    /// Lines waiting to be parsed, with their numbers.
    private struct LineBatch {
        static let size = 1 << 20
        static let workers = max(1, min(4, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        var lines: [(bytes: [UInt8], line: Int)] = []
        var bytes = 0

        mutating func add(_ line: [UInt8], line number: Int) {
            lines.append((line, number))
            bytes += line.count
        }

        /// Parses the lines (on `workers` threads when there are enough of them) and hands the
        /// records over in order, up to the first damaged line.
        mutating func flush(_ body: (TapRecord) throws -> Void) throws {
            defer {
                lines.removeAll(keepingCapacity: true)
                bytes = 0
            }
            guard !lines.isEmpty else { return }
            var results = [Result<TapRecord?, Failure>](repeating: .success(nil), count: lines.count)
            let workers = lines.count >= 64 ? Self.workers : 1
            let input = lines
            results.withUnsafeMutableBufferPointer { out in
                // Each worker writes only its own indices of `out`.
                nonisolated(unsafe) let out = out
                DispatchQueue.concurrentPerform(iterations: workers) { worker in
                    for index in stride(from: worker, to: input.count, by: workers) {
                        let (bytes, line) = input[index]
                        do throws(Failure) { out[index] = .success(try JSONLinesReader.record(bytes, line: line)) } catch { out[index] = .failure(error) }
                    }
                }
            }
            for result in results {
                if let record = try result.get() { try body(record) }
            }
        }
    }

    /// One line's record; nil for a line of a type this version does not know (a later schema's).
    public static func record(_ bytes: [UInt8], line: Int) throws(Failure) -> TapRecord? {
        guard let json = JSONValue.parse(bytes), case .object = json else { throw Failure(line: line, message: "not a JSON object") }
        let fields = Fields(json: json, line: line)
        guard case .string(let type)? = json[member: "type"], let conn = json.int("conn"), conn >= 0 else {
            throw Failure(line: line, message: "not a wstap record (no type, or no conn number)")
        }
        if let version = json.int("v"), version != JSONLinesEncoder.schemaVersion {
            throw Failure(line: line, message: "schema version \(version); this wstap reads version \(JSONLinesEncoder.schemaVersion)")
        }
        let time = Timestamp(nanoseconds: json.timestamp ?? 0)
        let body: TapRecord.Body
        switch type {
        case "open":
            var open = OpenRecord(client: json.string("client") ?? "", server: json.string("server") ?? "", url: json.string("url") ?? "",
                                  request: try fields.head("request", request: true), response: try fields.head("response", request: false),
                                  subprotocol: json.string("subprotocol"), extensions: json.string("extensions"),
                                  clientTLS: fields.tls("client_tls"), upstreamTLS: fields.tls("upstream_tls"))
            open.discovery = json.string("discovery") ?? "handshake"
            body = .open(open)
        case "http":
            guard let response = try fields.head("response", request: false) else {
                throw Failure(line: line, message: "an http record needs a response")
            }
            body = .http(HTTPExchangeRecord(
                url: json.string("url"), request: try fields.head("request", request: true), response: response,
                wasUpgradeAttempt: json.bool("upgrade") ?? false, requestBodyBytes: fields.count("request_body_bytes"),
                responseBodyBytes: fields.count("response_body_bytes"), durationNanoseconds: json.fixedPoint("duration_ms", unit: 1_000_000) ?? 0))
        case "frame":
            let direction = try fields.direction()
            guard let opcode = json.int("opcode"), (0..<16).contains(opcode) else { throw Failure(line: line, message: "a frame record needs an opcode") }
            let length = fields.count("length")
            let bits = json.int("length_bits").flatMap { LengthEncoding(rawValue: UInt8(clamping: $0)) }
            // A length that does not fit the recorded encoding could not have been on the wire.
            if let bits, bits == .sevenBit && length > 125 || bits == .sixteenBit && length > 0xFFFF {
                throw Failure(line: line, message: "a frame of \(length) bytes cannot have a \(bits.rawValue)-bit length")
            }
            var maskKey: UInt32?
            if let key = json.string("mask_key") {
                guard key.utf8.count == 8, let value = UInt32(key, radix: 16) else { throw Failure(line: line, message: "mask_key is not 8 hex digits") }
                maskKey = value
            }
            let header = FrameHeader(fin: json.bool("fin") ?? true, rsv1: json.bool("rsv1") ?? false, rsv2: json.bool("rsv2") ?? false,
                                     rsv3: json.bool("rsv3") ?? false, opcode: Opcode(rawValue: UInt8(opcode)), maskKey: maskKey,
                                     payloadLength: length, lengthEncoding: bits)
            body = .frame(FrameRecord(direction: direction, header: header, offset: fields.count("offset")))
        case "message":
            body = .message(try fields.message())
        case "diagnostic":
            guard let name = json.string("code"), let code = DiagnosticCode(rawValue: name) else {
                throw Failure(line: line, message: "a diagnostic record needs a code this wstap knows (docs/diagnostics.md)")
            }
            let direction: Direction? = json.string("from") == nil ? nil : try fields.direction()
            body = .diagnostic(Diagnostic(code: code, direction: direction, offset: fields.count("offset"), detail: json.string("detail") ?? ""))
        case "gap":
            body = .gap(GapRecord(direction: try fields.direction(), bytes: fields.count("bytes"), offset: fields.count("offset")))
        case "change":
            guard let name = json.string("result"), let result = ChangeRecord.Result(rawValue: name) else {
                throw Failure(line: line, message: "a change record needs a result (forwarded, edited, dropped, aborted, closed or injected)")
            }
            var sent: [SentMessage] = []
            if case .array(let copies)? = json[member: "sent"] {
                for copy in copies {
                    let inner = Fields(json: copy, line: line)
                    let message = try inner.message(requireDirection: false)
                    sent.append(SentMessage(opcode: message.opcode, frames: message.frames, length: message.length, wireLength: message.wireLength,
                                            compressed: message.compressed, payload: message.payload, truncated: message.truncated))
                }
            }
            body = .change(ChangeRecord(direction: try fields.direction(), offset: fields.count("offset"), rules: json.strings("rules"),
                                        actions: json.strings("actions"), result: result, sent: sent,
                                        heldNanoseconds: json.fixedPoint("held_ms", unit: 1_000_000), marks: json.strings("marks"),
                                        notes: json.strings("notes")))
        case "end":
            body = .end(EndRecord(reason: json.string("reason") ?? "", closedBy: json.string("closed_by"),
                                  clientBytes: fields.count("client_bytes"), serverBytes: fields.count("server_bytes")))
        default:
            return nil
        }
        return TapRecord(connection: UInt64(conn), timestamp: time, body: body)
    }

    /// One record's members, read with the line number at hand for errors.
    private struct Fields {
        let json: JSONValue
        let line: Int

        func count(_ name: String) -> UInt64 { UInt64(max(0, json.int(name) ?? 0)) }

        func direction() throws(Failure) -> Direction {
            switch json.string("from") {
            case "client": .clientToServer
            case "server": .serverToClient
            default: throw Failure(line: line, message: "from must be client or server")
            }
        }

        func tls(_ name: String) -> TLSLegInfo? {
            guard let leg = json[member: name], case .object = leg else { return nil }
            return TLSLegInfo(serverName: leg.string("sni"), verified: leg.bool("verified"))
        }

        /// A head as the encoder writes it: start line parts and `[[name, value], …]`.
        func head(_ name: String, request: Bool) throws(Failure) -> HTTPHead? {
            guard let head = json[member: name], case .object = head else { return nil }
            var headers: [(name: String, value: String)] = []
            if case .array(let pairs)? = head[member: "headers"] {
                for pair in pairs {
                    guard case .array(let parts) = pair, parts.count == 2, case .string(let field) = parts[0], case .string(let value) = parts[1] else {
                        throw Failure(line: line, message: "\(name) headers must be [name, value] pairs")
                    }
                    headers.append((field, value))
                }
            }
            let version = head.string("version") ?? "HTTP/1.1"
            if request {
                return HTTPHead(startLine: .request(method: head.string("method") ?? "GET", target: head.string("target") ?? "/", version: version),
                                headers: headers)
            }
            return HTTPHead(startLine: .response(version: version, status: head.int("status") ?? 0, reason: head.string("reason") ?? ""),
                            headers: headers)
        }

        /// A `message` record, or (without `from`) one copy of a change record's `sent`.
        func message(requireDirection: Bool = true) throws(Failure) -> MessageRecord {
            guard let opcode = json.int("opcode"), (0..<16).contains(opcode) else {
                throw Failure(line: line, message: "a message needs an opcode")
            }
            let direction: Direction = requireDirection ? try self.direction() : .clientToServer
            var payload: [UInt8] = []
            var validity = MessageRecord.TextValidity.unchecked
            if let text = json.string("text") {
                payload = Array(text.utf8)
                validity = .valid
            } else if let encoded = json.string("base64") {
                guard let decoded = Base64Decoding.decode(encoded) else { throw Failure(line: line, message: "base64 does not decode") }
                payload = decoded
                // The encoder writes text as base64 only when it is not UTF-8 (or did not inflate).
                if opcode == 1 && json.bool("inflate_failed") != true { validity = .invalid }
            } else if let code = json.int("code"), (0...0xFFFF).contains(code) {
                payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array((json.string("reason") ?? "").utf8)
            }
            let code = json.int("code").flatMap { (0...0xFFFF).contains($0) ? UInt16($0) : nil }
            return MessageRecord(
                direction: direction, opcode: Opcode(rawValue: UInt8(opcode)),
                frames: max(0, json.int("frames") ?? 1), wireLength: UInt64(max(0, json.int("wire_length") ?? payload.count)),
                length: UInt64(max(0, json.int("length") ?? payload.count)), compressed: json.bool("compressed") ?? false, payload: payload,
                truncated: json.bool("truncated") ?? false, closeCode: opcode == 8 ? code : nil, closeReason: opcode == 8 ? json.string("reason") : nil,
                inflateFailed: json.bool("inflate_failed") ?? false, incomplete: json.bool("incomplete") ?? false,
                offset: count("offset"), textValidity: validity)
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
    func strings(_ name: String) -> [String] {
        guard case .array(let items)? = self[member: name] else { return [] }
        return items.compactMap { if case .string(let s) = $0 { s } else { nil } }
    }
    /// `ts` is seconds with a fraction, as the encoder writes it.
    var timestamp: Int64? { fixedPoint("ts", unit: 1_000_000_000) }

    /// A decimal number read exactly (no binary floating point in between) and scaled to an integer
    /// of `unit`ths: seconds with 6 decimals to nanoseconds, milliseconds with 3 to nanoseconds.
    func fixedPoint(_ name: String, unit: Int64) -> Int64? {
        guard case .number(_, let text)? = self[member: name] else { return nil }
        return Self.fixedPoint(text, unit: unit)
    }

    static func fixedPoint(_ text: String, unit: Int64) -> Int64? {
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) else {
            guard let value = Double(text), (value * Double(unit)).magnitude < 9e18 else { return nil }
            return Int64(value * Double(unit))
        }
        // Digit by digit over the UTF-8 (every record has a timestamp: this runs once a line).
        var utf8 = text.utf8[...]
        let negative = utf8.first == UInt8(ascii: "-")
        if negative { utf8 = utf8.dropFirst() }
        var whole: Int64 = 0
        var sawDigit = false
        while let byte = utf8.first, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
            guard whole <= (Int64.max / unit - 1) / 10 else { return nil }
            whole = whole * 10 + Int64(byte - UInt8(ascii: "0"))
            sawDigit = true
            utf8 = utf8.dropFirst()
        }
        guard sawDigit, whole <= Int64.max / unit - 1 else { return nil }
        var fraction: Int64 = 0
        var scale = unit
        if utf8.first == UInt8(ascii: ".") {
            utf8 = utf8.dropFirst()
            // Digits past the unit's precision are dropped, not rounded.
            while let byte = utf8.first, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                if scale > 1 {
                    scale /= 10
                    fraction += Int64(byte - UInt8(ascii: "0")) * scale
                }
                utf8 = utf8.dropFirst()
            }
        }
        guard utf8.isEmpty else { return nil }
        let value = whole * unit + fraction
        return negative ? -value : value
    }
}

/// Standard base64 (RFC 4648 §4) with padding, as the encoder writes it.
public enum Base64Decoding {
    public static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count / 4 * 3)
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
