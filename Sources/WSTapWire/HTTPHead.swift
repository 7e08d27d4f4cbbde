/// An HTTP/1.1 request or response head, kept as the exact bytes it arrived with and read from them.
///
/// A debugging proxy shows what was sent and forwards what it received, so nothing here normalises:
/// header order, case, duplicates, whitespace, obsolete line folding and bare-LF line ends stay in
/// `bytes`. The parsed view (`startLine`, `headers`) decodes each byte as one ISO-8859-1 character
/// (RFC 9110 §5.5), which is lossless. Rewrites (`setRequestTarget`, `setHeader`, `removeHeaders`)
/// change only the bytes of the lines they touch.
public struct HTTPHead: Equatable, Sendable {
    public enum StartLine: Equatable, Sendable {
        case request(method: String, target: String, version: String)
        case response(version: String, status: Int, reason: String)
    }

    public private(set) var startLine: StartLine
    /// Header fields in wire order; values without surrounding whitespace, folded lines joined by a space.
    public private(set) var headers: [(name: String, value: String)]
    /// The head as received (or as rewritten), final empty line included.
    public private(set) var bytes: [UInt8]
    /// Some line ends in a bare LF instead of CRLF (RFC 9112 §2.2: a sender MUST use CRLF).
    public private(set) var hasBareLineFeeds: Bool
    /// Where the start line's text is in `bytes` (line ending excluded), and each field's lines
    /// (continuation lines and line endings included).
    private var startLineRange: Range<Int>
    private var fieldRanges: [Range<Int>]
    /// The start line's line ending, used for inserted fields so the head stays consistent.
    private var lineEnding: [UInt8]

    /// Length of the head in bytes, including the final empty line.
    public var byteCount: Int { bytes.count }

    /// A head wstap makes up (not read from the wire): CRLF line ends, one space after each colon.
    public init(startLine: StartLine, headers: [(name: String, value: String)]) {
        var text: String
        switch startLine {
        case .request(let method, let target, let version): text = "\(method) \(target) \(version)\r\n"
        case .response(let version, let status, let reason): text = "\(version) \(status) \(reason)\r\n"
        }
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        // Our own text never fails to parse; the fallback only keeps the initializer total.
        self = (try? Self.parse(Self.wireBytes(text))) ?? HTTPHead(startLine: startLine, fields: headers)
    }

    private init(startLine: StartLine, fields: [(name: String, value: String)]) {
        self.startLine = startLine
        self.headers = fields
        self.bytes = []
        self.hasBareLineFeeds = false
        self.startLineRange = 0..<0
        self.fieldRanges = []
        self.lineEnding = [0x0D, 0x0A]
    }

    public static func == (lhs: HTTPHead, rhs: HTTPHead) -> Bool { lhs.bytes == rhs.bytes }

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
    public var version: String {
        switch startLine {
        case .request(_, _, let version), .response(let version, _, _): version
        }
    }

    /// The head's bytes, for sending.
    public func encoded() -> [UInt8] { bytes }

    // MARK: - Rewriting

    /// Replaces the request target, keeping the method, the version and every byte around them.
    public mutating func setRequestTarget(_ target: String) {
        guard case .request = startLine else { return }
        let line = bytes[startLineRange]
        guard let firstSpace = line.firstIndex(of: 0x20),
              let secondSpace = line[(firstSpace + 1)...].firstIndex(of: 0x20) else { return }
        replace(firstSpace + 1..<secondSpace, with: Self.wireBytes(target))
    }

    /// Gives the first field named `name` this value (its name bytes and the whitespace after its colon
    /// stay) and removes later fields of that name; adds the field after the start line when absent.
    public mutating func setHeader(_ name: String, _ value: String) {
        let matches = fieldIndices(named: name)
        let valueBytes = Self.wireBytes(value).filter { $0 != 0x0D && $0 != 0x0A }
        guard let first = matches.first else {
            let line = Self.wireBytes(name) + [0x3A, 0x20] + valueBytes + lineEnding
            let afterStartLine = startLineRange.upperBound + lineEnding.count
            replace(afterStartLine..<afterStartLine, with: line)
            return
        }
        for index in matches.dropFirst().reversed() { replace(fieldRanges[index], with: []) }
        let range = fieldRanges[first]
        let field = bytes[range]
        let colon = field.firstIndex(of: 0x3A)!
        var valueStart = colon + 1
        while valueStart < range.upperBound, bytes[valueStart] == 0x20 || bytes[valueStart] == 0x09 { valueStart += 1 }
        // The value ends where this field's own line ending starts (folded continuations go with it).
        var end = range.upperBound
        if end > range.lowerBound, bytes[end - 1] == 0x0A { end -= 1 }
        if end > range.lowerBound, bytes[end - 1] == 0x0D { end -= 1 }
        replace(min(valueStart, end)..<end, with: valueBytes)
    }

    /// Removes every field named `name`, folded continuation lines included.
    public mutating func removeHeaders(_ name: String) {
        for index in fieldIndices(named: name).reversed() { replace(fieldRanges[index], with: []) }
    }

    private func fieldIndices(named name: String) -> [Int] {
        let lower = name.lowercased()
        return headers.indices.filter { headers[$0].name.lowercased() == lower }
    }

    /// Splices `replacement` into the bytes and reads the head again, so every range stays true.
    private mutating func replace(_ range: Range<Int>, with replacement: [UInt8]) {
        var changed = bytes
        changed.replaceSubrange(range, with: replacement)
        if let reparsed = try? Self.parse(changed) { self = reparsed }
    }

    /// A string as header bytes: characters up to U+00FF are the byte of that value (the inverse of
    /// how heads are decoded, so text taken from a head goes back as the bytes it came from); anything
    /// beyond is UTF-8.
    public static func wireBytes(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            if scalar.value <= 0xFF { out.append(UInt8(scalar.value)) } else { out += Array(String(scalar).utf8) }
        }
        return out
    }

    // MARK: - Parsing

    /// Reads a complete head (start line, fields, the empty line) from `bytes`.
    static func parse(_ bytes: [UInt8]) throws -> HTTPHead {
        // Lines as byte ranges, each with its LF; a String would treat CRLF as one character.
        var lines: [(content: Range<Int>, whole: Range<Int>)] = []
        var bareLF = false
        var start = 0
        for index in bytes.indices where bytes[index] == 0x0A {
            let hasCR = index > start && bytes[index - 1] == 0x0D
            if !hasCR { bareLF = true }
            lines.append((start..<(hasCR ? index - 1 : index), start..<(index + 1)))
            start = index + 1
        }
        if start < bytes.count { lines.append((start..<bytes.count, start..<bytes.count)) }
        // A leading empty line is tolerated (RFC 9112 §2.2); the final one ends the head.
        var first = 0
        while first < lines.count, lines[first].content.isEmpty { first += 1 }
        guard first < lines.count else { throw HTTPHeadError.malformed("empty head") }
        var last = lines.count
        while last > first + 1, lines[last - 1].content.isEmpty { last -= 1 }

        let startRange = lines[first].content
        let startText = latin1(bytes[startRange])
        let parts = startText.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        let startLine: StartLine
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
        var ranges: [Range<Int>] = []
        for line in lines[(first + 1)..<last] {
            let content = bytes[line.content]
            if let lead = content.first, lead == 0x20 || lead == 0x09 {
                // RFC 9112 §2.2: whitespace between the start line and the first field MUST be rejected
                // (or ignored): taken as a field it could become part of one that wstap inserts.
                guard !headers.isEmpty else { throw HTTPHeadError.malformed("whitespace before the first header field") }
                // Obsolete line folding (RFC 9112 §5.2): part of the previous field's value.
                headers[headers.count - 1].value += " " + latin1(content).trimmingWhitespace()
                ranges[ranges.count - 1] = ranges[ranges.count - 1].lowerBound..<line.whole.upperBound
                continue
            }
            guard let colon = content.firstIndex(of: 0x3A) else {
                throw HTTPHeadError.malformed("header line without colon: \(latin1(content).prefix(80))")
            }
            // A field name is a token (RFC 9110 §5.1): "Host :" or an empty name would be read
            // differently by different servers, so such a head is not followed but refused.
            guard colon > line.content.lowerBound, bytes[line.content.lowerBound..<colon].allSatisfy(HTTPHeadParser.isTokenCharacter) else {
                throw HTTPHeadError.malformed("header field name is not a token: \(latin1(bytes[line.content.lowerBound..<colon]).prefix(80))")
            }
            headers.append((latin1(bytes[line.content.lowerBound..<colon]), latin1(bytes[(colon + 1)..<line.content.upperBound]).trimmingWhitespace()))
            ranges.append(line.whole)
        }
        var head = HTTPHead(startLine: startLine, fields: headers)
        head.bytes = bytes
        head.hasBareLineFeeds = bareLF
        head.startLineRange = startRange
        head.fieldRanges = ranges
        head.lineEnding = lines[first].whole.count > startRange.count + 1 ? [0x0D, 0x0A] : [0x0A]
        return head
    }

    private static func latin1(_ bytes: ArraySlice<UInt8>) -> String {
        String(String.UnicodeScalarView(bytes.map { Unicode.Scalar($0) }))
    }
}

/// Why a head could not be parsed.
public enum HTTPHeadError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooLarge(limit: Int)
    case malformed(String)
    /// The first bytes cannot begin an HTTP head of the expected kind (`prefix`: what they were).
    case notHTTP(prefix: [UInt8])

    public var description: String {
        switch self {
        case .tooLarge(let limit): "the head is larger than \(limit) bytes"
        case .malformed(let text): text
        case .notHTTP(let prefix): "not HTTP: the bytes start \(prefix.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " "))"
        }
    }

    /// The bytes start like a TLS record (0x16, a handshake: a ClientHello sent to a plain HTTP port).
    /// One byte decides, as the error is raised at the first byte that cannot be HTTP.
    public var looksLikeTLS: Bool {
        if case .notHTTP(let prefix) = self { return prefix.first == 0x16 }
        return false
    }
}

/// Accumulates bytes until a complete head (terminated by CRLF CRLF, or bare LF LF) is present.
public struct HTTPHeadParser: Sendable {
    public static let defaultLimit = 64 * 1024

    /// What the bytes must start with; a stream that cannot be HTTP is refused at its first bytes
    /// rather than after `limit` of them.
    public enum Expecting: Sendable {
        case request, response, either
    }

    public let limit: Int
    public let expecting: Expecting
    private var buffer: [UInt8] = []
    /// Index in `buffer` of the first byte after any leading empty lines, once one arrived.
    private var contentStart: Int?

    public init(limit: Int = HTTPHeadParser.defaultLimit, expecting: Expecting = .either) {
        self.limit = limit
        self.expecting = expecting
    }

    public var bufferedByteCount: Int { buffer.count }

    /// Hands back what was buffered of an incomplete head (to pass it on untouched) and starts afresh.
    public mutating func takeBuffered() -> [UInt8] {
        defer {
            buffer = []
            contentStart = nil
        }
        return buffer
    }

    /// Feeds bytes; returns the head and how many of `bytes` it consumed once the head is complete.
    /// Bytes after the head are not consumed: they belong to the body or to the next protocol.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) throws -> (head: HTTPHead, consumed: Int)? {
        let start = buffer.count
        // Search for the end of head, allowing the terminator to straddle calls.
        var scanFrom = max(0, start - 3)
        buffer.append(contentsOf: bytes.prefix(max(0, limit + 4 - start)))
        // Leading empty lines are skipped (RFC 9112 §2.2), so an end of head only counts after the
        // first byte of the start line; `contentStart` is found once, however the bytes arrive.
        if contentStart == nil, let first = buffer[start...].firstIndex(where: { $0 != 0x0D && $0 != 0x0A }) { contentStart = first }
        guard let contentStart else {
            if buffer.count > limit { throw HTTPHeadError.tooLarge(limit: limit) }
            return nil
        }
        // The first 16 bytes of the start line decide whether this can be HTTP at all: checked until
        // they have all been seen, wherever the pieces begin and end.
        if start - contentStart < 16, let problem = startProblem() { throw problem }
        scanFrom = max(scanFrom, contentStart)
        while scanFrom < buffer.count {
            if buffer[scanFrom] == 0x0A {
                let isEnd: Bool
                if scanFrom >= 1 && buffer[scanFrom - 1] == 0x0A { isEnd = true }
                else if scanFrom >= 2 && buffer[scanFrom - 1] == 0x0D && buffer[scanFrom - 2] == 0x0A { isEnd = true }
                else { isEnd = false }
                if isEnd && scanFrom - 1 > contentStart {
                    let headBytes = Array(buffer[0...scanFrom])
                    let consumed = headBytes.count - start
                    buffer.removeAll(keepingCapacity: false)
                    self.contentStart = nil
                    return (try HTTPHead.parse(headBytes), consumed)
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

    /// Whether the first bytes can begin a head: a request line starts with a method token (RFC 9110
    /// §5.6.2 tchars) and a space, a status line with "HTTP/". Leading empty lines are skipped. The
    /// error shows the bytes up to the first one that rules HTTP out, so it does not depend on how
    /// the stream was split.
    private func startProblem() -> HTTPHeadError? {
        var start = 0
        while start < buffer.count, buffer[start] == 0x0D || buffer[start] == 0x0A { start += 1 }
        let text = Array(buffer[start...].prefix(16))
        guard !text.isEmpty else { return nil }
        // Index in `text` of the first byte that rules each kind out, nil while it is still possible.
        let statusPrefix = Array("HTTP/".utf8)
        let notStatus = text.indices.first { $0 < statusPrefix.count && text[$0] != statusPrefix[$0] }
        var notRequest: Int?
        for (index, byte) in text.enumerated() {
            if byte == 0x20 {
                if index == 0 { notRequest = 0 }
                break
            }
            if !Self.isTokenCharacter(byte) { notRequest = index; break }
        }
        let ruledOut: Int?
        switch expecting {
        case .request: ruledOut = notRequest
        case .response: ruledOut = notStatus
        case .either: ruledOut = notRequest.flatMap { request in notStatus.map { max(request, $0) } }
        }
        return ruledOut.map { HTTPHeadError.notHTTP(prefix: Array(buffer[..<(start + $0 + 1)])) }
    }

    static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
        default: false
        }
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
