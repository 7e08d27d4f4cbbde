import WSTapControl
import WSTapRelay

#if canImport(Glibc)
import Glibc
#endif

/// A small blocking HTTP/1.1 client for `wstap ctl`: one request per connection, to the control
/// port on loopback (or wherever `--ui` put it). The push stream is read chunk by chunk as it comes.
struct ControlClient {
    let host: String
    let port: Int
    let token: String

    /// `http://HOST:PORT/?token=T` as the proxy printed it.
    init(url: String) throws(ControlClientError) {
        guard url.hasPrefix("http://") else { throw ControlClientError("the control URL starts with http:// (copy the line wstap proxy --ui printed)") }
        let rest = url.dropFirst("http://".count)
        let authority = rest.prefix { $0 != "/" && $0 != "?" }
        guard let tokenStart = rest.range(of: "token=") else {
            throw ControlClientError("the control URL has no ?token=…: copy the whole address wstap proxy --ui printed")
        }
        token = String(rest[tokenStart.upperBound...].prefix { $0 != "&" })
        do {
            let parsed = try UpstreamURL.parseAuthority(String(authority), defaultPort: 80, allowPortZero: false)
            (host, port) = parsed
        } catch {
            throw ControlClientError("the control URL '\(url)': \(error)")
        }
    }

    struct Response {
        var status: Int
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// A whole request and its whole response.
    func call(_ method: String, _ target: String, body: [UInt8] = [], contentType: String = "application/json") throws(ControlClientError) -> Response {
        let fd = try open()
        defer { close(fd) }
        try send(fd, method, target, body: body, contentType: contentType)
        var reader = Reader(fd: fd)
        let (status, headers) = try reader.head()
        var content: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while let chunk = try reader.chunk() { content += chunk }
        } else if let length = headers["content-length"].flatMap({ Int($0) }) {
            content = try reader.exactly(length)
        } else {
            content = reader.rest()
        }
        return Response(status: status, body: content)
    }

    /// The push stream: `event(name, id, data)` for each event as it arrives, until the server ends
    /// it or `event` returns false.
    func stream(_ target: String, event: (String, String?, String) -> Bool) throws(ControlClientError) {
        let fd = try open()
        defer { close(fd) }
        try send(fd, "GET", target, body: [], contentType: "application/json")
        var reader = Reader(fd: fd)
        let (status, _) = try reader.head()
        guard status == 200 else {
            var body: [UInt8] = []
            while let chunk = try? reader.chunk() { body += chunk }
            throw ControlClientError(Self.reason(status: status, body: body))
        }
        var pending: [UInt8] = []
        while let chunk = try reader.chunk() {
            pending += chunk
            // Events end with a blank line.
            while let end = Self.find([0x0A, 0x0A], in: pending) {
                let block = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeSubrange(..<(end + 2))
                var name = "message", id: String?, data = ""
                for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                    if line.hasPrefix("event: ") { name = String(line.dropFirst(7)) }
                    else if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
                    else if line.hasPrefix("data: ") { data += (data.isEmpty ? "" : "\n") + line.dropFirst(6) }
                }
                if block.hasPrefix(":") && id == nil && data.isEmpty { continue }  // keep-alive comment
                guard event(name, id, data) else { return }
            }
        }
    }

    /// The error the API answered, as one line.
    static func reason(status: Int, body: [UInt8]) -> String {
        let text = String(decoding: body, as: UTF8.self)
        if let start = text.range(of: #""error":""#) {
            var reason = ""
            var escaped = false
            for character in text[start.upperBound...] {
                if escaped { reason.append(character); escaped = false; continue }
                if character == "\\" { escaped = true; continue }
                if character == "\"" { break }
                reason.append(character)
            }
            return "\(status): \(reason)"
        }
        return "\(status): \(text)"
    }

    // MARK: - Socket

    private func open() throws(ControlClientError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let bare = host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host
        guard getaddrinfo(bare, String(port), &hints, &list) == 0, let first = list else {
            throw ControlClientError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        var lastError = ECONNREFUSED
        while let info = entry {
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            if fd >= 0 {
                if connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
                lastError = errno
                close(fd)
            }
            entry = info.pointee.ai_next
        }
        throw ControlClientError("cannot connect to the control API at \(host):\(port): \(String(cString: strerror(lastError))). Is wstap proxy --ui running there?")
    }

    private func send(_ fd: Int32, _ method: String, _ target: String, body: [UInt8], contentType: String) throws(ControlClientError) {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: \(host):\(port)\r\nAuthorization: Bearer \(token)\r\nConnection: close\r\n"
        if !body.isEmpty || method == "POST" || method == "PUT" { head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n" }
        let bytes = Array((head + "\r\n").utf8) + body
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ControlClientError("cannot write to the control API: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int = 0) -> Int? {
        guard haystack.count >= needle.count + from else { return nil }
        for index in from...(haystack.count - needle.count) where haystack[index] == needle[0] && Array(haystack[index..<(index + needle.count)]) == needle {
            return index
        }
        return nil
    }

    /// Buffered reads from the socket.
    private struct Reader {
        let fd: Int32
        var buffer: [UInt8] = []
        var ended = false

        mutating func fill() throws(ControlClientError) {
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 { throw ControlClientError("cannot read from the control API: \(String(cString: strerror(errno)))") }
                if n == 0 { ended = true } else { buffer += chunk[..<n] }
                return
            }
        }

        mutating func line() throws(ControlClientError) -> String {
            while true {
                if let end = ControlClient.find([0x0D, 0x0A], in: buffer) {
                    let line = String(decoding: buffer[..<end], as: UTF8.self)
                    buffer.removeSubrange(..<(end + 2))
                    return line
                }
                guard !ended else { throw ControlClientError("the control API closed the connection mid-answer") }
                try fill()
            }
        }

        mutating func head() throws(ControlClientError) -> (Int, [String: String]) {
            let status = try line().split(separator: " ")
            guard status.count >= 2, let code = Int(status[1]) else { throw ControlClientError("the control API answered something that is not HTTP") }
            var headers: [String: String] = [:]
            while true {
                let header = try line()
                if header.isEmpty { break }
                if let colon = header.firstIndex(of: ":") {
                    headers[header[..<colon].lowercased()] = String(header[header.index(after: colon)...].drop { $0 == " " })
                }
            }
            return (code, headers)
        }

        mutating func exactly(_ count: Int) throws(ControlClientError) -> [UInt8] {
            while buffer.count < count {
                guard !ended else { throw ControlClientError("the control API closed the connection mid-answer") }
                try fill()
            }
            let bytes = Array(buffer[..<count])
            buffer.removeSubrange(..<count)
            return bytes
        }

        /// The next chunk of a chunked body; nil at its end (or the connection's).
        mutating func chunk() throws(ControlClientError) -> [UInt8]? {
            if buffer.isEmpty && !ended { try fill() }
            if buffer.isEmpty && ended { return nil }
            guard let size = Int(try line().prefix { $0 != ";" }, radix: 16) else { throw ControlClientError("a chunk size that is not hex") }
            if size == 0 { return nil }
            let data = try exactly(size)
            _ = try exactly(2)
            return data
        }

        mutating func rest() -> [UInt8] {
            while !ended { if (try? fill()) == nil { break } }
            return buffer
        }
    }
}

struct ControlClientError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
