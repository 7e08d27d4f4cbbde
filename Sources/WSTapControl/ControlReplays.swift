import WSTapDissect
import WSTapFilter
import WSTapReplay

/// What `POST /api/replays` asks for: one connection of the store replayed against a server, as
/// `wstap replay` does from a file.
public struct ReplayOrder: Sendable {
    /// The connection replayed, and its records as the store holds them, in order.
    public var connection: UInt64
    public var records: [TapRecord]
    /// `ws://` or `wss://` URL; nil replays to the URL the connection was recorded with.
    public var to: String?
    /// `reply`, `asap`, `timing` or `idle=DURATION`, as `--pace`.
    public var pace: String
    /// JSON paths the diff leaves out (`json.ts`), as `--ignore`.
    public var ignore: [JSONPath]
    /// Replay messages the store kept only the start of (as `--allow-truncated`).
    public var allowTruncated: Bool
}

/// Runs replays for the control API; the proxy's shell provides it (it owns the sockets, the TLS
/// settings and the connection numbers).
public protocol ReplayRunning: Sendable {
    /// Runs the replay to its end, off the caller's thread, and answers once: 200 with what
    /// happened, or the refusal.
    func replay(_ order: ReplayOrder, answer: @escaping @Sendable (ControlResponse) -> Void)
}

extension ControlAPI {
    func replaysRoute(_ request: ControlRequest, _ parts: [String]) -> ControlResponse? {
        guard parts.count == 2, parts[1] == "replays" else { return nil }
        guard request.method == "POST" else { return .methodNotAllowed(request, allow: "POST") }
        let order: ReplayOrder
        do throws(ControlResponseError) { order = try replayOrder(request.body) } catch { return error.response }
        guard let replays else {
            return .error(409, "this wstap does not replay (it serves a capture or a recording): use wstap replay FILE --to URL")
        }
        return .later { answer in replays.replay(order, answer: answer) }
    }

    private func replayOrder(_ body: [UInt8]) throws(ControlResponseError) -> ReplayOrder {
        let example = #"{"conn":1,"to":"ws://127.0.0.1:9000/chat","pace":"reply"}"#
        guard let json = JSONValue.parse(body), case .object = json else {
            throw ControlResponseError(.error(400, "the body must be a JSON object, e.g. \(example)"))
        }
        guard case .number(let number, _)? = json[member: "conn"], number >= 1, number < 1e15, number.rounded() == number else {
            throw ControlResponseError(.error(400, "say which connection: \"conn\": N, e.g. \(example)"))
        }
        let connection = UInt64(number)
        var to: String?
        switch json[member: "to"] {
        case nil, .null?: break
        case .string(let url)?:
            guard url.hasPrefix("ws://") || url.hasPrefix("wss://") else { throw ControlResponseError(.error(400, "\"to\" is a ws:// or wss:// URL, not '\(url)'")) }
            to = url
        default: throw ControlResponseError(.error(400, "\"to\" is a ws:// or wss:// URL"))
        }
        var pace = "reply"
        if let value = json[member: "pace"] {
            guard case .string(let text) = value, ReplayOptions.Pace(parsing: text) != nil else {
                throw ControlResponseError(.error(400, "\"pace\" is reply, asap, timing or idle=DURATION (idle=300ms)"))
            }
            pace = text
        }
        var ignore: [JSONPath] = []
        if let value = json[member: "ignore"] {
            guard case .array(let items) = value else { throw ControlResponseError(.error(400, "\"ignore\" is a list of JSON paths, e.g. [\"json.ts\"]")) }
            for item in items {
                guard case .string(let text) = item else { throw ControlResponseError(.error(400, "\"ignore\" is a list of JSON paths, e.g. [\"json.ts\"]")) }
                do { ignore.append(try JSONPath(parsing: text)) } catch {
                    throw ControlResponseError(.error(400, "ignore '\(text)': \(error.message)"))
                }
            }
        }
        var allowTruncated = false
        if let value = json[member: "allow_truncated"] {
            guard case .bool(let flag) = value else { throw ControlResponseError(.error(400, "\"allow_truncated\" is true or false")) }
            allowTruncated = flag
        }
        var records: [TapRecord] = []
        store.forEachEntry(connection: connection) { records.append($0.record) }
        guard records.contains(where: { if case .open = $0.body { true } else { false } }) else {
            throw ControlResponseError(.error(404, store.connection(connection) == nil
                ? "no connection \(connection) is known"
                : "connection \(connection)'s open record is no longer held (the store keeps the newest \(store.limitBytes >> 20) MiB): replay it from the --jsonl file with wstap replay"))
        }
        return ReplayOrder(connection: connection, records: records, to: to, pace: pace, ignore: ignore, allowTruncated: allowTruncated)
    }
}
