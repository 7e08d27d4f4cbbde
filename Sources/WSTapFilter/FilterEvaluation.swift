#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WSTapDissect
import WSTapWire

/// A compiled regular expression of a filter (`/.../`, `/.../i`).
///
/// A class: `Regex` comes from a library with resilient layout, and a struct holding it would give
/// `Operand` (and every switch over it, on every message) an unknown size and runtime-dispatched copies.
final class FilterRegex: @unchecked Sendable {
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
/// (a comparison with a missing field is false; `not` makes it true). The record's fields are taken
/// out once, when the subject is made, so that testing many conditions (ten rules on every message)
/// does not copy the record again for each; text and JSON are worked out once, on first use.
public struct FilterSubject {
    private let connectionID: UInt64
    private let type: StaticString
    private let direction: Direction?
    /// The record's own connection facts (`open`, `http`), else the connection's.
    private let facts: ConnectionFacts?
    /// Set for message records: the fields most conditions read.
    private let message: MessageRecord?
    /// Set for frame records.
    private let frame: FrameHeader?
    private let diagnostic: String?
    private var decodedText: String??
    private var parsedJSON: JSONValue??

    public init(record: TapRecord, connection: ConnectionFacts?) {
        connectionID = record.connection
        var facts = connection
        var direction: Direction?
        var message: MessageRecord?
        var frame: FrameHeader?
        var diagnostic: String?
        switch record.body {
        case .open(let open): type = "open"; facts = ConnectionFacts(open)
        case .http(let exchange): type = "http"; facts = exchange.url.map { ConnectionFacts(url: $0, subprotocol: nil) }
        case .frame(let f): type = "frame"; direction = f.direction; frame = f.header
        case .message(let m): type = "message"; direction = m.direction; message = m
        case .diagnostic(let d): type = "diagnostic"; direction = d.direction; diagnostic = d.code.rawValue
        case .end: type = "end"
        case .gap(let g): type = "gap"; direction = g.direction
        case .change(let c): type = "change"; direction = c.direction
        }
        self.facts = facts
        self.direction = direction
        self.message = message
        self.frame = frame
        self.diagnostic = diagnostic
    }

    /// A message that is not wrapped in a record yet (the rule engine, for every message a proxy relays).
    public init(message: MessageRecord, connectionID: UInt64, connection: ConnectionFacts?) {
        self.connectionID = connectionID
        type = "message"
        direction = message.direction
        facts = connection
        self.message = message
        frame = nil
        diagnostic = nil
    }

    static let opcodeNames: [String: Int] = ["cont": 0, "continuation": 0, "text": 1, "binary": 2, "close": 8, "ping": 9, "pong": 10]

    func number(_ field: Field) -> Double? {
        switch field {
        case .conn: Double(connectionID)
        case .len: if let length = message?.length { Double(length) } else { frame.map { Double($0.payloadLength) } }
        case .wire: if let length = message?.wireLength { Double(length) } else { frame.map { Double($0.payloadLength) } }
        case .frames: message.map { Double($0.frames) }
        case .code: message?.closeCode.map(Double.init)
        case .op: if let opcode = message?.opcode { Double(opcode.rawValue) } else { frame.map { Double($0.opcode.rawValue) } }
        default: nil
        }
    }

    func boolean(_ field: Field) -> Bool? {
        switch field {
        case .compressed: message?.compressed ?? frame?.rsv1
        case .masked: frame?.masked
        case .fin: frame?.fin
        default: nil
        }
    }

    /// The payload: a message's (inflated) bytes as recorded, up to --max-payload.
    var payload: [UInt8]? {
        guard let message, !message.opcode.isControl || message.opcode == .ping || message.opcode == .pong else { return nil }
        return message.payload
    }

    /// Whether a text message's bytes hold `needle`; nil for anything else (the caller decodes).
    func textContains(_ needle: UnsafeRawBufferPointer) -> Bool? {
        guard let message, message.opcode == .text, !message.inflateFailed else { return nil }
        return Test.contains(message.payload, needle)
    }

    /// Text messages as text; binary ones too when their bytes are UTF-8 (JSON sent as binary).
    mutating func text() -> String? {
        if let decoded = decodedText { return decoded }
        var value: String?
        if let message, !message.inflateFailed {
            switch message.opcode {
            case .text: value = String(decoding: message.payload, as: UTF8.self)
            case .binary, .continuation, .ping, .pong: value = String(validating: message.payload, as: UTF8.self)
            default: break
            }
        }
        decodedText = .some(value)
        return value
    }

    mutating func json() -> JSONValue? {
        if let parsed = parsedJSON { return parsed }
        var value: JSONValue?
        if let message, !message.inflateFailed, !message.truncated, message.opcode == .text || message.opcode == .binary {
            value = JSONValue.parse(message.payload)
        }
        parsedJSON = .some(value)
        return value
    }

    mutating func string(_ field: Field) -> String? {
        switch field {
        case .type: type.description
        case .from: direction?.sender
        case .text: text()
        case .reason: message?.closeReason
        case .url: facts?.url
        case .host: facts?.host
        case .path: facts?.path
        case .sub: facts?.subprotocol
        case .diag: diagnostic
        default: nil
        }
    }
}

extension Test {
    func evaluate(_ subject: inout FilterSubject) -> Bool {
        switch kind {
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
            if isOpcode { return opTest(subject) }
            // `text:word` on a text message: a byte search, without making a String of the payload
            // (UTF-8 is self-synchronising, so a match starts and ends on character boundaries).
            if let needle = textNeedle, let found = subject.textContains(needle) { return found }
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
        needle.withUnsafeBytes { contains(haystack, $0) }
    }

    static func contains(_ haystack: [UInt8], _ n: UnsafeRawBufferPointer) -> Bool {
        guard !n.isEmpty else { return true }
        guard haystack.count >= n.count else { return false }
        // memchr for the first byte, memcmp for the rest: libc's vectorised scans (glibc's memmem is
        // not in Swift's Glibc module).
        return haystack.withUnsafeBytes { h in
            var from = h.baseAddress!
            let last = h.baseAddress! + (h.count - n.count)  // the last place a match can start
            while from <= last {
                guard let hit = memchr(from, Int32(n[0]), last - from + 1) else { return false }
                if memcmp(hit, n.baseAddress!, n.count) == 0 { return true }
                from = UnsafeRawPointer(hit) + 1
            }
            return false
        }
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
