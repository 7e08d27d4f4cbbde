import WSTapFilter

/// Reads rules: `--rule TEXT` (one rule) and `--rules FILE` (one rule a line, `#` comments, blank lines).
public enum RuleParser {
    public static func parse(_ text: String, line: Int = 1, origin: String = "--rule") throws(RuleError) -> Rule {
        var scanner = RuleScanner(text: text, line: line, origin: origin)
        return try scanner.rule()
    }

    public static func parseFile(_ text: String, origin: String) throws(RuleError) -> [Rule] {
        var rules: [Rule] = []
        // "\r\n" is one Character in Swift: split on it as well as on "\n".
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let line = String(raw)
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            rules.append(try parse(line, line: index + 1, origin: origin))
        }
        return rules
    }
}

/// One rule's text, read as Unicode scalars (columns count them, as the filter's do).
struct RuleScanner {
    let text: String
    let chars: [Unicode.Scalar]
    let line: Int
    let origin: String
    var index = 0

    init(text: String, line: Int, origin: String) {
        self.text = text
        chars = Array(text.unicodeScalars)
        self.line = line
        self.origin = origin
    }

    mutating func rule() throws(RuleError) -> Rule {
        skipSpace()
        var name: String?
        var probability: Double?
        if peek("[") {
            let open = index
            index += 1
            guard let close = chars[index...].firstIndex(of: "]") else { throw error("'[' is not closed", at: open) }
            var header = RuleScanner(text: Self.string(chars[index..<close]), line: line, origin: origin)
            header.index = 0
            let base = index
            while true {
                header.skipSpace()
                guard header.index < header.chars.count else { break }
                let at = base + header.index
                let word = header.bare()
                if word.hasPrefix("p=") {
                    guard let p = Double(word.dropFirst(2)), p > 0, p <= 1 else {
                        throw error("p= is a probability above 0 and at most 1, like p=0.05", at: at)
                    }
                    probability = p
                } else if name == nil {
                    name = word
                } else {
                    throw error("expected p=N after the rule's name, got '\(word)'", at: at)
                }
            }
            index = close + 1
        }
        let arrow = try findArrow()
        let conditionStart = index
        let conditionText = Self.string(chars[index..<arrow]).trimmed
        var condition: Filter?
        if conditionText.isEmpty {
            throw error("expected a condition before '=>' (a filter, or * for every message)", at: index)
        } else if conditionText != "*" {
            do {
                condition = try Filter(parsing: Self.string(chars[conditionStart..<arrow]))
            } catch {
                throw RuleError(line: line, column: conditionStart + error.column, message: error.message, origin: origin)
            }
        }
        index = arrow + 2
        var actions: [RuleAction] = []
        while true {
            skipSpace()
            guard index < chars.count else {
                if actions.isEmpty { throw error("expected an action after '=>' (drop, replace /re/ \"text\", set json.path VALUE, …)", at: index) }
                break
            }
            actions.append(try action())
            skipSpace()
            if peek(";") {
                index += 1
                skipSpace()
                if index >= chars.count { throw error("expected an action after ';'", at: index) }
                continue
            }
            guard index >= chars.count else { throw error("expected ';' between actions", at: index) }
            break
        }
        return Rule(name: name ?? "line \(line)", probability: probability, condition: condition, actions: actions, line: line, source: text)
    }

    /// The first `=>` outside quotes and regular expressions.
    private func findArrow() throws(RuleError) -> Int {
        var i = index
        var quoted = false
        var regex = false
        while i < chars.count {
            let c = chars[i]
            if quoted {
                if c == "\\" { i += 2; continue }
                if c == "\"" { quoted = false }
            } else if regex {
                if c == "\\" { i += 2; continue }
                if c == "/" { regex = false }
            } else if c == "\"" {
                quoted = true
            } else if c == "/" && (i == 0 || chars[i - 1] == "~" || chars[i - 1] == " " || chars[i - 1] == "(") {
                regex = true
            } else if c == "=" && i + 1 < chars.count && chars[i + 1] == ">" {
                return i
            }
            i += 1
        }
        throw error("expected '=>' between the condition and the actions: WHEN => ACTION", at: chars.count)
    }

    // MARK: - Actions

    private mutating func action() throws(RuleError) -> RuleAction {
        let at = index
        let verb = bare()
        switch verb {
        case "drop": return .drop
        case "hold": return .hold
        case "abort": return .abort
        case "duplicate": return .duplicate
        case "uncompressed": return .uncompressed
        case "replace":
            skipSpace()
            guard peek("/") else { throw error("replace takes /regular expression/ then the text to put in: replace /a(.)/ \"b$1\"", at: index) }
            let patternAt = index
            let pattern = try regex()
            do {
                _ = try Regex(pattern)
            } catch {
                throw self.error("bad regular expression: \(error)", at: patternAt + 1)
            }
            return .replace(pattern: pattern, with: try value(what: "the text to put in"))
        case "replace-bytes":
            let from = try hex(what: "the bytes to find")
            guard !from.isEmpty else { throw error("replace-bytes needs bytes to find", at: at) }
            return .replaceBytes(from: from, to: try hex(what: "the bytes to put in"))
        case "set":
            let path = try jsonPath()
            skipSpace()
            let valueAt = index
            let quoted = peek("\"")
            let text = try value(what: "a value (a JSON literal like 3, true, null, or a quoted string)")
            if quoted { return .setJSON(path: path, value: .string(text)) }
            guard let literal = JSONValue.parse(Array(text.utf8)) else {
                throw error("'\(text)' is not a JSON value; quote text: \"\(text)\"", at: valueAt)
            }
            return .setJSON(path: path, value: literal)
        case "delete":
            return .deleteJSON(path: try jsonPath())
        case "delay":
            skipSpace()
            let valueAt = index
            let text = bare()
            let parts = text.split(separator: "±", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let halves = parts.count == 2 ? parts : text.split(separator: "+-", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard let first = halves.first, let ms = Self.milliseconds(first) else {
                throw error("delay takes a time like 200ms, 1.5s or 200ms±50ms", at: valueAt)
            }
            let jitter = halves.count > 1 ? Self.milliseconds(halves[1]) : 0
            guard let jitter, jitter <= ms else { throw error("the jitter after ± is a time no longer than the delay", at: valueAt) }
            return .delay(milliseconds: ms, jitter: jitter)
        case "inject":
            skipSpace()
            let sideAt = index
            let side = try sideOption(required: true, allowBoth: false, at: sideAt)
            skipSpace()
            let kindAt = index
            if peek("h"), Self.string(chars[index...]).hasPrefix("hex:") {
                return .inject(to: side, payload: .bytes(try hex(what: "the bytes to inject")))
            }
            switch bare() {
            case "text": return .inject(to: side, payload: .text(try value(what: "the text to inject")))
            case "file": return .inject(to: side, payload: .file(path: try value(what: "a file name"), contents: nil))
            default: throw error("inject takes text \"...\", hex:… or file PATH after to=", at: kindAt)
            }
        case "close":
            skipSpace()
            let codeAt = index
            guard let code = UInt16(bare()), (1000...4999).contains(code) else {
                throw error("close takes a close code from 1000 to 4999, then an optional \"reason\" and to=client|server|both", at: codeAt)
            }
            skipSpace()
            var reason = ""
            if peek("\"") { reason = try quoted() }
            guard reason.utf8.count <= 123 else { throw error("a close reason holds at most 123 bytes (RFC 6455 §5.5)", at: codeAt) }
            skipSpace()
            let side = peek("t") ? try sideOption(required: false, allowBoth: true, at: index) : .both
            return .close(code: code, reason: reason, to: side)
        case "fragment":
            skipSpace()
            let optionAt = index
            let option = bare()
            if option.hasPrefix("count="), let n = Int(option.dropFirst(6)), n >= 1, n <= 10_000 { return .fragment(count: n, size: nil) }
            if option.hasPrefix("size="), let n = Self.size(String(option.dropFirst(5))), n >= 1 { return .fragment(count: nil, size: n) }
            throw error("fragment takes count=N (1 to 10000) or size=BYTES (K and M allowed)", at: optionAt)
        case "corrupt":
            skipSpace()
            let kindAt = index
            guard let kind = RuleAction.Corruption(rawValue: bare()) else { throw error("corrupt takes utf8, mask or length", at: kindAt) }
            return .corrupt(kind)
        case "exec":
            skipSpace()
            let start = index
            while index < chars.count, chars[index] != ";" { index += 1 }
            let command = Self.string(chars[start..<index]).trimmed
            guard !command.isEmpty else { throw error("exec takes a command", at: start) }
            return .exec(command: command)
        case "mark":
            skipSpace()
            let tagAt = index
            let tag = bare()
            guard !tag.isEmpty else { throw error("mark takes a tag", at: tagAt) }
            return .mark(tag)
        case "":
            throw error("expected an action", at: at)
        default:
            throw error("unknown action '\(verb)' (drop, delay, hold, replace, replace-bytes, set, delete, inject, close, abort, duplicate, fragment, uncompressed, corrupt, exec, mark)", at: at)
        }
    }

    private mutating func sideOption(required: Bool, allowBoth: Bool, at: Int) throws(RuleError) -> Side {
        let word = bare()
        let choices = allowBoth ? "client, server or both" : "client or server"
        guard word.hasPrefix("to="), let side = Side(rawValue: String(word.dropFirst(3))), allowBoth || side != .both else {
            throw error("expected to=\(allowBoth ? "client|server|both" : "client|server") (\(choices))", at: at)
        }
        return side
    }

    private mutating func jsonPath() throws(RuleError) -> String {
        skipSpace()
        let at = index
        // Up to whitespace or ';' outside `["quoted names"]`, which may hold both.
        var inQuote = false
        while index < chars.count {
            let c = chars[index]
            if inQuote {
                if c == "\\" { index += 1 } else if c == "\"" { inQuote = false }
            } else if c == "\"" {
                inQuote = true
            } else if c.properties.isWhitespace || c == ";" {
                break
            }
            index += 1
        }
        index = min(index, chars.count)
        let text = Self.string(chars[at..<index])
        do {
            return try JSONPath(parsing: text).description
        } catch {
            throw RuleError(line: line, column: at + error.column, message: error.message, origin: origin)
        }
    }

    private mutating func hex(what: String) throws(RuleError) -> [UInt8] {
        skipSpace()
        let at = index
        let word = bare()
        guard word.hasPrefix("hex:"), let bytes = ScalarLexer.hexBytes(String(word.dropFirst(4))) else {
            throw error("expected \(what) as hex:0a1b2c", at: at)
        }
        return bytes
    }

    /// A quoted string, or a bare word.
    private mutating func value(what: String) throws(RuleError) -> String {
        skipSpace()
        guard index < chars.count, chars[index] != ";" else { throw error("expected \(what)", at: index) }
        return peek("\"") ? try quoted() : bare()
    }

    // MARK: - Lexing

    private func peek(_ c: Unicode.Scalar) -> Bool { index < chars.count && chars[index] == c }

    mutating func skipSpace() {
        while index < chars.count, chars[index].properties.isWhitespace { index += 1 }
    }

    /// Up to whitespace or ';'.
    mutating func bare() -> String {
        let start = index
        while index < chars.count, !chars[index].properties.isWhitespace, chars[index] != ";" { index += 1 }
        return Self.string(chars[start..<index])
    }

    private mutating func quoted() throws(RuleError) -> String {
        do {
            return try ScalarLexer.quoted(chars, &index)
        } catch {
            throw self.error(error.message, at: error.position)
        }
    }

    private mutating func regex() throws(RuleError) -> String {
        do {
            return try ScalarLexer.regex(chars, &index)
        } catch {
            throw self.error(error.message, at: error.position)
        }
    }

    func error(_ message: String, at position: Int) -> RuleError {
        RuleError(line: line, column: position + 1, message: message, origin: origin)
    }

    static func string(_ scalars: ArraySlice<Unicode.Scalar>) -> String { ScalarLexer.string(scalars) }

    static func milliseconds(_ text: String) -> Int? {
        if text.hasSuffix("ms"), let n = Double(text.dropLast(2)), n >= 0, n <= 86_400_000 { return Int(n) }
        if text.hasSuffix("s"), let n = Double(text.dropLast()), n >= 0, n <= 86_400 { return Int(n * 1000) }
        return nil
    }

    static func size(_ text: String) -> Int? {
        ScalarLexer.size(text).flatMap { $0.rounded() == $0 && $0 >= 0 && $0 < 1e15 ? Int($0) : nil }
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s = s.dropFirst() }
        while let c = s.last, c.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
