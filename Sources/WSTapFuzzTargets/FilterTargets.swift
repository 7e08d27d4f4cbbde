import WSTapDissect
import WSTapFilter
import WSTapWire

/// The filter grammar (typed by users, later sent to the control API) and the JSON parser (run on
/// payloads from the wire).
enum FilterTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "json", input: "a JSON document, as a message payload", maxLength: 4096, run: json),
        FuzzTarget(name: "filter", input: "filter source text; the payload of the message it is tried on after a NUL", maxLength: 1024, run: filter),
    ]

    /// Parses; what parses serializes to text that parses back to the same value.
    static func json(_ data: [UInt8]) {
        guard let value = JSONValue.parse(data) else { return }
        let text = value.serialized
        guard let again = JSONValue.parse(Array(text.utf8)) else { FuzzCheck.fail("serialized JSON does not parse: \(text)") }
        FuzzCheck.expect(again == value || containsNaNLike(value), "round trip changed the value: \(text)")
        FuzzCheck.expect(again.serialized == text, "serializing is not stable: \(text) then \(again.serialized)")
    }

    /// Numbers like 1e999 parse to infinity and compare unequal to nothing in particular: the round trip
    /// keeps their text, which is what matters.
    private static func containsNaNLike(_ value: JSONValue) -> Bool {
        switch value {
        case .number(let n, _): !n.isFinite
        case .array(let items): items.contains(where: containsNaNLike)
        case .object(let members): members.contains { containsNaNLike($0.value) }
        default: false
        }
    }

    /// Any text either parses or is refused with a column inside it; a parsed filter evaluates on
    /// records of every type without trapping, and `not` of it selects exactly the other records.
    static func filter(_ data: [UInt8]) {
        let split = data.firstIndex(of: 0) ?? data.count
        let source = String(decoding: data[..<split], as: UTF8.self)
        let payload = split < data.count ? Array(data[(split + 1)...]) : []
        let parsed: Filter
        do {
            parsed = try Filter(parsing: source)
        } catch {
            let end = source.unicodeScalars.count + 1
            FuzzCheck.expect(error.column >= 1 && error.column <= end, "column \(error.column) outside 1...\(end)")
            return
        }
        guard let negated = try? Filter(parsing: "not (\(source))") else { FuzzCheck.fail("'not (\(source))' does not parse") }
        let facts = ConnectionFacts(url: "ws://h.test:9/p?q=1", subprotocol: "s")
        for record in records(payload) {
            let matches = parsed.matches(record, connection: facts)
            FuzzCheck.expect(matches != negated.matches(record, connection: facts), "a record matches both the filter and its negation")
        }
    }

    private static func records(_ payload: [UInt8]) -> [TapRecord] {
        let time = Timestamp(nanoseconds: 1)
        func message(_ opcode: Opcode, _ from: Direction) -> TapRecord {
            TapRecord(connection: 1, timestamp: time, body: .message(MessageRecord(
                direction: from, opcode: opcode, frames: 2, wireLength: UInt64(payload.count), length: UInt64(payload.count), compressed: opcode == .text,
                payload: payload, truncated: false, closeCode: opcode == .close ? 1000 : nil, closeReason: opcode == .close ? "bye" : nil,
                inflateFailed: false, incomplete: false, offset: 0)))
        }
        return [
            message(.text, .clientToServer), message(.binary, .serverToClient), message(.close, .clientToServer), message(.ping, .serverToClient),
            TapRecord(connection: 1, timestamp: time, body: .frame(FrameRecord(direction: .clientToServer,
                header: FrameHeader(fin: false, rsv1: true, opcode: .text, maskKey: 7, payloadLength: UInt64(payload.count)), offset: 0))),
            TapRecord(connection: 1, timestamp: time, body: .diagnostic(Diagnostic(code: .reservedOpcode, direction: .serverToClient, offset: 3, detail: "x"))),
            TapRecord(connection: 1, timestamp: time, body: .end(EndRecord(reason: "r", closedBy: nil, clientBytes: 0, serverBytes: 0))),
        ]
    }
}
