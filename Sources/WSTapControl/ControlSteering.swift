import Synchronization
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRelay
import WSTapRules
import WSTapWire

/// Reaches a live connection on its own event loop (the proxy's connection registry). `reply` is
/// called once, on any thread: nil when no live connection has that number.
public protocol ConnectionSteering: Sendable {
    func steer(_ connection: UInt64, _ command: SteerCommand, reply: @escaping @Sendable (SteerAnswer?) -> Void)
    /// The connections that can be reached now, in number order.
    var liveConnections: [UInt64] { get }
}

/// The routes that change live traffic: send, close, abort, holds (docs/control-api.md, "Steering").
extension ControlAPI {
    func steeringRoute(_ request: ControlRequest, _ parts: [String]) -> ControlResponse? {
        // /api/holds, or /api/connections/N/{messages,close,abort,holds[/H]}
        if parts.count == 2, parts[1] == "holds" {
            guard request.method == "GET" else { return .methodNotAllowed(request, allow: "GET") }
            return allHolds()
        }
        guard parts.count >= 4, parts[1] == "connections" else { return nil }
        guard let id = UInt64(parts[2]) else { return .error(400, "a connection number is a whole number: /api/connections/7/\(parts[3])") }
        let command: SteerCommand
        switch (request.method, parts[3], parts.count) {
        case ("POST", "messages", 4):
            do throws(ControlResponseError) { command = .send(try Self.ownSend(request.body)) } catch { return error.response }
        case ("POST", "close", 4):
            do throws(ControlResponseError) { command = try Self.close(request.body) } catch { return error.response }
        case ("POST", "abort", 4):
            command = .abort
        case ("GET", "holds", 4):
            command = .listHolds
        case ("POST", "holds", 5):
            guard let hold = UInt64(parts[4]) else { return .error(400, "a hold's id is a whole number: /api/connections/\(id)/holds/2") }
            do throws(ControlResponseError) { command = .release(hold: hold, try Self.holdDecision(request.body)) } catch { return error.response }
        case (_, "holds", 4):
            return .methodNotAllowed(request, allow: "GET")
        case (_, "messages", 4), (_, "close", 4), (_, "abort", 4), (_, "holds", 5):
            return .methodNotAllowed(request, allow: "POST")
        default:
            return .error(404, "no such route: \(request.path) (docs/control-api.md lists them)")
        }
        guard let steering else {
            return .error(409, "this wstap has no live connections to steer (it serves a capture or a recording)")
        }
        let store = self.store
        return .later { respond in
            steering.steer(id, command) { answer in
                respond(Self.response(to: answer, connection: id, store: store))
            }
        }
    }

    private static func response(to answer: SteerAnswer?, connection id: UInt64, store: RecordStore) -> ControlResponse {
        switch answer {
        case nil:
            let known = store.connection(id) != nil
            return .error(404, known ? "connection \(id) has ended" : "no live connection \(id)")
        case .refused(let reason)?:
            return .error(409, reason)
        case .notFound(let reason)?:
            return .error(404, reason)
        case .done(let result)?:
            return .json { writer in
                writer.beginObject()
                writer.key("result"); writer.string(result)
                writer.endObject()
            }
        case .holds(let holds)?:
            return .json { writer in
                writer.beginObject()
                writer.key("holds")
                writer.beginArray()
                for hold in holds { encode(hold, connection: id, into: &writer) }
                writer.endArray()
                writer.endObject()
            }
        }
    }

    /// Every live connection's holds: asked of each on its own loop, answered once all have.
    private func allHolds() -> ControlResponse {
        guard let steering else {
            return .json { writer in
                writer.beginObject(); writer.key("holds"); writer.beginArray(); writer.endArray(); writer.endObject()
            }
        }
        let ids = steering.liveConnections
        return .later { respond in
            let gathered = HoldGathering(count: ids.count) { answers in
                respond(.json { writer in
                    writer.beginObject()
                    writer.key("holds")
                    writer.beginArray()
                    for (id, holds) in answers.sorted(by: { $0.0 < $1.0 }) {
                        for hold in holds { Self.encode(hold, connection: id, into: &writer) }
                    }
                    writer.endArray()
                    writer.endObject()
                })
            }
            for id in ids {
                steering.steer(id, .listHolds) { answer in
                    if case .holds(let holds)? = answer { gathered.add(id, holds) } else { gathered.add(id, []) }
                }
            }
        }
    }

    static func encode(_ hold: HeldMessage, connection: UInt64, into writer: inout JSONWriter) {
        writer.beginObject()
        writer.key("conn"); writer.integer(connection)
        writer.key("id"); writer.integer(hold.id)
        writer.key("from"); writer.string(hold.direction == .clientToServer ? "client" : "server")
        writer.key("offset"); writer.integer(hold.offset)
        writer.key("opcode"); writer.integer(hold.opcode.rawValue)
        writer.key("length"); writer.integer(hold.payload.count)
        writer.key("compressed"); writer.bool(hold.compressed)
        if hold.opcode == .text, UTF8Validator.isValid(hold.payload) {
            writer.key("text"); writer.string(validUTF8: hold.payload)
        } else {
            writer.key("base64"); writer.base64(hold.payload)
        }
        writer.key("rules")
        writer.beginArray()
        for rule in hold.rules { writer.string(rule) }
        writer.endArray()
        writer.key("since"); writer.timestamp(nanoseconds: hold.since.nanoseconds)
        writer.key("release_at")
        if let at = hold.releaseAt { writer.timestamp(nanoseconds: at.nanoseconds) } else { writer.null() }
        writer.key("decided"); writer.bool(hold.decided)
        writer.endObject()
    }

    // MARK: - Bodies

    private static func object(_ body: [UInt8], _ example: String) throws(ControlResponseError) -> JSONValue {
        guard !body.isEmpty else { return .object([]) }
        guard let json = JSONValue.parse(body), case .object = json else {
            throw ControlResponseError(.error(400, "the body must be a JSON object, e.g. \(example)"))
        }
        return json
    }

    /// `text` or `base64`: the payload and whether it is text. Neither: nil.
    private static func payload(_ json: JSONValue) throws(ControlResponseError) -> (bytes: [UInt8], text: Bool)? {
        if case .string(let text)? = json[member: "text"] { return (Array(text.utf8), true) }
        if case .string(let encoded)? = json[member: "base64"] {
            guard let bytes = Base64Decoding.decode(encoded) else { throw ControlResponseError(.error(400, "base64 does not decode (standard alphabet, with padding)")) }
            return (bytes, false)
        }
        return nil
    }

    private static func side(_ json: JSONValue, default fallback: Side?) throws(ControlResponseError) -> Side {
        guard case .string(let name)? = json[member: "to"] else {
            if let fallback { return fallback }
            throw ControlResponseError(.error(400, "say which peer: \"to\": \"client\", \"server\" or \"both\""))
        }
        guard let side = Side(rawValue: name) else { throw ControlResponseError(.error(400, "\"to\" is client, server or both, not '\(name)'")) }
        return side
    }

    private static func integer(_ json: JSONValue, _ name: String) throws(ControlResponseError) -> Int? {
        guard let value = json[member: name] else { return nil }
        guard case .number(let n, _) = value, n.rounded() == n, n >= 0, n < 1e9 else {
            throw ControlResponseError(.error(400, "\(name) must be a whole number"))
        }
        return Int(n)
    }

    private static func flag(_ json: JSONValue, _ name: String) throws(ControlResponseError) -> Bool {
        guard let value = json[member: name] else { return false }
        guard case .bool(let b) = value else { throw ControlResponseError(.error(400, "\(name) must be true or false")) }
        return b
    }

    static func ownSend(_ body: [UInt8]) throws(ControlResponseError) -> OwnSend {
        let json = try object(body, #"{"to":"server","text":"hello"}"#)
        let to = try side(json, default: nil)
        guard let (bytes, isText) = try payload(json) else {
            throw ControlResponseError(.error(400, "give the message as \"text\" (a text message) or \"base64\" (a binary one)"))
        }
        var opcode: Opcode = isText ? .text : .binary
        if case .string(let name)? = json[member: "type"] {
            switch name {
            case "text": opcode = .text
            case "binary": opcode = .binary
            default: throw ControlResponseError(.error(400, "type is text or binary, not '\(name)'"))
            }
        }
        let fragments = try integer(json, "fragments") ?? 1
        guard (1...4096).contains(fragments) else { throw ControlResponseError(.error(400, "fragments is from 1 to 4096")) }
        return OwnSend(to: to, opcode: opcode, payload: bytes, fragments: fragments, compressed: try flag(json, "compressed"))
    }

    static func close(_ body: [UInt8]) throws(ControlResponseError) -> SteerCommand {
        let json = try object(body, #"{"code":4001,"reason":"bye","to":"both"}"#)
        let code = try integer(json, "code") ?? 1000
        guard code <= 0xFFFF else { throw ControlResponseError(.error(400, "a close code is at most 65535")) }
        var reason = ""
        if let value = json[member: "reason"] {
            guard case .string(let text) = value else { throw ControlResponseError(.error(400, "reason must be a string")) }
            reason = text
        }
        return .close(code: UInt16(code), reason: reason, to: try side(json, default: .both))
    }

    static func holdDecision(_ body: [UInt8]) throws(ControlResponseError) -> HoldDecision {
        let json = try object(body, #"{"action":"forward"}"#)
        guard case .string(let action)? = json[member: "action"] else {
            throw ControlResponseError(.error(400, "say what to do: \"action\": \"forward\", \"drop\" or \"edit\" (with \"text\" or \"base64\")"))
        }
        switch action {
        case "forward": return .forward
        case "drop": return .drop
        case "edit":
            guard let (bytes, _) = try payload(json) else { throw ControlResponseError(.error(400, "an edit gives the new payload as \"text\" or \"base64\"")) }
            return .replace(bytes)
        default:
            throw ControlResponseError(.error(400, "action is forward, drop or edit, not '\(action)'"))
        }
    }
}

/// Answers from many connections' loops, gathered until the last one.
private final class HoldGathering: Sendable {
    private struct State {
        var remaining: Int
        var answers: [(UInt64, [HeldMessage])] = []
    }
    private let state: Mutex<State>
    private let done: @Sendable ([(UInt64, [HeldMessage])]) -> Void

    init(count: Int, done: @escaping @Sendable ([(UInt64, [HeldMessage])]) -> Void) {
        state = Mutex(State(remaining: count))
        self.done = done
        if count == 0 { done([]) }
    }

    func add(_ id: UInt64, _ holds: [HeldMessage]) {
        let finished: [(UInt64, [HeldMessage])]? = state.withLock { state in
            state.answers.append((id, holds))
            state.remaining -= 1
            return state.remaining == 0 ? state.answers : nil
        }
        if let finished { done(finished) }
    }
}
