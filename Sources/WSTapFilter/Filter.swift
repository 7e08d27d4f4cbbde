import WSTapDissect
import WSTapWire

/// A filter over records, in the grammar every surface shares (`--filter`, rule conditions, holds,
/// replay and mock selection, the UI's search box):
///
///     from=client op=text text~/"op":"subscribe"/
///     from=server json.type="tick" len>4K
///     url~/chat/ -op=ping -op=pong
///
/// Field names follow the JSON Lines schema. Operators: `=` `!=` `<` `<=` `>` `>=`, `~` (regular
/// expression), `:` (contains), `?` (exists / is true). Juxtaposition and `and` are AND; `or`; `not`
/// or a leading `-`; parentheses. A bare word or quoted string means `text:` it. Sizes take K and M
/// (1024 and 1024²). Parsed once (`Filter(parsing:)`); `matches` is then cheap: within an AND, checks
/// that need no payload work run before regular expressions and JSON.
public struct Filter: Sendable, CustomStringConvertible {
    public let source: String
    let root: Node
    /// The filter tests the opcode or a close's code or reason: it is about control frames too.
    /// Rules act on pings, pongs and closes only when their condition says so.
    public let namesControlFields: Bool

    public init(parsing source: String) throws(FilterError) {
        self.source = source
        var parser = FilterParser(source)
        root = try parser.parseWhole()
        namesControlFields = root.mentions { $0 == .op || $0 == .code || $0 == .reason }
    }

    public var description: String { source }

    /// Whether `record` matches; `connection` supplies the connection's own fields (url, host, path,
    /// sub) to records other than its `open`.
    public func matches(_ record: TapRecord, connection: ConnectionFacts? = nil) -> Bool {
        var subject = FilterSubject(record: record, connection: connection)
        return root.evaluate(&subject)
    }

    /// The filter without its reference counts, for a caller that keeps the filter itself alive
    /// for as long as it uses this and tests several filters over one subject, whose text and JSON are
    /// then worked out once for all of them (the rule engine, which tests every rule on every message).
    public var unretained: UnretainedFilter { UnretainedFilter(root: Unmanaged.passUnretained(root)) }
}

/// A filter's tree, borrowed: testing it retains nothing. Valid while its `Filter` is kept.
public struct UnretainedFilter: @unchecked Sendable {
    let root: Unmanaged<Node>

    public func matches(_ subject: inout FilterSubject) -> Bool {
        root._withUnsafeGuaranteedRef { $0.evaluate(&subject) }
    }
}

/// Where a filter is wrong: the 1-based column in the source and what was expected there.
public struct FilterError: Error, CustomStringConvertible, Equatable {
    public let column: Int
    public let message: String
    public let source: String

    /// One line: the message, the column and the filter.
    public var description: String { "\(message) at column \(column): \(source)" }

    /// The filter and a caret under the column, for surfaces with room for two lines.
    public var pointer: String { "\(source)\n\(String(repeating: " ", count: max(0, column - 1)))^" }
}

/// The fields a connection's `open` record settles, for the records after it.
public struct ConnectionFacts: Sendable, Equatable {
    public var url: String
    public var subprotocol: String?

    public init(url: String, subprotocol: String?) {
        self.url = url
        self.subprotocol = subprotocol
    }

    public init(_ open: OpenRecord) { self.init(url: open.url, subprotocol: open.subprotocol) }

    /// host[:port] of the URL.
    public var host: String {
        guard let scheme = url.firstRange(of: "://") else { return "" }
        return String(url[scheme.upperBound...].prefix { $0 != "/" && $0 != "?" })
    }

    /// The URL's path, without the query.
    public var path: String {
        guard let scheme = url.firstRange(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
        let path = rest[slash...].prefix { $0 != "?" }
        return path.isEmpty ? "/" : String(path)
    }
}

// MARK: - Syntax tree

/// A node of the syntax tree. A class with one shape for every kind, so that evaluating walks
/// references without copying arrays and enum payloads out of boxes for each message.
final class Node: @unchecked Sendable {  // immutable once built; `walk` only refers to what `children` and `test` own
    enum Kind { case and, or, not, test }

    let kind: Kind
    /// The operands of `and` and `or`, or the one node `not` negates.
    let children: [Node]
    /// Set for `test`.
    let test: Test?
    /// `children` and `test` unretained, for `evaluate`: the tree is immutable and outlives every
    /// evaluation, so walking it need not retain and release each node it visits (a proxy evaluates
    /// every rule's condition on every message; that counting was most of the cost of a rule that
    /// matches nothing).
    private let walk: [Unmanaged<Node>]
    private let leaf: Unmanaged<Test>?

    private init(_ kind: Kind, children: [Node] = [], test: Test? = nil) {
        self.kind = kind
        self.children = children
        self.test = test
        walk = children.map { Unmanaged.passUnretained($0) }
        leaf = test.map { Unmanaged.passUnretained($0) }
    }

    static func and(_ nodes: [Node]) -> Node { Node(.and, children: nodes) }
    static func or(_ nodes: [Node]) -> Node { Node(.or, children: nodes) }
    static func not(_ node: Node) -> Node { Node(.not, children: [node]) }
    static func test(_ test: Test) -> Node { Node(.test, test: test) }

    func evaluate(_ subject: inout FilterSubject) -> Bool {
        switch kind {
        case .test:
            return leaf.unsafelyUnwrapped._withUnsafeGuaranteedRef { $0.evaluate(&subject) }
        case .not:
            return !walk[0]._withUnsafeGuaranteedRef { $0.evaluate(&subject) }
        case .and:
            for child in walk where !child._withUnsafeGuaranteedRef({ $0.evaluate(&subject) }) { return false }
            return true
        case .or:
            for child in walk where child._withUnsafeGuaranteedRef({ $0.evaluate(&subject) }) { return true }
            return false
        }
    }

    func mentions(_ field: (Field) -> Bool) -> Bool {
        if let test { return field(test.field) }
        return children.contains { $0.mentions(field) }
    }

    /// Relative cost of evaluating: ANDs run their cheap children first.
    var cost: Int {
        if let test { return test.cost }
        return children.reduce(0) { $0 + $1.cost }
    }
}

enum Field: Sendable, Equatable {
    case type, from, op, len, wire, frames, compressed, masked, fin, text, bytes, code, reason, conn, url, host, path, sub, diag
    case json([JSONPathStep])

    static let named: [String: Field] = [
        "type": .type, "from": .from, "op": .op, "len": .len, "wire": .wire, "frames": .frames, "compressed": .compressed,
        "masked": .masked, "fin": .fin, "text": .text, "bytes": .bytes, "code": .code, "reason": .reason, "conn": .conn,
        "url": .url, "host": .host, "path": .path, "sub": .sub, "diag": .diag,
    ]

    var name: String {
        switch self {
        case .json(let path): "json" + path.map(\.description).joined()
        default: Self.named.first { $0.value == self }!.key
        }
    }

    enum Kind { case number, boolean, text, bytes, json }

    var kind: Kind {
        switch self {
        case .len, .wire, .frames, .code, .conn: .number
        case .compressed, .masked, .fin: .boolean
        case .bytes: .bytes
        case .json: .json
        case .type, .from, .op, .text, .reason, .url, .host, .path, .sub, .diag: .text
        }
    }
}

/// A path into a JSON document: `json.data[0].id`.
public struct JSONPath: Sendable, Equatable, CustomStringConvertible {
    let steps: [JSONPathStep]

    public init(parsing text: String) throws(FilterError) { steps = try FilterParser.jsonPath(parsing: text) }

    public var description: String { "json" + steps.map(\.description).joined() }

    public func value(in root: JSONValue) -> JSONValue? { Test.lookup(root, steps) }

    /// The document with the value at the path set (members and array slots are created as needed,
    /// an index one past the end appends); nil when the path goes through something that is not an
    /// object or array.
    public func setting(_ value: JSONValue, in root: JSONValue) -> JSONValue? { Self.set(value, at: steps[...], in: root) }

    /// The document without the value at the path; nil when there is nothing there.
    public func removing(from root: JSONValue) -> JSONValue? { Self.remove(at: steps[...], in: root) }

    private static func set(_ value: JSONValue, at steps: ArraySlice<JSONPathStep>, in node: JSONValue?) -> JSONValue? {
        guard let step = steps.first else { return value }
        switch (step, node) {
        case (.member(let name), .object(var members)?):
            let index = members.lastIndex { $0.name == name }
            guard let child = set(value, at: steps.dropFirst(), in: index.map { members[$0].value }) else { return nil }
            if let index { members[index].value = child } else { members.append((name, child)) }
            return .object(members)
        case (.member(let name), nil):
            return set(value, at: steps.dropFirst(), in: nil).map { .object([(name, $0)]) }
        case (.index(let i), .array(var items)?):
            guard i <= items.count, let child = set(value, at: steps.dropFirst(), in: i < items.count ? items[i] : nil) else { return nil }
            if i < items.count { items[i] = child } else { items.append(child) }
            return .array(items)
        default:
            return nil
        }
    }

    private static func remove(at steps: ArraySlice<JSONPathStep>, in node: JSONValue) -> JSONValue? {
        guard let step = steps.first else { return nil }
        let last = steps.count == 1
        switch (step, node) {
        case (.member(let name), .object(var members)):
            guard let index = members.lastIndex(where: { $0.name == name }) else { return nil }
            if last { members.remove(at: index) } else {
                guard let child = remove(at: steps.dropFirst(), in: members[index].value) else { return nil }
                members[index].value = child
            }
            return .object(members)
        case (.index(let i), .array(var items)) where i < items.count:
            if last { items.remove(at: i) } else {
                guard let child = remove(at: steps.dropFirst(), in: items[i]) else { return nil }
                items[i] = child
            }
            return .array(items)
        default:
            return nil
        }
    }
}

enum JSONPathStep: Sendable, Equatable, CustomStringConvertible {
    case member(String)
    case index(Int)

    var description: String {
        switch self {
        case .member(let name):
            if !name.isEmpty && name.unicodeScalars.allSatisfy({ $0.properties.isAlphabetic || $0.properties.numericType != nil || $0 == "_" }) {
                ".\(name)"
            } else {
                // One word however odd the name: whitespace and ';' as \uXXXX inside the JSON string.
                "[" + JSONValue.quoted(name).unicodeScalars.map { scalar in
                    guard scalar.properties.isWhitespace || scalar == ";" else { return String(scalar) }
                    let hex = String(scalar.value, radix: 16)
                    return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                }.joined() + "]"
            }
        case .index(let i): "[\(i)]"
        }
    }
}

enum Operator: String, Sendable {
    case equal = "=", notEqual = "!=", less = "<", lessOrEqual = "<=", greater = ">", greaterOrEqual = ">="
    case matches = "~", contains = ":", exists = "?"
}

/// A filter value, already converted to what its field compares with.
enum Operand: Sendable {
    case none
    case number(Double)
    case boolean(Bool)
    case text(String)
    case bytes([UInt8])
    case regex(FilterRegex)
    /// json fields: a JSON literal (`json.n=3`, `json.ok=true`, `json.x=null`) or text.
    case json(JSONValue)
}

/// One comparison of a filter. A class, so that evaluating a tree of them copies a reference, not
/// each test's field, operand and strings (a proxy tests every rule's condition on every message).
final class Test: @unchecked Sendable {  // immutable once built; `textNeedle` is memory it owns and never writes after init
    let field: Field
    let kind: Field.Kind
    let op: Operator
    let operand: Operand
    /// `text:word`: the word's UTF-8, searched for in a text message's bytes (made once, not per message).
    /// Raw memory this test owns, not an array: proxy threads test the same rules at once, and
    /// retaining a shared array for each message made the threads fight over its reference count.
    let textNeedle: UnsafeRawBufferPointer?
    /// `op=…`: compared as the opcode number.
    let isOpcode: Bool

    init(field: Field, op: Operator, operand: Operand) {
        self.field = field
        kind = field.kind
        self.op = op
        self.operand = operand
        isOpcode = field == .op
        if field == .text, op == .contains, case .text(let word) = operand {
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: word.utf8.count, alignment: 1)
            bytes.copyBytes(from: word.utf8)
            textNeedle = UnsafeRawBufferPointer(bytes)
        } else {
            textNeedle = nil
        }
    }

    deinit { textNeedle?.deallocate() }

    var cost: Int {
        switch (field, operand) {
        case (.json, _): 100
        case (_, .regex): 50
        case (.text, _), (.bytes, _), (.reason, _): 10
        default: 1
        }
    }
}
