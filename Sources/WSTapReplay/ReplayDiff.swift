import WSTapFilter
import WSTapRecording
import WSTapWire

/// `--diff`: the server's messages in the replay against the recorded ones. JSON is compared as
/// structure (member order and number spelling do not matter; `--ignore` paths are left out), other
/// payloads byte for byte. Messages pair up in order, or by their `--correlate` value.
public enum ReplayDiff {
    public struct Difference: Sendable, Equatable, CustomStringConvertible {
        /// 1-based position among the recorded server messages (or the replayed ones, for extras).
        public var message: Int
        public var detail: String
        public var description: String { "server message \(message): \(detail)" }
    }

    public static func compare(recorded: [Recording.Message], replayed: [Recording.Message], correlate: JSONPath? = nil,
                               ignore: [JSONPath] = []) -> [Difference] {
        var out: [Difference] = []
        if let correlate {
            // Pair by id: the n-th recorded message with an id goes with the n-th replayed one with it.
            var pool: [String: [Int]] = [:]
            var unkeyed: [Int] = []
            for (index, message) in replayed.enumerated() {
                if let id = ReplaySession.jsonValue(message.payload, at: correlate) { pool[id, default: []].append(index) } else { unkeyed.append(index) }
            }
            var used = Set<Int>()
            // How many of each pool are taken: the next one is at that index (no removeFirst, which
            // is quadratic over a long session).
            var taken: [String: Int] = [:]
            var unkeyedTaken = 0
            for (index, message) in recorded.enumerated() {
                let id = ReplaySession.jsonValue(message.payload, at: correlate)
                var match: Int?
                if let id, let candidates = pool[id], taken[id, default: 0] < candidates.count {
                    match = candidates[taken[id, default: 0]]
                    taken[id, default: 0] += 1
                } else if id == nil, unkeyedTaken < unkeyed.count {
                    match = unkeyed[unkeyedTaken]
                    unkeyedTaken += 1
                }
                guard let match else {
                    out.append(Difference(message: index + 1, detail: "missing: no replayed message with \(correlate) \(id ?? "(none)") (recorded \(preview(message)))"))
                    continue
                }
                used.insert(match)
                if let detail = differs(message, replayed[match], ignore: ignore) { out.append(Difference(message: index + 1, detail: detail)) }
            }
            for (index, message) in replayed.enumerated() where !used.contains(index) {
                out.append(Difference(message: index + 1, detail: "extra in the replay: \(preview(message))"))
            }
            return out
        }
        for index in 0..<max(recorded.count, replayed.count) {
            switch (index < recorded.count ? recorded[index] : nil, index < replayed.count ? replayed[index] : nil) {
            case (let a?, let b?):
                if let detail = differs(a, b, ignore: ignore) { out.append(Difference(message: index + 1, detail: detail)) }
            case (let a?, nil):
                out.append(Difference(message: index + 1, detail: "missing in the replay (recorded \(preview(a)))"))
            case (nil, let b?):
                out.append(Difference(message: index + 1, detail: "extra in the replay: \(preview(b))"))
            default:
                break
            }
        }
        return out
    }

    /// What differs between two messages, or nil when nothing does.
    static func differs(_ recorded: Recording.Message, _ replayed: Recording.Message, ignore: [JSONPath]) -> String? {
        if recorded.opcode != replayed.opcode { return "recorded \(recorded.opcode), replayed \(replayed.opcode)" }
        if recorded.opcode == .text, var a = JSONValue.parse(recorded.payload), var b = JSONValue.parse(replayed.payload) {
            for path in ignore {
                a = path.removing(from: a) ?? a
                b = path.removing(from: b) ?? b
            }
            var paths: [String] = []
            collect(a, b, path: "json", into: &paths)
            if paths.isEmpty { return nil }
            let shown = paths.prefix(3).joined(separator: "; ")
            return paths.count > 3 ? "\(shown); and \(paths.count - 3) more" : shown
        }
        // Cut payloads are compared as far as both go.
        let common = min(recorded.payload.count, replayed.payload.count)
        let cut = recorded.truncated || replayed.truncated
        if recorded.payload.prefix(common).elementsEqual(replayed.payload.prefix(common)) && (cut || recorded.length == replayed.length) {
            return nil
        }
        return "payload differs: recorded \(preview(recorded)), replayed \(preview(replayed))"
    }

    /// Paths where two JSON values differ, as `json.a.b: recorded X, replayed Y`.
    static func collect(_ a: JSONValue, _ b: JSONValue, path: String, into out: inout [String]) {
        switch (a, b) {
        case (.object(let x), .object(let y)):
            let names = x.map(\.name) + y.map(\.name).filter { name in !x.contains { $0.name == name } }
            var seen = Set<String>()
            for name in names where seen.insert(name).inserted {
                let child = path + member(name)
                switch (a[member: name], b[member: name]) {
                case (let u?, let v?): collect(u, v, path: child, into: &out)
                case (let u?, nil): out.append("\(child): recorded \(short(u)), missing in the replay")
                case (nil, let v?): out.append("\(child): not recorded, replayed \(short(v))")
                default: break
                }
            }
        case (.array(let x), .array(let y)) where x.count == y.count:
            for (index, pair) in zip(x, y).enumerated() { collect(pair.0, pair.1, path: "\(path)[\(index)]", into: &out) }
        default:
            if a != b { out.append("\(path): recorded \(short(a)), replayed \(short(b))") }
        }
    }

    private static func member(_ name: String) -> String {
        let plain = !name.isEmpty && name.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil || $0 == "_" }
        return plain ? ".\(name)" : "[\(JSONValue.string(name).serialized)]"
    }

    private static func short(_ value: JSONValue) -> String {
        let text = value.serialized
        return text.count > 60 ? String(text.prefix(57)) + "…" : text
    }

    static func preview(_ message: Recording.Message) -> String {
        if message.opcode == .text, let text = String(validating: message.payload.prefix(60), as: UTF8.self) {
            return "\(message.length) B \"\(text)\(message.length > 60 ? "…" : "")\""
        }
        return "\(message.opcode) \(message.length) B"
    }
}
