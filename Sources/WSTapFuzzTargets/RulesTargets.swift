import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRules
import WSTapWire

/// Rule text (files, --rule, later the control API) and JSON Lines recordings read back for rules,
/// replay and mocks.
enum RulesTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "rules", input: "a rules file; the payload the rules are applied to after a NUL", maxLength: 2048, run: rules),
        FuzzTarget(name: "jsonl-reader", input: "JSON Lines text, as a recording", maxLength: 4096, run: jsonlReader),
        FuzzTarget(name: "hook-verdict", input: "one line an exec hook wrote", maxLength: 1024, run: hookVerdict),
    ]

    /// A hook is the user's program, but what it writes is still parsed: any line is a verdict whose
    /// fields are in range (a close frame can carry it), or refused with a reason.
    static func hookVerdict(_ data: [UInt8]) {
        guard let (_, verdict) = try? HookProtocol.verdict(data) else { return }
        if case .close(let code, let reason, _) = verdict.decision {
            FuzzCheck.expect((1000...4999).contains(code) && reason.utf8.count <= 123, "a close verdict no close frame can carry")
        }
        if case .delay(let ms) = verdict.decision { FuzzCheck.expect(ms >= 0, "a negative delay") }
        FuzzCheck.expect(verdict.inject.allSatisfy { $0.to != .both }, "an injection to both sides")
        FuzzCheck.expect(!verdict.summary.isEmpty, "a verdict without a summary")
    }

    /// Any text parses or is refused with a line and column inside it; the actions a rule prints
    /// parse back to the same actions; the engine applies parsed rules to a message without trapping.
    static func rules(_ data: [UInt8]) {
        let split = data.firstIndex(of: 0) ?? data.count
        let text = String(decoding: data[..<split], as: UTF8.self)
        let payload = split < data.count ? Array(data[(split + 1)...]) : []
        let parsed: [Rule]
        do {
            parsed = try RuleParser.parseFile(text, origin: "fuzz")
        } catch {
            FuzzCheck.expect(error.line >= 1 && error.column >= 1, "error without a place: \(error)")
            return
        }
        for rule in parsed {
            let printed = "* => " + rule.actions.map(\.description).joined(separator: "; ")
            guard let again = try? RuleParser.parse(printed) else { FuzzCheck.fail("printed actions do not parse: \(printed)") }
            FuzzCheck.expect(again.actions.map(\.description) == rule.actions.map(\.description), "actions changed on a round trip: \(printed)")
        }
        let engine = RuleEngine(rules: parsed)
        for opcode in [Opcode.text, .binary] {
            let record = TapRecord(connection: 1, timestamp: Timestamp(nanoseconds: 1), body: .message(MessageRecord(
                direction: .clientToServer, opcode: opcode, frames: 1, wireLength: UInt64(payload.count), length: UInt64(payload.count),
                compressed: false, payload: payload, truncated: false, closeCode: nil, closeReason: nil, inflateFailed: false, incomplete: false, offset: 0)))
            let outcome = engine.apply(to: record, connection: nil) { 0.5 }
            FuzzCheck.expect(outcome.edited || outcome.payload == payload, "payload changed without an edit")
        }
    }

    /// Reads or refuses with a line number; what it reads encodes to lines that read back the same.
    static func jsonlReader(_ data: [UInt8]) {
        let text = String(decoding: data, as: UTF8.self)
        let records: [TapRecord]
        do {
            records = try JSONLinesReader.records(text)
        } catch {
            FuzzCheck.expect(error.line >= 1, "error without a line")
            return
        }
        let lines = records.map(JSONLinesEncoder.line)
        guard let again = try? JSONLinesReader.records(lines.joined()) else { FuzzCheck.fail("encoded records do not read back") }
        FuzzCheck.expect(again.map(JSONLinesEncoder.line) == lines, "records changed on a second round trip")
    }
}
