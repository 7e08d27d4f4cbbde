import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRules
import WSTapWire

/// The rules a proxy runs, as the control API reads and replaces them (`GET`/`PUT /api/rules`).
public final class RuleControl: Sendable {
    public let book: RuleBook
    /// One line about the proxy itself (the console's stderr): a replacement is said there too.
    private let notice: @Sendable (String) -> Void

    public init(book: RuleBook, notice: @escaping @Sendable (String) -> Void) {
        self.book = book
        self.notice = notice
    }

    func replace(_ rules: [Rule]) {
        book.replace(with: RuleEngine(rules: rules))
        notice("rules replaced over the control API: \(rules.count) rule\(rules.count == 1 ? "" : "s") in force from the next message of every connection")
    }
}

/// `/api/rules`: the rules in force, replacing them, and trying rules on the records held.
extension ControlAPI {
    func rulesRoute(_ request: ControlRequest, _ parts: [String]) -> ControlResponse? {
        guard parts.count >= 2, parts[1] == "rules", parts.count <= 3 else { return nil }
        switch (request.method, parts.count == 3 ? parts[2] : nil) {
        case ("GET", nil):
            let rules = rules?.book.engine.rules ?? []
            return .json { writer in
                writer.beginObject()
                writer.key("rules")
                Self.encode(rules, tally: nil, into: &writer)
                writer.endObject()
            }
        case ("PUT", nil):
            guard let control = rules else { return .error(409, "this wstap relays no live traffic (it serves a capture or a recording): there are no rules to replace") }
            let parsed: [Rule]
            do throws(ControlResponseError) { parsed = try Self.parseRules(request.body) } catch { return error.response }
            control.replace(parsed)
            return .json { writer in
                writer.beginObject()
                writer.key("rules")
                Self.encode(parsed, tally: nil, into: &writer)
                writer.endObject()
            }
        case ("POST", "test"?):
            return testRules(request)
        case (_, nil):
            return .methodNotAllowed(request, allow: "GET, PUT")
        case (_, "test"?):
            return .methodNotAllowed(request, allow: "POST")
        default:
            return .error(404, "no such route: \(request.path) (docs/control-api.md lists them)")
        }
    }

    /// The rules of the body (the rules in force when it is empty) over the message records held,
    /// selected with `filter` and `conn`: per rule, messages matched and changed, and the first change.
    private func testRules(_ request: ControlRequest) -> ControlResponse {
        let parsed: [Rule], filter: Filter?, connection: UInt64?
        do throws(ControlResponseError) {
            parsed = request.body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 })
                ? rules?.book.engine.rules ?? [] : try Self.parseRules(request.body)
            filter = try parseFilter(request)
            connection = try number(request, "conn")
        } catch {
            return error.response
        }
        var tally = RuleTally(engine: RuleEngine(rules: parsed), seed: 1)
        store.forEachEntry(filter: filter, connection: connection) { tally.add($0.record) }
        return .json { writer in
            writer.beginObject()
            writer.key("messages"); writer.integer(tally.messages)
            writer.key("rules")
            Self.encode(parsed, tally: tally, into: &writer)
            writer.endObject()
        }
    }

    /// A rules file's text, as `--rules FILE` takes it, without what would reach outside the proxy:
    /// `exec` starts processes and `inject … file` reads files, so those stay on the command line.
    static func parseRules(_ body: [UInt8]) throws(ControlResponseError) -> [Rule] {
        guard let text = String(validating: body, as: UTF8.self) else { throw ControlResponseError(.error(400, "rules are UTF-8 text, one a line")) }
        let rules: [Rule]
        do {
            rules = try RuleParser.parseFile(text, origin: "rules")
        } catch {
            throw ControlResponseError(.json(400) { writer in
                writer.beginObject()
                writer.key("error"); writer.string("line \(error.line), column \(error.column): \(error.message)")
                writer.key("line"); writer.integer(error.line)
                writer.key("column"); writer.integer(error.column)
                writer.endObject()
            })
        }
        for rule in rules {
            for action in rule.actions {
                if case .exec = action {
                    throw ControlResponseError(.error(400, "rule '\(rule.name)' (line \(rule.line)): exec starts a process; give hooks with --exec or --rules FILE, not over the API"))
                }
                if case .inject(_, .file) = action {
                    throw ControlResponseError(.error(400, "rule '\(rule.name)' (line \(rule.line)): inject … file reads a file; over the API give the message as text or hex"))
                }
            }
        }
        return rules
    }

    static func encode(_ rules: [Rule], tally: RuleTally?, into writer: inout JSONWriter) {
        writer.beginArray()
        for rule in rules {
            writer.beginObject()
            writer.key("name"); writer.string(rule.name)
            writer.key("line"); writer.integer(rule.line)
            writer.key("text"); writer.string(rule.source)
            if let tally {
                writer.key("matched"); writer.integer(tally.matched[rule.name] ?? 0)
                writer.key("changed"); writer.integer(tally.changed[rule.name] ?? 0)
                writer.key("sample")
                if let sample = tally.samples[rule.name] {
                    writer.beginObject()
                    for (name, bytes) in [("before", sample.before), ("after", sample.after)] {
                        if sample.opcode != .binary, UTF8Validator.isValid(bytes) {
                            if name == "before" { writer.key("before") } else { writer.key("after") }
                            writer.string(validUTF8: bytes)
                        } else {
                            if name == "before" { writer.key("before_base64") } else { writer.key("after_base64") }
                            writer.base64(bytes)
                        }
                    }
                    writer.endObject()
                } else {
                    writer.null()
                }
                writer.key("skipped")
                writer.beginObject()
                for (reason, count) in (tally.skipped[rule.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                    writer.key(dynamic: reason); writer.integer(count)
                }
                writer.endObject()
            }
            writer.endObject()
        }
        writer.endArray()
    }
}
