import WSTapDissect
import WSTapWire

/// A compiled regular expression of a filter (`/.../`, `/.../i`).
struct FilterRegex: @unchecked Sendable {
    // @unchecked: Regex is immutable once built; matching does not change it.
    let regex: Regex<AnyRegexOutput>
    let pattern: String

    init(_ pattern: String, ignoreCase: Bool) throws {
        self.pattern = pattern
        let compiled = try Regex(pattern)
        regex = ignoreCase ? compiled.ignoresCase() : compiled
    }

    func matches(_ text: String) -> Bool { (try? regex.firstMatch(in: text)) != nil }
}

/// One record as a filter sees it: each field's value, or nil where the record has no such field
/// (a comparison with a missing field is false; `not` makes it true). Text and JSON are worked out
/// once, on first use.
public struct FilterSubject {
    let record: TapRecord
    let connection: ConnectionFacts?
    private var decodedText: String??
    private var parsedJSON: JSONValue??

    public init(record: TapRecord, connection: ConnectionFacts?) {
        self.record = record
        self.connection = connection
    }

    static let opcodeNames: [String: Int] = ["cont": 0, "continuation": 0, "text": 1, "binary": 2, "close": 8, "ping": 9, "pong": 10]

    var type: String {
        switch record.body {
        case .open: "open"
        case .http: "http"
        case .frame: "frame"
        case .message: "message"
        case .diagnostic: "diagnostic"
        case .end: "end"
        case .gap: "gap"
        case .change: "change"
        }
    }

    var direction: Direction? {
        switch record.body {
        case .frame(let f): f.direction
        case .message(let m): m.direction
        case .diagnostic(let d): d.direction
        case .gap(let g): g.direction
        case .change(let c): c.direction
        default: nil
        }
    }

    /// The connection's own facts: from the record itself for `open`, else from the connection.
    var facts: ConnectionFacts? {
        switch record.body {
        case .open(let open): ConnectionFacts(open)
        case .http(let exchange): exchange.url.map { ConnectionFacts(url: $0, subprotocol: nil) }
        default: connection
        }
    }

    func number(_ field: Field) -> Double? {
        switch (field, record.body) {
        case (.conn, _): Double(record.connection)
        case (.len, .message(let m)): Double(m.length)
        case (.len, .frame(let f)), (.wire, .frame(let f)): Double(f.header.payloadLength)
        case (.wire, .message(let m)): Double(m.wireLength)
        case (.frames, .message(let m)): Double(m.frames)
        case (.code, .message(let m)): m.closeCode.map(Double.init)
        case (.op, .message(let m)): Double(m.opcode.rawValue)
        case (.op, .frame(let f)): Double(f.header.opcode.rawValue)
        default: nil
        }
    }

    func boolean(_ field: Field) -> Bool? {
        switch (field, record.body) {
        case (.compressed, .message(let m)): m.compressed
        case (.compressed, .frame(let f)): f.header.rsv1
        case (.masked, .frame(let f)): f.header.masked
        case (.fin, .frame(let f)): f.header.fin
        default: nil
        }
    }

    /// The payload: a message's (inflated) bytes as recorded, up to --max-payload.
    var payload: [UInt8]? {
        guard case .message(let m) = record.body, !m.opcode.isControl || m.opcode == .ping || m.opcode == .pong else { return nil }
        return m.payload
    }

    /// Text messages as text; binary ones too when their bytes are UTF-8 (JSON sent as binary).
    mutating func text() -> String? {
        if let decoded = decodedText { return decoded }
        var value: String?
        if case .message(let m) = record.body, !m.inflateFailed {
            if m.opcode == .text {
                value = String(decoding: m.payload, as: UTF8.self)
            } else if m.opcode == .binary || m.opcode == .continuation || m.opcode == .ping || m.opcode == .pong {
                value = String(validating: m.payload, as: UTF8.self)
            }
        }
        decodedText = .some(value)
        return value
    }

    mutating func json() -> JSONValue? {
        if let parsed = parsedJSON { return parsed }
        var value: JSONValue?
        if case .message(let m) = record.body, !m.inflateFailed, !m.truncated, m.opcode == .text || m.opcode == .binary {
            value = JSONValue.parse(m.payload)
        }
        parsedJSON = .some(value)
        return value
    }

    mutating func string(_ field: Field) -> String? {
        switch field {
        case .type: type
        case .from: direction?.sender
        case .text: text()
        case .reason: if case .message(let m) = record.body { m.closeReason } else { nil }
        case .url: facts?.url
        case .host: facts?.host
        case .path: facts?.path
        case .sub: facts?.subprotocol
        case .diag: if case .diagnostic(let d) = record.body { d.code.rawValue } else { nil }
        default: nil
        }
    }
}

extension Test {
    func evaluate(_ subject: inout FilterSubject) -> Bool {
        switch field.kind {
        case .number:
            guard let value = subject.number(field) else { return false }
            if op == .exists { return true }
            guard case .number(let wanted) = operand else { return false }
            return Self.compare(value, wanted, op)
        case .boolean:
            guard let value = subject.boolean(field) else { return false }
            switch (op, operand) {
            case (.exists, _): return value
            case (.equal, .boolean(let wanted)): return value == wanted
            case (.notEqual, .boolean(let wanted)): return value != wanted
            default: return false
            }
        case .bytes:
            guard let payload = subject.payload else { return false }
            if op == .exists { return true }
            guard case .bytes(let wanted) = operand else { return false }
            switch op {
            case .equal: return payload == wanted
            case .notEqual: return payload != wanted
            case .contains: return Self.contains(payload, wanted)
            default: return false
            }
        case .text:
            if field == .op { return opTest(subject) }
            // `text:word` on a text message: a byte search, without making a String of the payload
            // (UTF-8 is self-synchronising, so a match starts and ends on character boundaries).
            if field == .text, op == .contains, case .text(let needle) = operand, case .message(let m) = subject.record.body,
               m.opcode == .text, !m.inflateFailed {
                return Self.contains(m.payload, Array(needle.utf8))
            }
            guard let value = subject.string(field) else { return false }
            return Self.compareText(value, op, operand)
        case .json:
            guard case .json(let path) = field, let root = subject.json(), let value = Self.lookup(root, path) else { return false }
            switch (op, operand) {
            case (.exists, _): return true
            case (.equal, .json(let wanted)): return Self.jsonEqual(value, wanted)
            case (.notEqual, .json(let wanted)): return !Self.jsonEqual(value, wanted)
            case (.less, .number(let n)), (.lessOrEqual, .number(let n)), (.greater, .number(let n)), (.greaterOrEqual, .number(let n)):
                guard case .number(let actual, _) = value else { return false }
                return Self.compare(actual, n, op)
            case (.matches, .regex(let regex)): return regex.matches(value.text)
            case (.contains, .text(let needle)): return value.text.contains(needle)
            default: return false
            }
        }
    }

    /// `op` takes names or numbers; it is stored as the opcode number.
    private func opTest(_ subject: FilterSubject) -> Bool {
        guard let value = subject.number(.op) else { return false }
        if op == .exists { return true }
        guard case .number(let wanted) = operand else { return false }
        return Self.compare(value, wanted, op)
    }

    static func compareText(_ value: String, _ op: Operator, _ operand: Operand) -> Bool {
        switch (op, operand) {
        case (.exists, _): return true
        case (.equal, .text(let wanted)): return value == wanted
        case (.notEqual, .text(let wanted)): return value != wanted
        case (.contains, .text(let wanted)): return value.contains(wanted)
        case (.matches, .regex(let regex)): return regex.matches(value)
        default: return false
        }
    }

    static func compare(_ a: Double, _ b: Double, _ op: Operator) -> Bool {
        switch op {
        case .equal: a == b
        case .notEqual: a != b
        case .less: a < b
        case .lessOrEqual: a <= b
        case .greater: a > b
        case .greaterOrEqual: a >= b
        default: false
        }
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard haystack.count >= needle.count else { return false }
        for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
            if haystack[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }

    static func lookup(_ root: JSONValue, _ path: [JSONPathStep]) -> JSONValue? {
        var current = root
        for step in path {
            switch step {
            case .member(let name): guard let next = current[member: name] else { return nil }; current = next
            case .index(let i): guard let next = current[index: i] else { return nil }; current = next
            }
        }
        return current
    }

    /// A wanted string also matches a JSON number written that way (`json.id="7"` finds 7); numbers
    /// compare by value, everything else structurally.
    static func jsonEqual(_ value: JSONValue, _ wanted: JSONValue) -> Bool {
        if case .string(let text) = wanted, case .number(_, let written) = value { return written == text }
        return value == wanted
    }
}
