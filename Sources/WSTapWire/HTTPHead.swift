/// An HTTP/1.1 request or response head parsed from raw bytes. Header order, case and duplicates are
/// kept exactly as received, because a debugging tool shows what was sent, not a normalised copy.
public struct HTTPHead: Equatable, Sendable {
    public enum StartLine: Equatable, Sendable {
        case request(method: String, target: String, version: String)
        case response(version: String, status: Int, reason: String)
    }

    public var startLine: StartLine
    public var headers: [(name: String, value: String)]
    /// Length of the head in bytes, including the final empty line.
    public var byteCount: Int

    public init(startLine: StartLine, headers: [(name: String, value: String)], byteCount: Int) {
        self.startLine = startLine
        self.headers = headers
        self.byteCount = byteCount
    }

    public static func == (lhs: HTTPHead, rhs: HTTPHead) -> Bool {
        lhs.startLine == rhs.startLine && lhs.byteCount == rhs.byteCount
            && lhs.headers.map { [$0.name, $0.value] } == rhs.headers.map { [$0.name, $0.value] }
    }

    /// All values of a header, case-insensitively by name, in order.
    public func values(_ name: String) -> [String] {
        headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }

    /// The values of a header joined as one list (RFC 9110 §5.3), or nil when absent.
    public func value(_ name: String) -> String? {
        let all = values(name)
        return all.isEmpty ? nil : all.joined(separator: ", ")
    }

    /// Comma-separated tokens of a header, lower-cased and trimmed (for Connection, Upgrade).
    public func tokens(_ name: String) -> [String] {
        (value(name) ?? "").split(separator: ",").map { $0.trimmingWhitespace().lowercased() }.filter { !$0.isEmpty }
    }

    public var isWebSocketUpgradeRequest: Bool {
        guard case .request = startLine else { return false }
        return tokens("upgrade").contains("websocket")
    }

    public var method: String? { if case .request(let m, _, _) = startLine { m } else { nil } }
    public var target: String? { if case .request(_, let t, _) = startLine { t } else { nil } }
    public var status: Int? { if case .response(_, let s, _) = startLine { s } else { nil } }
    public var reason: String? { if case .response(_, _, let r) = startLine { r } else { nil } }

    /// Serialises the head back to bytes (used when the relay rewrites the request target or Host).
    public func encoded() -> [UInt8] {
        var text: String
        switch startLine {
        case .request(let method, let target, let version): text = "\(method) \(target) \(version)\r\n"
        case .response(let version, let status, let reason): text = "\(version) \(status) \(reason)\r\n"
        }
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        return Array(text.utf8)
    }
}

/// Why a head could not be parsed.
public enum HTTPHeadError: Error, Equatable, Sendable {
    case tooLarge(limit: Int)
    case malformed(String)
}

/// Accumulates bytes until a complete head (terminated by CRLF CRLF, or bare LF LF) is present.
public struct HTTPHeadParser: Sendable {
    public static let defaultLimit = 64 * 1024
    public let limit: Int
    private var buffer: [UInt8] = []

    public init(limit: Int = HTTPHeadParser.defaultLimit) { self.limit = limit }

    public var bufferedByteCount: Int { buffer.count }

    /// Feeds bytes; returns the head and how many of `bytes` it consumed once the head is complete.
    /// Bytes after the head are not consumed: they belong to the body or to the next protocol.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws -> (head: HTTPHead, consumed: Int)? {
        let start = buffer.count
        // Search for the end of head, allowing the terminator to straddle calls.
        var scanFrom = max(0, start - 3)
        buffer.append(contentsOf: bytes.prefix(max(0, limit + 4 - start)))
        while scanFrom < buffer.count {
            if buffer[scanFrom] == 0x0A {
                let isEnd: Bool
                if scanFrom >= 1 && buffer[scanFrom - 1] == 0x0A { isEnd = true }
                else if scanFrom >= 2 && buffer[scanFrom - 1] == 0x0D && buffer[scanFrom - 2] == 0x0A { isEnd = true }
                else { isEnd = false }
                // A leading empty line is not an end of head (RFC 9112 §2.2 lets servers skip it).
                if isEnd && scanFrom > 2 {
                    let headBytes = Array(buffer[0...scanFrom])
                    let consumed = headBytes.count - start
                    buffer.removeAll(keepingCapacity: false)
                    return (try Self.parse(headBytes), consumed)
                }
            }
            scanFrom += 1
        }
        if buffer.count > limit { throw HTTPHeadError.tooLarge(limit: limit) }
        return nil
    }

    public mutating func feed(_ bytes: [UInt8]) throws -> (head: HTTPHead, consumed: Int)? {
        try bytes.withUnsafeBytes { raw in try feed(raw) }
    }

    static func parse(_ bytes: [UInt8]) throws -> HTTPHead {
        // Split on LF bytes (a String would treat CRLF as one character). Header bytes are ISO-8859-1
        // by RFC 9110 §5.5: decode each byte as one scalar so nothing is lost.
        var lines: [Substring] = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map { raw in
            let trimmed = raw.last == 0x0D ? raw.dropLast() : raw
            return Substring(String(String.UnicodeScalarView(trimmed.map { Unicode.Scalar($0) })))
        }
        while let first = lines.first, first.isEmpty { lines.removeFirst() }
        while let last = lines.last, last.isEmpty { lines.removeLast() }
        guard let startText = lines.first else { throw HTTPHeadError.malformed("empty head") }
        let parts = startText.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        let startLine: HTTPHead.StartLine
        if startText.hasPrefix("HTTP/") {
            guard parts.count >= 2, let status = Int(parts[1]), (100...999).contains(status) else {
                throw HTTPHeadError.malformed("bad status line: \(startText.prefix(80))")
            }
            startLine = .response(version: String(parts[0]), status: status, reason: parts.count > 2 ? String(parts[2]) : "")
        } else {
            guard parts.count == 3, parts[2].hasPrefix("HTTP/"), !parts[0].isEmpty else {
                throw HTTPHeadError.malformed("bad request line: \(startText.prefix(80))")
            }
            startLine = .request(method: String(parts[0]), target: String(parts[1]), version: String(parts[2]))
        }
        var headers: [(name: String, value: String)] = []
        for line in lines.dropFirst() {
            if let firstChar = line.first, firstChar == " " || firstChar == "\t", !headers.isEmpty {
                // Obsolete line folding (RFC 9112 §5.2): join to the previous value.
                headers[headers.count - 1].value += " " + line.trimmingWhitespace()
                continue
            }
            guard let colon = line.firstIndex(of: ":") else { throw HTTPHeadError.malformed("header line without colon: \(line.prefix(80))") }
            headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingWhitespace()))
        }
        return HTTPHead(startLine: startLine, headers: headers, byteCount: bytes.count)
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    func trimmingWhitespace() -> String { Substring(self).trimmingWhitespace() }
}
