#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
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
        public private(set) var actions: [RuleAction]
        /// `actions` as the rules language writes them (made once per rule, not per message).
        public private(set) var descriptions: ArraySlice<String>

        init(rule: String, actions: [RuleAction], descriptions: ArraySlice<String>, before: [UInt8], after: [UInt8]) {
            self.rule = rule
            self.actions = actions
            self.descriptions = descriptions
            self.before = before
            self.after = after
        }

        /// Actions the rule's exec hook answered with, after the rule's own.
        public mutating func append(_ more: [RuleAction]) {
            actions += more
            descriptions += more.map(\.description)
        }
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
public struct RuleEngine: @unchecked Sendable {  // `walk` only refers to what `matchers` owns
    public let rules: [Rule]
    /// What each rule's test needs, one reference per rule: a proxy tests every rule on every message,
    /// and walking `rules` itself would copy each `Rule` (its strings, condition and actions) every time.
    private let matchers: [Matcher]
    /// `matchers` unretained: the engine owns them and outlives every `apply`, so testing a rule need
    /// not retain and release it.
    private let walk: [Unmanaged<Matcher>]
    private final class Matcher: Sendable {
        /// Owns the condition that `test` borrows.
        let condition: Filter?
        let test: UnretainedFilter?
        /// The rule acts on pings, pongs and closes too (its condition names the opcode or a close field).
        let controlToo: Bool
        let probability: Double?
        /// For each of the rule's actions, its `replace` compiled (nil for other actions).
        let replacements: [Replacement?]
        /// Each action as the rules language writes it, for change records.
        let descriptions: [String]

        init(_ rule: Rule) {
            condition = rule.condition
            test = rule.condition?.unretained
            controlToo = rule.condition?.namesControlFields ?? false
            probability = rule.probability
            descriptions = rule.actions.map(\.description)
            replacements = rule.actions.map { action in
                guard case .replace(let pattern, let template) = action else { return nil }
                return Replacement(pattern: pattern, template: template)
            }
        }
    }

    /// A `replace` compiled once, not per message; a pattern that is plain text with a replacement
    /// without `$` is replaced as bytes, far cheaper than a regex engine. A class: `Regex` has a
    /// resilient layout, which would make every copy of a struct holding it a runtime call.
    final class Replacement: @unchecked Sendable {  // immutable once built; Regex is immutable
        /// Set when the pattern has no regex metacharacters: its UTF-8 bytes.
        let literal: [UInt8]?
        /// Set with `literal` when the template has no `$`: what replaces each occurrence.
        let literalTemplate: [UInt8]?
        /// Nil when the pattern does not compile.
        let regex: Regex<AnyRegexOutput>?

        init(pattern: String, template: String) {
            let plain = !pattern.isEmpty && !pattern.contains(where: { "\\^$.|?*+()[]{}".contains($0) })
            literal = plain ? Array(pattern.utf8) : nil
            literalTemplate = plain && !template.contains("$") ? Array(template.utf8) : nil
            regex = try? Regex(pattern)
        }
    }

    public init(rules: [Rule]) {
        self.rules = rules
        matchers = rules.map(Matcher.init)
        walk = matchers.map { Unmanaged.passUnretained($0) }
    }

    public func apply(to record: TapRecord, connection: ConnectionFacts?, random: () -> Double) -> RuleOutcome {
        guard case .message(let message) = record.body else { return RuleOutcome(payload: []) }
        return apply(to: message, connectionID: record.connection, connection: connection, random: random)
    }

    /// The same for a message not wrapped in a record: what a proxy does for every message it relays.
    public func apply(to message: MessageRecord, connectionID: UInt64, connection: ConnectionFacts?, random: () -> Double) -> RuleOutcome {
        var message = message
        var outcome = RuleOutcome(payload: message.payload)
        let control = message.opcode.isControl
        // One subject for every condition while no rule has edited the message: its text and JSON
        // are worked out once, not once per rule.
        var subject = FilterSubject(message: message, connectionID: connectionID, connection: connection)
        for index in matchers.indices {
            // Pings, pongs and closes only for rules that name them (op=ping, code=1000): `from=server`
            // means the server's messages, not its keep-alives.
            let applies = walk[index]._withUnsafeGuaranteedRef { matcher in
                if control && !matcher.controlToo { return false }
                if let test = matcher.test, !test.matches(&subject) { return false }
                if let p = matcher.probability, random() >= p { return false }
                return true
            }
            guard applies else { continue }
            let rule = rules[index]
            var appliedActions: [RuleAction] = []
            let before = outcome.payload
            var final = false
            let replacements = matchers[index].replacements
            for (position, action) in rule.actions.enumerated() {
                appliedActions.append(action)
                switch edit(action, replacement: replacements[position], payload: outcome.payload, opcode: message.opcode,
                            validText: !outcome.edited && message.textValidity == .valid) {
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
            outcome.applied.append(RuleOutcome.Applied(rule: rule.name, actions: appliedActions, descriptions: matchers[index].descriptions.prefix(appliedActions.count),
                                                       before: before, after: outcome.payload))
            if final { break }
            // Later rules see the message as this one left it.
            if index < matchers.count - 1 && outcome.payload != message.payload {
                message.payload = outcome.payload
                message.length = UInt64(outcome.payload.count)
                message.textValidity = .unchecked
                subject = FilterSubject(message: message, connectionID: connectionID, connection: connection)
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

    /// - Parameter validText: the payload is known to be UTF-8 (the relay checked it on the way in).
    /// - Parameter replacement: the action compiled, for `replace`.
    func edit(_ action: RuleAction, replacement: Replacement?, payload: [UInt8], opcode: Opcode, validText: Bool = false) -> Edit {
        switch action {
        case .replace(let pattern, let template):
            guard opcode == .text, validText || UTF8Validator.isValid(payload) else { return .skipped("not a text message") }
            let compiled = replacement ?? Replacement(pattern: pattern, template: template)
            if let literal = compiled.literal, let with = compiled.literalTemplate {
                // UTF-8 is self-synchronising: a valid sequence only matches at character boundaries.
                return Self.replace(payload, literal, with).map(Edit.changed) ?? .unchanged
            }
            guard let regex = compiled.regex else { return .skipped("bad regular expression") }
            return Self.edit(payload, regex, template)
        case .replaceBytes(let from, let to):
            return Self.replace(payload, from, to).map(Edit.changed) ?? .unchanged
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

    /// Every occurrence of `from` replaced by `to`; nil when nothing changes (no occurrence, or `to` is `from`).
    static func replace(_ bytes: [UInt8], _ from: [UInt8], _ to: [UInt8]) -> [UInt8]? {
        guard !from.isEmpty, bytes.count >= from.count, from != to else { return nil }
        return bytes.withUnsafeBytes { haystack -> [UInt8]? in
            from.withUnsafeBytes { needle -> [UInt8]? in
                // memchr for each candidate's first byte, memcmp for the rest; the output is made at the first match.
                var out: [UInt8]?
                var copied = 0  // bytes of `haystack` already in `out`
                var at = 0
                let last = haystack.count - needle.count
                while at <= last {
                    guard let hit = memchr(haystack.baseAddress! + at, Int32(needle[0]), last - at + 1) else { break }
                    let position = UnsafeRawPointer(hit) - haystack.baseAddress!
                    guard memcmp(hit, needle.baseAddress!, needle.count) == 0 else { at = position + 1; continue }
                    if out == nil { out = []; out!.reserveCapacity(bytes.count + max(0, to.count - from.count) * 4) }
                    out!.append(contentsOf: haystack[copied..<position])
                    out!.append(contentsOf: to)
                    at = position + needle.count
                    copied = at
                }
                guard var result = out else { return nil }
                result.append(contentsOf: haystack[copied...])
                return result
            }
        }
    }
}
