import WSTapWire

/// A JSON document (RFC 8259) parsed from message bytes, for `json.<path>` in filters and rules.
///
/// Payloads are untrusted: nesting is bounded (deeper documents are rejected, not recursed into), and
/// anything that is not exactly one JSON value with optional whitespace around it is rejected.
// Not `indirect`: the recursion goes through arrays, which are references already, and boxing every
// value cost an allocation per number and string of each JSON Lines record read back.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The number's value and its text as written (`1e3` and `1000` are equal numbers, different text).
    case number(Double, text: String)
    case string(String)
    case array([JSONValue])
    /// Members in document order; a name that appears twice keeps both (lookups take the last, as
    /// JavaScript's JSON.parse does).
    case object([(name: String, value: JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.number(let x, _), .number(let y, _)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.name == $1.name && $0.value == $1.value }
        default: false
        }
    }

    /// Deeper documents are rejected: recursion on hostile input must not exhaust the stack.
    public static let maximumDepth = 256

    /// The document in `bytes`, or nil if they are not exactly one JSON value.
    public static func parse<C: Collection>(_ bytes: C) -> JSONValue? where C.Element == UInt8 {
        var parser = Parser(bytes: Array(bytes))
        guard let value = parser.value(depth: 0) else { return nil }
        parser.skipWhitespace()
        return parser.index == parser.bytes.count ? value : nil
    }

    public subscript(member name: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last { $0.name == name }?.value
    }

    public subscript(index index: Int) -> JSONValue? {
        guard case .array(let items) = self, index >= 0, index < items.count else { return nil }
        return items[index]
    }

    /// How the value reads in a comparison with text: strings as they are, the rest as JSON.
    public var text: String {
        switch self {
        case .string(let s): s
        default: serialized
        }
    }

    /// Compact JSON text of the value.
    public var serialized: String {
        switch self {
        case .null: "null"
        case .bool(let b): b ? "true" : "false"
        case .number(_, let text): text
        case .string(let s): Self.quoted(s)
        case .array(let items): "[" + items.map(\.serialized).joined(separator: ",") + "]"
        case .object(let members): "{" + members.map { Self.quoted($0.name) + ":" + $0.value.serialized }.joined(separator: ",") + "}"
        }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0

        mutating func skipWhitespace() {
            while index < bytes.count {
                let byte = bytes[index]
                guard byte == 0x20 || byte == 0x0A || byte == 0x09 || byte == 0x0D else { return }
                index += 1
            }
        }

        mutating func value(depth: Int) -> JSONValue? {
            guard depth < JSONValue.maximumDepth else { return nil }
            skipWhitespace()
            guard index < bytes.count else { return nil }
            switch bytes[index] {
            case UInt8(ascii: "{"): return object(depth: depth)
            case UInt8(ascii: "["): return array(depth: depth)
            case UInt8(ascii: "\""): return string().map { .string($0) }
            case UInt8(ascii: "t"): return literal("true", .bool(true))
            case UInt8(ascii: "f"): return literal("false", .bool(false))
            case UInt8(ascii: "n"): return literal("null", .null)
            default: return number()
            }
        }

        mutating func literal(_ word: String, _ value: JSONValue) -> JSONValue? {
            let expected = Array(word.utf8)
            guard bytes.count - index >= expected.count, bytes[index..<(index + expected.count)].elementsEqual(expected) else { return nil }
            index += expected.count
            return value
        }

        mutating func object(depth: Int) -> JSONValue? {
            index += 1  // {
            var members: [(name: String, value: JSONValue)] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\""), let name = string() else { return nil }
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
                index += 1
                guard let member = value(depth: depth + 1) else { return nil }
                members.append((name, member))
                skipWhitespace()
                guard index < bytes.count else { return nil }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "}") else { return nil }
                index += 1
                return .object(members)
            }
        }

        mutating func array(depth: Int) -> JSONValue? {
            index += 1  // [
            var items: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                guard let item = value(depth: depth + 1) else { return nil }
                items.append(item)
                skipWhitespace()
                guard index < bytes.count else { return nil }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "]") else { return nil }
                index += 1
                return .array(items)
            }
        }

        /// A string starting at the opening quote; escapes decoded, surrogate pairs joined. Unpaired
        /// surrogates become U+FFFD (they cannot be in a Swift string); raw bytes must be UTF-8.
        mutating func string() -> String? {
            index += 1  // "
            // Usually no escapes: the run of bytes up to the quote is the string, validated once.
            // With escapes, the UTF-8 is gathered in a byte buffer (an escape adds whole scalars, so
            // a sequence split by one is still invalid) and validated once at the end.
            let start = index
            var buffer: [UInt8]?
            var runStart = index
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    defer { index += 1 }
                    if buffer == nil { return Self.text(bytes, start..<index) }
                    buffer!.append(contentsOf: bytes[runStart..<index])
                    return Self.text(buffer!, 0..<buffer!.count)
                }
                if byte < 0x20 { return nil }  // control characters must be escaped
                if byte != UInt8(ascii: "\\") { index += 1; continue }
                guard index + 1 < bytes.count else { return nil }
                if buffer == nil { buffer = [] }
                buffer!.append(contentsOf: bytes[runStart..<index])
                let escape = bytes[index + 1]
                index += 2
                let scalar: Unicode.Scalar
                switch escape {
                case UInt8(ascii: "\""): scalar = "\""
                case UInt8(ascii: "\\"): scalar = "\\"
                case UInt8(ascii: "/"): scalar = "/"
                case UInt8(ascii: "b"): scalar = "\u{8}"
                case UInt8(ascii: "f"): scalar = "\u{C}"
                case UInt8(ascii: "n"): scalar = "\n"
                case UInt8(ascii: "r"): scalar = "\r"
                case UInt8(ascii: "t"): scalar = "\t"
                case UInt8(ascii: "u"):
                    guard let unit = hex4() else { return nil }
                    if (0xD800..<0xDC00).contains(unit), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
                        let save = index
                        index += 2
                        if let low = hex4(), (0xDC00..<0xE000).contains(low) {
                            scalar = Unicode.Scalar(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))!
                        } else {
                            index = save
                            scalar = "\u{FFFD}"
                        }
                    } else {
                        scalar = Unicode.Scalar(unit) ?? "\u{FFFD}"
                    }
                default:
                    return nil
                }
                buffer!.append(contentsOf: UTF8.encode(scalar)!)
                runStart = index
            }
            return nil  // no closing quote
        }

        /// The UTF-8 in `range` as a string, or nil when it is not UTF-8. Validated here and then
        /// decoded: `String(validating:as:)` takes a generic path that cost a fifth of reading JSON Lines.
        private static func text(_ bytes: [UInt8], _ range: Range<Int>) -> String? {
            bytes.withUnsafeBytes { raw in
                let piece = UnsafeRawBufferPointer(rebasing: raw[range])
                if !piece.allSatisfy({ $0 < 0x80 }) {
                    var validator = UTF8Validator()
                    validator.feed(piece)
                    guard validator.isValid, validator.isComplete else { return nil }
                }
                return String(decoding: piece, as: UTF8.self)
            }
        }

        mutating func hex4() -> UInt32? {
            guard bytes.count - index >= 4 else { return nil }
            var value: UInt32 = 0
            for byte in bytes[index..<(index + 4)] {
                guard let digit = Hex.digit(byte) else { return nil }
                value = value << 4 | UInt32(digit)
            }
            index += 4
            return value
        }

        /// RFC 8259 §6: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
        mutating func number() -> JSONValue? {
            let start = index
            // The digits as one integer while it is exact in a Double (below 2^53), for the fast path.
            var mantissa: UInt64 = 0
            var exact = true
            func digits() -> Int {
                let from = index
                while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) {
                    if mantissa < 1 << 49 { mantissa = mantissa * 10 + UInt64(bytes[index] - UInt8(ascii: "0")) } else { exact = false }
                    index += 1
                }
                return index - from
            }
            let negative = index < bytes.count && bytes[index] == UInt8(ascii: "-")
            if negative { index += 1 }
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else {
                guard digits() > 0 else { return nil }
            }
            var fractionDigits = 0
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                fractionDigits = digits()
                guard fractionDigits > 0 else { return nil }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits() > 0 else { return nil }
                exact = false
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            // Every record has a timestamp and several counts. An integer below 2^53 divided by an
            // exact power of ten is correctly rounded (IEEE division), so it equals what strtod gives.
            if exact && fractionDigits < Self.powersOfTen.count {
                let value = Double(mantissa) / Self.powersOfTen[fractionDigits]
                return .number(negative ? -value : value, text: text)
            }
            guard let value = Double(text) else { return nil }
            return .number(value, text: text)
        }

        /// 10^0 … 10^22, each exact in a Double.
        static let powersOfTen: [Double] = (0...22).map { (0..<$0).reduce(1.0) { value, _ in value * 10 } }
    }
}
