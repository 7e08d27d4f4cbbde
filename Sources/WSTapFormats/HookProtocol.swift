import WSTapDissect
import WSTapFilter
import WSTapRules
import WSTapWire

/// The exec hook protocol (docs/hooks.md): one JSON object a line each way. wstap writes a request
/// for each message a rule hands to the hook; the hook answers each with a verdict naming its id, in
/// any order. Sans-IO: the proxy's shell moves the lines.
public enum HookProtocol {
    /// `{"id":N,"rule":"…","message":{…the message record, whole payload…}}` and a newline.
    public static func request(id: UInt64, rule: String, record: TapRecord) -> [UInt8] {
        var writer = JSONWriter()
        writer.beginObject()
        writer.key("id"); writer.integer(id)
        writer.key("rule"); writer.string(rule)
        writer.key("message"); JSONLinesEncoder.encodeObject(record, into: &writer)
        writer.endObject()
        writer.newline()
        return writer.withBytes { Array($0) }
    }

    /// Why a line from the hook is not a verdict: wstap takes the hook to be out of step with it.
    public struct Garbage: Error, CustomStringConvertible {
        public let description: String
    }

    /// One line of the hook's stdout, without its newline (a trailing CR is allowed).
    public static func verdict(_ line: [UInt8]) throws(Garbage) -> (id: UInt64, verdict: HookVerdict) {
        var bytes = line[...]
        if bytes.last == 0x0D { bytes = bytes.dropLast() }
        guard let json = JSONValue.parse(bytes), case .object = json else { throw Garbage(description: "not a JSON object") }
        guard let id = json.int("id"), id >= 0 else { throw Garbage(description: "no \"id\" (the number of the request it answers)") }
        guard let word = json.string("verdict") else {
            throw Garbage(description: "no \"verdict\" (forward, drop, replace, delay or close)")
        }
        let decision: HookVerdict.Decision
        switch word {
        case "forward": decision = .forward
        case "drop": decision = .drop
        case "replace":
            guard let payload = try payload(of: json) else { throw Garbage(description: "replace needs \"text\" or \"base64\"") }
            decision = .replace(payload)
        case "delay":
            guard let ms = json.int("ms"), (0...86_400_000).contains(ms) else { throw Garbage(description: "delay needs \"ms\", 0 to 86400000") }
            decision = .delay(milliseconds: ms)
        case "close":
            let code = json.int("code") ?? 1000
            guard (1000...4999).contains(code) else { throw Garbage(description: "close \"code\" must be 1000 to 4999") }
            let reason = json.string("reason") ?? ""
            // A close frame's payload is at most 125 bytes (RFC 6455 §5.5): the code and 123 of reason.
            guard reason.utf8.count <= 123 else { throw Garbage(description: "close \"reason\" is longer than 123 bytes") }
            decision = .close(code: UInt16(code), reason: reason, to: try side(json, default: .both))
        default:
            throw Garbage(description: "unknown verdict '\(word)' (forward, drop, replace, delay or close)")
        }
        var inject: [(to: Side, payload: RuleAction.Injected)] = []
        if let list = json[member: "inject"] {
            guard case .array(let items) = list else { throw Garbage(description: "\"inject\" must be a list of messages") }
            for item in items {
                guard case .object = item else { throw Garbage(description: "each message to inject is an object with \"to\" and \"text\" or \"base64\"") }
                let to = try side(item, default: nil)
                guard to != .both else { throw Garbage(description: "inject \"to\" is client or server") }
                if let text = item.string("text") {
                    inject.append((to, .text(text)))
                } else if let bytes = try payload(of: item) {
                    inject.append((to, .bytes(bytes)))
                } else {
                    throw Garbage(description: "a message to inject needs \"text\" or \"base64\"")
                }
            }
        }
        return (UInt64(id), HookVerdict(decision, inject: inject))
    }

    private static func payload(of json: JSONValue) throws(Garbage) -> [UInt8]? {
        if let text = json.string("text") { return Array(text.utf8) }
        guard let encoded = json.string("base64") else { return nil }
        guard let bytes = Base64Decoding.decode(encoded) else { throw Garbage(description: "\"base64\" does not decode") }
        return bytes
    }

    private static func side(_ json: JSONValue, default fallback: Side?) throws(Garbage) -> Side {
        guard let word = json.string("to") else {
            if let fallback { return fallback }
            throw Garbage(description: "inject needs \"to\": client or server")
        }
        guard let side = Side(rawValue: word) else { throw Garbage(description: "\"to\" must be client, server or both, not '\(word)'") }
        return side
    }
}
