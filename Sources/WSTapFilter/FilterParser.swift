import WSTapDissect

/// Recursive descent over the filter grammar (see `Filter`). It reads Unicode scalars, not
/// characters: a combining mark after `(` or `=` would otherwise merge with it into one character and
/// hide the operator. Columns count scalars (for all but combining marks, what a user counts).
struct FilterParser {
    private let source: String
    private let chars: [Unicode.Scalar]
    private var index = 0
    private var lastValueWasQuoted = false

    init(_ source: String) {
        self.source = source
        chars = Array(source.unicodeScalars)
    }

    mutating func parseWhole() throws(FilterError) -> Node {
        skipSpace()
        guard index < chars.count else { throw error("empty filter: expected a field test like op=text, or a word to search for", at: 0) }
        let node = try parseOr()
        skipSpace()
        if index < chars.count {
            throw error(chars[index] == ")" ? "')' without a matching '('" : "expected 'or', 'and' or the end of the filter", at: index)
        }
        return node
    }

    // MARK: - Expressions

    private mutating func parseOr() throws(FilterError) -> Node {
        var nodes = [try parseAnd()]
        while keyword("or") { nodes.append(try parseAnd()) }
        return nodes.count == 1 ? nodes[0] : .or(nodes)
    }

    private mutating func parseAnd() throws(FilterError) -> Node {
        var nodes = [try parseUnary()]
        while true {
            skipSpace()
            guard index < chars.count, chars[index] != ")", !peekKeyword("or") else { break }
            _ = keyword("and")
            nodes.append(try parseUnary())
        }
        guard nodes.count > 1 else { return nodes[0] }
        // Cheap tests first: a regular expression or a JSON parse runs only if the rest matched.
        let ordered = nodes.enumerated().sorted { ($0.element.cost, $0.offset) < ($1.element.cost, $1.offset) }
        return .and(ordered.map(\.element))
    }

    private mutating func parseUnary() throws(FilterError) -> Node {
        skipSpace()
        guard index < chars.count else { throw error("expected a test after this", at: index) }
        if keyword("not") { return .not(try parseUnary()) }
        if chars[index] == "-" {
            index += 1
            guard index < chars.count, !chars[index].properties.isWhitespace else { throw error("expected a test right after '-'", at: index) }
            return .not(try parseUnary())
        }
        if chars[index] == "(" {
            let open = index
            index += 1
            skipSpace()
            guard index < chars.count, chars[index] != ")" else { throw error("empty parentheses", at: open) }
            let inner = try parseOr()
            skipSpace()
            guard index < chars.count, chars[index] == ")" else { throw error("'(' is not closed", at: open) }
            index += 1
            return inner
        }
        return .test(try parseTest())
    }

    // MARK: - Tests

    private mutating func parseTest() throws(FilterError) -> Test {
        let start = index
        if chars[index] == "\"" || chars[index] == "/" {
            // A quoted string or a regular expression on its own searches the text.
            return try bareSearch(at: start)
        }
        let name = readName()
        guard index < chars.count, let op = readOperator() else {
            // No operator: a field name alone is a mistake; any other word is searched for.
            if Field.named[name] != nil || name.hasPrefix("json.") || name.hasPrefix("json[") {
                throw error("'\(name)' needs an operator: = != < <= > >= ~ : or ?", at: index)
            }
            index = start
            return try bareSearch(at: start)
        }
        guard !name.isEmpty else { throw error("expected a field name before '\(op.rawValue)'", at: start) }
        let field = try resolveField(name, at: start)
        let opColumn = index - op.rawValue.count
        if op == .exists { return Test(field: field, op: op, operand: .none) }
        let operand = try readOperand(for: field, op: op, opColumn: opColumn)
        return Test(field: field, op: op, operand: operand)
    }

    /// `hello`, `"two words"` or `/re/`: the text contains it (or matches).
    private mutating func bareSearch(at start: Int) throws(FilterError) -> Test {
        if chars[index] == "/" { return Test(field: .text, op: .matches, operand: .regex(try readRegex())) }
        let word = chars[index] == "\"" ? try readQuoted() : readBare()
        guard !word.isEmpty else { throw error("expected a field test or a word to search for", at: start) }
        return Test(field: .text, op: .contains, operand: .text(word))
    }

    private func resolveField(_ name: String, at column: Int) throws(FilterError) -> Field {
        if let field = Field.named[name] { return field }
        if name == "json" || name.hasPrefix("json.") || name.hasPrefix("json[") {
            return .json(try jsonPath(String(name.dropFirst(4)), at: column + 4))
        }
        let known = Field.named.keys.sorted().joined(separator: ", ")
        throw error("unknown field '\(name)' (fields: \(known), json.<path>; quote a word to search for it)", at: column)
    }

    /// `json.a.b[0]` on its own, as rules name what they set or delete.
    static func jsonPath(parsing text: String) throws(FilterError) -> [JSONPathStep] {
        let parser = FilterParser(text)
        guard text.hasPrefix("json.") || text.hasPrefix("json[") else {
            throw parser.error("expected a JSON path like json.type or json.data[0].id", at: 0)
        }
        return try parser.jsonPath(String(text.dropFirst(4)), at: 4)
    }

    /// `.a.b[0]["odd key"]` after `json`.
    private func jsonPath(_ text: String, at column: Int) throws(FilterError) -> [JSONPathStep] {
        let c = Array(text)
        var steps: [JSONPathStep] = []
        var i = 0
        while i < c.count {
            if c[i] == "." {
                i += 1
                let from = i
                while i < c.count, c[i] != ".", c[i] != "[" { i += 1 }
                guard i > from else { throw error("empty name in the JSON path", at: column + from) }
                steps.append(.member(String(c[from..<i])))
            } else if c[i] == "[" {
                let from = i
                if i + 1 < c.count, c[i + 1] == "\"" {
                    // A JSON string: escapes as in JSON (what wstap prints for odd names).
                    var end = i + 2
                    while end < c.count, c[end] != "\"" { end += c[end] == "\\" ? 2 : 1 }
                    guard end + 1 < c.count, c[end + 1] == "]" else { throw error("'[' is not closed in the JSON path", at: column + from) }
                    guard case .string(let name)? = JSONValue.parse(Array(String(c[(i + 1)...end]).utf8)) else {
                        throw error("bad quoted name in the JSON path", at: column + from)
                    }
                    steps.append(.member(name))
                    i = end + 2
                    continue
                }
                guard let close = c[i...].firstIndex(of: "]"), let n = Int(String(c[(i + 1)..<close])), n >= 0 else {
                    throw error("expected an index or a quoted name in [...]", at: column + from)
                }
                steps.append(.index(n))
                i = close + 1
            } else {
                throw error("expected '.' or '[' in the JSON path", at: column + i)
            }
        }
        guard !steps.isEmpty else { throw error("json needs a path: json.type, json.data[0].id", at: column) }
        return steps
    }

    private mutating func readOperand(for field: Field, op: Operator, opColumn: Int) throws(FilterError) -> Operand {
        let at = index
        let ordering: Set<Operator> = [.less, .lessOrEqual, .greater, .greaterOrEqual]
        func refuse(_ what: String) -> FilterError { error("\(field.name) \(what)", at: opColumn) }
        if op == .matches {
            guard field.kind == .text || field.kind == .json else { throw refuse("cannot take '~': it is not text") }
            guard index < chars.count, chars[index] == "/" else { throw error("expected /regular expression/ after '~'", at: at) }
            return .regex(try readRegex())
        }
        let value = try readValue(at: at)
        switch field.kind {
        case .number:
            guard op != .contains else { throw refuse("cannot take ':': it is a number") }
            guard let number = ScalarLexer.size(value) else { throw error("expected a number (sizes may end in K or M), got '\(value)'", at: at) }
            return .number(number)
        case .boolean:
            guard op == .equal || op == .notEqual else { throw refuse("is true or false: use =, != or ?") }
            switch value.lowercased() {
            case "true", "yes", "1": return .boolean(true)
            case "false", "no", "0": return .boolean(false)
            default: throw error("expected true or false, got '\(value)'", at: at)
            }
        case .bytes:
            guard op == .equal || op == .notEqual || op == .contains else { throw refuse("takes =, != or : with hex bytes") }
            guard let bytes = ScalarLexer.hexBytes(value), !bytes.isEmpty else { throw error("expected hex bytes like 89504e47 or \"de ad\", got '\(value)'", at: at) }
            return .bytes(bytes)
        case .json:
            if ordering.contains(op) {
                guard let number = ScalarLexer.size(value) else { throw error("expected a number, got '\(value)'", at: at) }
                return .number(number)
            }
            if op == .contains { return .text(value) }
            // A quoted value is a string; unquoted, a JSON literal if it is one (3, true, null).
            if !lastValueWasQuoted, let literal = JSONValue.parse(Array(value.utf8)) { return .json(literal) }
            return .json(.string(value))
        case .text:
            guard !ordering.contains(op) || field == .op else { throw refuse("is text: use =, !=, ~ or :") }
            return try textOperand(field, value, op: op, at: at)
        }
    }

    /// Text fields with a fixed vocabulary are checked here, so a typo is an error, not an empty result.
    private func textOperand(_ field: Field, _ value: String, op: Operator, at: Int) throws(FilterError) -> Operand {
        switch field {
        case .from:
            guard ["client", "server"].contains(value) else { throw error("from is client or server, got '\(value)'", at: at) }
        case .type:
            let types = ["open", "http", "frame", "message", "diagnostic", "end", "gap", "change"]
            guard types.contains(value) else { throw error("type is one of \(types.joined(separator: ", ")), got '\(value)'", at: at) }
        case .op:
            guard op != .contains else { throw error("op takes =, != or a comparison with a number", at: at - 1) }
            let code = FilterSubject.opcodeNames[value] ?? Int(value).flatMap { (0..<16).contains($0) ? $0 : nil }
            guard let code else { throw error("op is text, binary, close, ping, pong, cont or a number 0-15, got '\(value)'", at: at) }
            return .number(Double(code))
        case .diag:
            if op == .equal || op == .notEqual, DiagnosticCode(rawValue: value) == nil {
                throw error("unknown diagnostic '\(value)' (codes are listed in docs/diagnostics.md)", at: at)
            }
        default:
            break
        }
        return .text(value)
    }

    // MARK: - Lexing

    private mutating func readValue(at: Int) throws(FilterError) -> String {
        guard index < chars.count, !chars[index].properties.isWhitespace, chars[index] != ")" else {
            throw error("expected a value after the operator", at: at)
        }
        lastValueWasQuoted = chars[index] == "\""
        return lastValueWasQuoted ? try readQuoted() : readBare()
    }

    /// Letters, digits, `_` and `.`, and `[...]` (JSON indexes and quoted names): a field name or path.
    private mutating func readName() -> String {
        let start = index
        var inBracket = false
        var inQuote = false
        while index < chars.count {
            let c = chars[index]
            if inQuote {
                if c == "\\" { index += 1 } else if c == "\"" { inQuote = false }
            } else if inBracket {
                if c == "]" { inBracket = false } else if c == "\"" { inQuote = true }
            } else if c == "[" {
                inBracket = true
            } else if !(c.properties.isAlphabetic || c.properties.numericType != nil || c == "_" || c == ".") {
                break
            }
            index += 1
        }
        index = min(index, chars.count)  // a backslash at the very end stepped past it
        return ScalarLexer.string(chars[start..<index])
    }

    private mutating func readOperator() -> Operator? {
        if index + 1 < chars.count {
            let two = ScalarLexer.string(chars[index...(index + 1)])
            for op in [Operator.notEqual, .lessOrEqual, .greaterOrEqual] where two == op.rawValue {
                index += 2
                return op
            }
        }
        guard let op = Operator(rawValue: String(chars[index])) else { return nil }
        index += 1
        return op
    }

    /// Up to whitespace or a closing parenthesis.
    private mutating func readBare() -> String {
        let start = index
        while index < chars.count, !chars[index].properties.isWhitespace, chars[index] != ")" { index += 1 }
        return ScalarLexer.string(chars[start..<index])
    }


    private mutating func readQuoted() throws(FilterError) -> String {
        do {
            return try ScalarLexer.quoted(chars, &index)
        } catch {
            throw self.error(error.message, at: error.position)
        }
    }

    /// `/.../` with an optional `i` (ignore case); `\/` is a slash inside.
    private mutating func readRegex() throws(FilterError) -> FilterRegex {
        let open = index
        let pattern: String
        do {
            pattern = try ScalarLexer.regex(chars, &index)
        } catch {
            throw self.error(error.message, at: error.position)
        }
        var ignoreCase = false
        while index < chars.count, chars[index].properties.isAlphabetic {
            guard chars[index] == "i" else { throw error("unknown regular expression flag '\(chars[index])' (only i)", at: index) }
            ignoreCase = true
            index += 1
        }
        do {
            return try FilterRegex(pattern, ignoreCase: ignoreCase)
        } catch {
            throw self.error("bad regular expression: \(error)", at: open + 1)
        }
    }

    private mutating func skipSpace() {
        while index < chars.count, chars[index].properties.isWhitespace { index += 1 }
    }

    private func peekKeyword(_ word: String) -> Bool {
        let w = Array(word.unicodeScalars)
        guard index + w.count <= chars.count, Array(chars[index..<(index + w.count)]) == w else { return false }
        let after = index + w.count
        return after == chars.count || chars[after].properties.isWhitespace || chars[after] == "("
    }

    private mutating func keyword(_ word: String) -> Bool {
        skipSpace()
        guard peekKeyword(word) else { return false }
        index += word.unicodeScalars.count
        return true
    }

    private func error(_ message: String, at position: Int) -> FilterError {
        FilterError(column: position + 1, message: message, source: source)
    }
}
