import WSTapFormats

/// One HTTP request to the control server, as the router sees it: no sockets, so every route is
/// tested by building one of these.
public struct ControlRequest: Sendable {
    public var method: String
    /// Path and query as sent.
    public var target: String
    public var path: String
    /// Query parameters, percent-decoded (the last of a repeated name).
    public var query: [String: String]
    /// Header values by lowercased name (the last of a repeated name).
    public var headers: [String: String]
    public var body: [UInt8]

    public init(method: String, target: String, headers: [String: String] = [:], body: [UInt8] = []) {
        self.method = method
        self.target = target
        (path, query) = Self.split(target)
        self.headers = headers
        self.body = body
    }

    /// The path (percent-decoded) and the query parameters of a request target.
    static func split(_ target: String) -> (path: String, query: [String: String]) {
        guard let mark = target.firstIndex(of: "?") else { return (percentDecoded(target, plusIsSpace: false) ?? target, [:]) }
        var query: [String: String] = [:]
        for pair in target[target.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            // A parameter that does not decode is left out, as if it had not been sent.
            guard let name = percentDecoded(String(parts[0]), plusIsSpace: true),
                  let value = parts.count > 1 ? percentDecoded(String(parts[1]), plusIsSpace: true) : "" else { continue }
            query[name] = value
        }
        let path = String(target[..<mark])
        return (percentDecoded(path, plusIsSpace: false) ?? path, query)
    }

    /// `?a=b&c=d` for the parameters (sorted, so the text is stable), or "" for none.
    static func queryString(_ query: [String: String]) -> String {
        guard !query.isEmpty else { return "" }
        return "?" + query.sorted { $0.key < $1.key }.map { "\(percentEncoded($0.key))=\(percentEncoded($0.value))" }.joined(separator: "&")
    }

    /// Nil when an escape is malformed or the result is not UTF-8.
    static func percentDecoded(_ text: String, plusIsSpace: Bool) -> String? {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "%") || (plusIsSpace && $0 == UInt8(ascii: "+")) }) else { return text }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") && plusIsSpace {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%") {
                guard let high = iterator.popFirst().flatMap(hexValue), let low = iterator.popFirst().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    public static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" : "") + hex
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// What the server answers.
public enum ControlResponse: Sendable {
    /// A whole response.
    case complete(status: Int, contentType: String, body: [UInt8], headers: [(String, String)] = [])
    /// A Server-Sent Events stream that starts after this cursor.
    case eventStream(EventStreamCursor)
    /// Answered later, from another event loop (a live connection's): the closure is given the
    /// function to call, once, with the response.
    case later(@Sendable (@escaping @Sendable (ControlResponse) -> Void) -> Void)

    public static func json(_ status: Int = 200, _ body: (inout JSONWriter) -> Void) -> ControlResponse {
        var writer = JSONWriter()
        body(&writer)
        return .complete(status: status, contentType: "application/json", body: writer.bytes)
    }

    /// 405, with the `Allow` header RFC 9110 §15.5.6 asks for.
    public static func methodNotAllowed(_ request: ControlRequest, allow: String) -> ControlResponse {
        guard case .complete(let status, let type, let body, _) = error(405, "\(request.method) is not allowed on \(request.path) (only \(allow))") else {
            return error(405, "not allowed")
        }
        return .complete(status: status, contentType: type, body: body, headers: [("Allow", allow)])
    }

    /// `{"error": reason}` (and the column of a filter error).
    public static func error(_ status: Int, _ reason: String, column: Int? = nil) -> ControlResponse {
        json(status) { writer in
            writer.beginObject()
            writer.key("error"); writer.string(reason)
            if let column { writer.key("column"); writer.integer(column) }
            writer.endObject()
        }
    }

    public var status: Int {
        switch self {
        case .complete(let status, _, _, _): status
        case .eventStream: 200
        case .later: 202
        }
    }
}
