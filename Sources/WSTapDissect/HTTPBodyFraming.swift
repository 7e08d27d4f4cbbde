import WSTapWire

/// Skips an HTTP/1.1 message body (RFC 9112 §6): by Content-Length, by chunked coding, or until the
/// connection closes. The tap does not keep bodies; it only needs to know where the next head starts.
public struct HTTPBodyFraming: Sendable {
    enum Mode: Sendable, Equatable {
        case length(UInt64)
        case chunkSizeLine
        case chunkData(UInt64)
        case chunkDataEnd  // the CRLF after chunk data
        case trailers
        case untilClose
        case done
    }

    private(set) var mode: Mode
    private var lineLength = 0
    private var line: [UInt8] = []

    public var isDone: Bool { mode == .done }

    /// Framing of a request body; requests without Content-Length or chunked have none.
    public static func forRequest(_ head: HTTPHead) throws -> HTTPBodyFraming {
        if head.tokens("transfer-encoding").last == "chunked" { return HTTPBodyFraming(mode: .chunkSizeLine) }
        return HTTPBodyFraming(mode: try contentLength(head).map { $0 == 0 ? .done : .length($0) } ?? .done)
    }

    /// Framing of a response body, given the request method it answers (HEAD and 1xx/204/304 have none).
    public static func forResponse(_ head: HTTPHead, requestMethod: String?) throws -> HTTPBodyFraming {
        let status = head.status ?? 0
        if requestMethod == "HEAD" || (100..<200).contains(status) || status == 204 || status == 304 {
            return HTTPBodyFraming(mode: .done)
        }
        if head.tokens("transfer-encoding").last == "chunked" { return HTTPBodyFraming(mode: .chunkSizeLine) }
        if let length = try contentLength(head) { return HTTPBodyFraming(mode: length == 0 ? .done : .length(length)) }
        return HTTPBodyFraming(mode: .untilClose)
    }

    private static func contentLength(_ head: HTTPHead) throws -> UInt64? {
        let values = Set(head.values("content-length").flatMap { $0.split(separator: ",").map { $0.trimmingCharacters() } })
        guard let first = values.first else { return nil }
        guard values.count == 1, let length = UInt64(first) else { throw HTTPHeadError.malformed("bad Content-Length") }
        return length
    }

    private init(mode: Mode) { self.mode = mode }

    /// Consumes body bytes from `input` starting at `index`; stops at the end of the body.
    public mutating func consume(_ input: UnsafeRawBufferPointer, index: inout Int) throws {
        while index < input.count {
            switch mode {
            case .done:
                return
            case .untilClose:
                index = input.count
            case .length(let remaining), .chunkData(let remaining):
                let take = Int(min(UInt64(input.count - index), remaining))
                index += take
                let left = remaining - UInt64(take)
                if case .length = mode { mode = left == 0 ? .done : .length(left) } else { mode = left == 0 ? .chunkDataEnd : .chunkData(left) }
            case .chunkSizeLine, .chunkDataEnd, .trailers:
                guard let text = try readLine(input, index: &index) else { return }
                switch mode {
                case .chunkSizeLine:
                    let hex = text.split(separator: ";").first.map { $0.trimmingCharacters() } ?? ""
                    guard let size = UInt64(hex, radix: 16) else { throw HTTPHeadError.malformed("bad chunk size") }
                    mode = size == 0 ? .trailers : .chunkData(size)
                case .chunkDataEnd:
                    guard text.isEmpty else { throw HTTPHeadError.malformed("chunk data not followed by CRLF") }
                    mode = .chunkSizeLine
                default:
                    if text.isEmpty { mode = .done }
                }
            }
        }
    }

    private mutating func readLine(_ input: UnsafeRawBufferPointer, index: inout Int) throws -> String? {
        while index < input.count {
            let byte = input[index]
            index += 1
            if byte == 0x0A {
                if line.last == 0x0D { line.removeLast() }
                defer { line.removeAll(keepingCapacity: true) }
                return String(decoding: line, as: UTF8.self)
            }
            line.append(byte)
            if line.count > 8192 { throw HTTPHeadError.malformed("chunk line too long") }
        }
        return nil
    }
}

extension Substring {
    func trimmingCharacters() -> String {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
