import WSTapDissect
import WSTapFilter
import WSTapWire

/// What the rules decided for one message: its payload after the edits, and everything else they asked
/// for, in order. Sans-IO: the relay (or `wstap rules test`) carries it out.
public struct RuleOutcome: Sendable {
    /// The payload after every edit (the message's own when nothing edited it).
    public var payload: [UInt8]
    /// An action changed the payload.
    public var edited = false
    public var dropped = false
    /// Each rule that matched (and passed its probability), with the actions it applied and the
    /// payload before and after them.
    public var applied: [Applied] = []

    public struct Applied: Sendable {
        public var rule: String
        public var actions: [RuleAction]
        public var before: [UInt8]
        public var after: [UInt8]
    }
    /// Actions that are not edits of the payload (delay, hold, inject, close, …), in order.
    public var effects: [RuleAction] = []
    /// Edits that could not apply, and why ("not JSON", "not text").
    public var skipped: [(rule: String, action: RuleAction, reason: String)] = []
    /// What else the change record should say (what an exec hook answered, and when).
    public var notes: [String] = []

    public init(payload: [UInt8]) { self.payload = payload }

    /// Something would differ from relaying the message as it came.
    public var changesTraffic: Bool { edited || dropped || effects.contains { if case .mark = $0 { false } else { true } } }
}

/// Applies rules to messages (see `Rule` for the order). Probabilities draw from the generator the
/// caller passes, so tests and `rules test` are reproducible.
public struct RuleEngine: Sendable {
    public let rules: [Rule]
    /// Each `replace` pattern compiled once, not per message; a pattern that is plain text (and a
    /// replacement without `$`) is replaced as bytes, which is far cheaper than a regex engine.
    private let patterns: [String: Pattern]

    struct Pattern: @unchecked Sendable {  // Regex is immutable once built
        /// Set when the pattern has no regex metacharacters: its UTF-8 bytes.
        var literal: [UInt8]?
        /// Nil when the pattern does not compile.
        var regex: Regex<AnyRegexOutput>?
    }

    public init(rules: [Rule]) {
        self.rules = rules
        var patterns: [String: Pattern] = [:]
        for rule in rules {
            for case .replace(let pattern, _) in rule.actions where patterns[pattern] == nil {
                let plain = !pattern.isEmpty && !pattern.contains(where: { "\\^$.|?*+()[]{}".contains($0) })
                patterns[pattern] = Pattern(literal: plain ? Array(pattern.utf8) : nil, regex: try? Regex(pattern))
            }
        }
        self.patterns = patterns
    }

    public func apply(to record: TapRecord, connection: ConnectionFacts?, random: () -> Double) -> RuleOutcome {
        guard case .message(var message) = record.body else { return RuleOutcome(payload: []) }
        var outcome = RuleOutcome(payload: message.payload)
        var current = record
        let control = message.opcode.isControl
        // One subject for every condition while no rule has edited the message: its text and JSON
        // are worked out once, not once per rule.
        var subject = FilterSubject(record: current, connection: connection)
        for rule in rules {
            // Pings, pongs and closes only for rules that name them (op=ping, code=1000): `from=server`
            // means the server's messages, not its keep-alives.
            if control && !(rule.condition?.namesControlFields ?? false) { continue }
            if let condition = rule.condition, !condition.matches(&subject) { continue }
            if let p = rule.probability, random() >= p { continue }
            var appliedActions: [RuleAction] = []
            let before = outcome.payload
            var final = false
            for action in rule.actions {
                appliedActions.append(action)
                switch edit(action, payload: outcome.payload, opcode: message.opcode) {
                case .changed(let payload):
                    outcome.payload = payload
                    outcome.edited = true
                case .unchanged:
                    break
                case .skipped(let reason):
                    outcome.skipped.append((rule.name, action, reason))
                case .notAnEdit:
                    if case .drop = action { outcome.dropped = true } else { outcome.effects.append(action) }
                }
                if action.isFinal { final = true; break }
            }
            outcome.applied.append(RuleOutcome.Applied(rule: rule.name, actions: appliedActions, before: before, after: outcome.payload))
            if final { break }
            // Later rules see the message as this one left it.
            if outcome.payload != message.payload {
                message.payload = outcome.payload
                message.length = UInt64(outcome.payload.count)
                message.textValidity = .unchecked
                current.body = .message(message)
                subject = FilterSubject(record: current, connection: connection)
            }
        }
        return outcome
    }

    enum Edit {
        case changed([UInt8])
        case unchanged
        case skipped(String)
        case notAnEdit
    }

    func edit(_ action: RuleAction, payload: [UInt8], opcode: Opcode) -> Edit {
        switch action {
        case .replace(let pattern, let template):
            guard opcode == .text, UTF8Validator.isValid(payload) else { return .skipped("not a text message") }
            let compiled = patterns[pattern] ?? Pattern(literal: nil, regex: try? Regex(pattern))
            if let literal = compiled.literal, !template.contains("$") {
                // UTF-8 is self-synchronising: a valid sequence only matches at character boundaries.
                let replaced = Self.replace(payload, literal, Array(template.utf8))
                return replaced == payload ? .unchanged : .changed(replaced)
            }
            guard let regex = compiled.regex else { return .skipped("bad regular expression") }
            return Self.edit(payload, regex, template)
        case .replaceBytes(let from, let to):
            let replaced = Self.replace(payload, from, to)
            return replaced == payload ? .unchanged : .changed(replaced)
        case .setJSON(let path, let value):
            guard opcode == .text || opcode == .binary, let root = JSONValue.parse(payload) else { return .skipped("not JSON") }
            guard let jsonPath = try? JSONPath(parsing: path), let updated = jsonPath.setting(value, in: root) else {
                return .skipped("\(path) goes through something that is not an object or array")
            }
            return updated == root ? .unchanged : .changed(Array(updated.serialized.utf8))
        case .deleteJSON(let path):
            guard opcode == .text || opcode == .binary, let root = JSONValue.parse(payload) else { return .skipped("not JSON") }
            guard let jsonPath = try? JSONPath(parsing: path), let updated = jsonPath.removing(from: root) else { return .unchanged }
            return .changed(Array(updated.serialized.utf8))
        default:
            return .notAnEdit
        }
    }

    static func edit(_ payload: [UInt8], _ regex: Regex<AnyRegexOutput>, _ template: String) -> Edit {
        let text = String(decoding: payload, as: UTF8.self)
        let replaced = replace(text, regex, template)
        return replaced == text ? .unchanged : .changed(Array(replaced.utf8))
    }

    /// Every match, with `$0`…`$9` for groups and `$$` for a dollar sign.
    static func replace(_ text: String, _ regex: Regex<AnyRegexOutput>, _ template: String) -> String {
        var out = ""
        var position = text.startIndex
        for match in text.matches(of: regex) {
            out += text[position..<match.range.lowerBound]
            var chars = Array(template)
            var i = 0
            while i < chars.count {
                if chars[i] == "$", i + 1 < chars.count {
                    if chars[i + 1] == "$" { out.append("$"); i += 2; continue }
                    if let group = chars[i + 1].wholeNumberValue {
                        if group < match.output.count, let captured = match.output[group].substring { out += captured }
                        i += 2
                        continue
                    }
                }
                out.append(chars[i])
                i += 1
            }
            chars.removeAll()
            position = match.range.upperBound
            // An empty match must not repeat at the same place.
            if match.range.isEmpty && position < text.endIndex {
                out.append(text[position])
                position = text.index(after: position)
            }
        }
        out += text[position...]
        return out
    }

    static func replace(_ bytes: [UInt8], _ from: [UInt8], _ to: [UInt8]) -> [UInt8] {
        guard !from.isEmpty, bytes.count >= from.count else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if i + from.count <= bytes.count, bytes[i] == from[0], bytes[i..<(i + from.count)].elementsEqual(from) {
                out += to
                i += from.count
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return out
    }
}
