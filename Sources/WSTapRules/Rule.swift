import WSTapDissect
import WSTapFilter
import WSTapWire

/// A rule: `[name p=0.05] WHEN => ACTION; ACTION`. WHEN is a filter (docs/filters.md), or `*` for
/// every message; rules act on messages, so WHEN is tested against message records.
///
/// Every matching rule applies, in order, each to the message as the rules before it left it (as
/// Burp's match-and-replace rules do); a rule that drops, closes or aborts ends the chain.
public struct Rule: Sendable {
    public var name: String
    /// Chance that a matching message is acted on (nil: always).
    public var probability: Double?
    public var condition: Filter?
    public var actions: [RuleAction]
    /// The rule's line in its file (1 for --rule), for messages.
    public var line: Int
    public var source: String

    /// `--exec CMD`: every data message to the hook, as `[name] * => exec CMD` would.
    public static func hook(_ command: String, name: String) -> Rule {
        Rule(name: name, probability: nil, condition: nil, actions: [.exec(command: command)], line: 1, source: "--exec \(command)")
    }
}

public enum Side: String, Sendable { case client, server, both }

public enum RuleAction: Sendable, CustomStringConvertible {
    /// Every match of the regular expression in a text message, with `$1`…`$9`, `$0` and `$$`.
    case replace(pattern: String, with: String)
    /// Every occurrence of the bytes in the payload.
    case replaceBytes(from: [UInt8], to: [UInt8])
    case setJSON(path: String, value: JSONValue)
    case deleteJSON(path: String)
    case drop
    /// Milliseconds, and a jitter of ± that many.
    case delay(milliseconds: Int, jitter: Int)
    case hold
    case inject(to: Side, payload: Injected)
    case close(code: UInt16, reason: String, to: Side)
    case abort
    case duplicate
    case fragment(count: Int?, size: Int?)
    case uncompressed
    case corrupt(Corruption)
    case exec(command: String)
    case mark(String)

    public enum Injected: Sendable, Equatable {
        case text(String)
        case bytes([UInt8])
        /// A file's bytes, read when the rules are loaded (the parser does no IO): sent as text when
        /// they are UTF-8, else as binary.
        case file(path: String, contents: [UInt8]?)
    }

    public enum Corruption: String, Sendable { case utf8, mask, length }

    /// Whether the action ends the rule chain for the message.
    var isFinal: Bool {
        switch self {
        case .drop, .close, .abort: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .replace(let p, let w): "replace /\(ScalarLexer.slashesEscaped(p))/ \(JSONValue.string(w).serialized)"
        case .replaceBytes(let f, let t): "replace-bytes hex:\(Hex.encode(f)) hex:\(Hex.encode(t))"
        case .setJSON(let path, let value):
            if case .string(let text) = value { "set \(path) \(JSONValue.string(text).serialized)" } else { "set \(path) \(Self.bareJSON(value))" }
        case .deleteJSON(let path): "delete \(path)"
        case .drop: "drop"
        case .delay(let ms, let jitter): "delay \(ms)ms" + (jitter > 0 ? "±\(jitter)ms" : "")
        case .hold: "hold"
        case .inject(let side, let payload):
            switch payload {
            case .text(let t): "inject to=\(side.rawValue) text \(JSONValue.string(t).serialized)"
            case .bytes(let b): "inject to=\(side.rawValue) hex:\(Hex.encode(b))"
            case .file(let f, _): "inject to=\(side.rawValue) file \(JSONValue.string(f).serialized)"
            }
        case .close(let code, let reason, let side): "close \(code) \(JSONValue.string(reason).serialized) to=\(side.rawValue)"
        case .abort: "abort"
        case .duplicate: "duplicate"
        case .fragment(let count, let size): count.map { "fragment count=\($0)" } ?? "fragment size=\(size ?? 0)"
        case .uncompressed: "uncompressed"
        case .corrupt(let kind): "corrupt \(kind.rawValue)"
        case .exec(let command): "exec \(command)"
        case .mark(let tag): "mark \(tag)"
        }
    }
}

extension RuleAction {
    /// A JSON value written as one bare word of a rule: whitespace and ';' can only be inside its
    /// strings, where `\uXXXX` says the same thing without ending the word.
    static func bareJSON(_ value: JSONValue) -> String {
        var out = String.UnicodeScalarView()
        for scalar in value.serialized.unicodeScalars {
            if scalar.properties.isWhitespace || scalar == ";" {
                let hex = String(scalar.value, radix: 16)
                out.append(contentsOf: ("\\u" + String(repeating: "0", count: 4 - hex.count) + hex).unicodeScalars)
            } else {
                out.append(scalar)
            }
        }
        return String(out)
    }
}

/// Where a rule is wrong: its line and 1-based column, and what was expected there.
public struct RuleError: Error, CustomStringConvertible, Equatable {
    public let line: Int
    public let column: Int
    public let message: String
    /// The file, or "--rule".
    public let origin: String

    public var description: String { "\(origin):\(line):\(column): \(message)" }
}

extension RuleAction.Injected {
    /// What goes on the wire: text is a text message, bytes a binary one, a file text when its bytes
    /// are UTF-8. Nil for a file not read yet.
    public var message: (opcode: Opcode, payload: [UInt8])? {
        switch self {
        case .text(let text): (.text, Array(text.utf8))
        case .bytes(let bytes): (.binary, bytes)
        case .file(_, let contents): contents.map { (UTF8Validator.isValid($0) ? .text : .binary, $0) }
        }
    }
}

extension Rule {
    /// The rule with every `inject … file PATH` read through `read`, which gets the path as written
    /// and returns its bytes, or nil when it cannot be read (then this throws, naming rule and file).
    /// `origin` is the rules file, or "--rule", for the error.
    public func readingInjectFiles(origin: String, _ read: (String) -> [UInt8]?) throws -> Rule {
        var copy = self
        copy.actions = try actions.map { action in
            guard case .inject(let side, .file(let path, nil)) = action else { return action }
            guard let contents = read(path) else {
                throw RuleError(line: line, column: 1, message: "rule '\(name)': cannot read the file to inject, '\(path)'. Check the path (relative to the rules file) and that it is readable", origin: origin)
            }
            return .inject(to: side, payload: .file(path: path, contents: contents))
        }
        return copy
    }
}
