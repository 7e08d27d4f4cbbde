import Synchronization
import WSTapDissect
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// `--har FILE`: a HAR 1.2 log with one entry per WebSocket connection, in Chrome's format
/// (`_resourceType: "websocket"`, `_webSocketMessages`), and one per plain HTTP exchange.
///
/// The file is valid JSON at every moment: each entry is written before the closing `]}}`, which is
/// rewritten after it. A connection's messages are spooled to an unlinked temporary file while it is
/// open, so memory does not grow with the number of messages; its entry is written when it ends, or
/// by `finish()` (Ctrl-C) for connections still open.
public final class HARSink: RecordSink {
    private struct OpenEntry {
        var prefix: [UInt8]   // the entry up to "_webSocketMessages":[
        var spool: Int32      // messages, comma-separated
        var messageCount = 0
    }

    private struct State {
        var fd: Int32
        var trailerOffset: off_t
        var entries = 0
        var open: [UInt64: OpenEntry] = [:]
    }

    private let state: Mutex<State>
    private static let trailer = Array("]}}\n".utf8)

    public struct OpenError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(path: String, creatorVersion: String) throws {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw OpenError(description: "cannot open '\(path)' for writing: \(String(cString: strerror(errno)))") }
        let header = Array("{\"log\":{\"version\":\"1.2\",\"creator\":{\"name\":\"wstap\",\"version\":\"\(creatorVersion)\"},\"pages\":[],\"entries\":[".utf8)
        Self.writeAll(fd, header + Self.trailer, at: 0)
        state = Mutex(State(fd: fd, trailerOffset: off_t(header.count)))
    }

    deinit { state.withLock { _ = Glibc.close($0.fd) } }

    /// A whole HAR log of these records in memory (the control API's export), written through a
    /// temporary file as `--har` writes one.
    public static func log(of records: [TapRecord], creatorVersion: String) throws -> [UInt8] {
        var template = Array("\(ProcessEnvironment.temporaryDirectory)/wstap-export-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw OpenError(description: "cannot make a temporary file in \(ProcessEnvironment.temporaryDirectory): \(String(cString: strerror(errno)))") }
        Glibc.close(fd)
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { _ = unlink(path) }
        let sink = try HARSink(path: path, creatorVersion: creatorVersion)
        sink.write(records)
        sink.finish()
        return sink.state.withLock { Self.readAll($0.fd) }
    }

    public func write(_ records: [TapRecord]) {
        state.withLock { state in
            for record in records { handle(record, &state) }
        }
    }

    /// Writes entries for connections still open (their messages so far). Call once when stopping.
    public func finish() {
        state.withLock { state in
            for conn in state.open.keys.sorted() { close(conn, &state) }
        }
    }

    private func handle(_ record: TapRecord, _ state: inout State) {
        switch record.body {
        case .open(let open):
            var writer = JSONWriter()
            // A session found mid-stream has no captured upgrade; HAR still wants a response.
            let response = open.response ?? HTTPHead(startLine: .response(version: "HTTP/1.1", status: 101, reason: "Switching Protocols (not captured)"), headers: [])
            writeEntryStart(&writer, started: record.timestamp, request: open.request, url: open.url, response: response,
                            responseCaptured: open.response != nil,
                            websocket: true, sizes: (0, 0), durationNanoseconds: 0)
            if let address = Self.ipAddress(open.server) { writer.key("serverIPAddress"); writer.string(address) }
            writer.key("_webSocketMessages")
            var prefix = writer.bytes
            prefix.append(UInt8(ascii: "["))
            let spool = Self.makeSpool()
            guard spool >= 0 else { return }
            state.open[record.connection] = OpenEntry(prefix: prefix, spool: spool)
        case .message(let message):
            guard var entry = state.open[record.connection] else { return }
            var writer = JSONWriter()
            if entry.messageCount > 0 { writer.rawComma() }
            writer.beginObject()
            writer.key("type"); writer.string(message.direction == .clientToServer ? "send" : "receive")
            writer.key("time"); writer.timestamp(nanoseconds: record.timestamp.nanoseconds)
            writer.key("opcode"); writer.integer(message.opcode.rawValue)
            writer.key("data")
            if message.opcode == .text && !message.inflateFailed { writer.string(utf8: message.payload) } else { writer.base64(message.payload) }
            // HAR has no word for a payload cut at --max-payload or one that did not inflate: wstap's
            // own members say so, so a HAR read back (for replay) does not pass them off as whole.
            if message.truncated {
                writer.key("_truncated"); writer.bool(true)
                writer.key("_length"); writer.integer(message.length)
            }
            if message.inflateFailed { writer.key("_inflateFailed"); writer.bool(true) }
            writer.endObject()
            writer.withBytes { Self.append(entry.spool, $0) }
            entry.messageCount += 1
            state.open[record.connection] = entry
        case .end:
            close(record.connection, &state)
        case .http(let exchange):
            var writer = JSONWriter()
            let url = exchange.url ?? ""
            let started = Timestamp(nanoseconds: record.timestamp.nanoseconds - exchange.durationNanoseconds)
            writeEntryStart(&writer, started: started, request: exchange.request, url: url, response: exchange.response, websocket: false,
                            sizes: (exchange.requestBodyBytes, exchange.responseBodyBytes), durationNanoseconds: exchange.durationNanoseconds)
            writer.endObject()
            appendEntry(writer.bytes, &state)
        case .frame, .diagnostic, .gap, .change:
            break  // HAR keeps messages as wstap received them; change records say what was sent instead
        }
    }

    private func close(_ conn: UInt64, _ state: inout State) {
        guard let entry = state.open.removeValue(forKey: conn) else { return }
        var bytes = entry.prefix
        bytes += Self.readAll(entry.spool)
        bytes += Array("]}".utf8)
        Glibc.close(entry.spool)
        appendEntry(bytes, &state)
    }

    private func appendEntry(_ entry: [UInt8], _ state: inout State) {
        var bytes: [UInt8] = state.entries > 0 ? [UInt8(ascii: ",")] : []
        bytes += entry
        Self.writeAll(state.fd, bytes + Self.trailer, at: state.trailerOffset)
        state.trailerOffset += off_t(bytes.count)
        state.entries += 1
    }

    /// The fields HAR 1.2 requires of an entry, up to (not including) Chrome's extensions' values.
    private func writeEntryStart(_ w: inout JSONWriter, started: Timestamp, request: HTTPHead?, url: String, response: HTTPHead,
                                 responseCaptured: Bool = true, websocket: Bool,
                                 sizes: (request: UInt64, response: UInt64), durationNanoseconds: Int64) {
        w.beginObject()
        w.key("startedDateTime"); w.string(Self.iso8601(started))
        w.key("time"); w.number(milliseconds: durationNanoseconds)
        w.key("request"); w.beginObject()
        w.key("method"); w.string(request?.method ?? "GET")
        w.key("url"); w.string(url)
        w.key("httpVersion"); w.string(request?.version ?? "HTTP/1.1")
        w.key("headers"); Self.headers(request?.headers ?? [], &w)
        w.key("queryString"); w.beginArray(); w.endArray()
        w.key("cookies"); w.beginArray(); w.endArray()
        w.key("headersSize"); w.integer(request?.byteCount ?? -1)
        w.key("bodySize"); w.integer(sizes.request)
        w.endObject()
        w.key("response"); w.beginObject()
        w.key("status"); w.integer(response.status ?? 0)
        w.key("statusText"); w.string(response.reason ?? "")
        w.key("httpVersion"); w.string(response.version)
        w.key("headers"); Self.headers(response.headers, &w)
        w.key("cookies"); w.beginArray(); w.endArray()
        w.key("content"); w.beginObject(); w.key("size"); w.integer(sizes.response); w.key("mimeType"); w.string(response.value("content-type") ?? ""); w.endObject()
        w.key("redirectURL"); w.string(response.value("location") ?? "")
        w.key("headersSize"); w.integer(responseCaptured ? response.byteCount : -1)
        w.key("bodySize"); w.integer(sizes.response)
        w.endObject()
        w.key("cache"); w.beginObject(); w.endObject()
        w.key("timings"); w.beginObject(); w.key("send"); w.integer(0); w.key("wait"); w.number(milliseconds: durationNanoseconds); w.key("receive"); w.integer(0); w.endObject()
        if websocket { w.key("_resourceType"); w.string("websocket") }
    }

    /// "127.0.0.1" of "127.0.0.1:8080", "::1" of "[::1]:8080" (HAR's serverIPAddress has no port).
    static func ipAddress(_ hostPort: String) -> String? {
        guard let colon = hostPort.lastIndex(of: ":"), colon != hostPort.startIndex else { return nil }
        var host = hostPort[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return host.isEmpty ? nil : String(host)
    }

    private static func headers(_ headers: [(name: String, value: String)], _ w: inout JSONWriter) {
        w.beginArray()
        for (name, value) in headers {
            w.beginObject(); w.key("name"); w.string(name); w.key("value"); w.string(value); w.endObject()
        }
        w.endArray()
    }

    static func iso8601(_ ts: Timestamp) -> String {
        var seconds = time_t(ts.nanoseconds / 1_000_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int32, _ width: Int = 2) -> String { String(repeating: "0", count: max(0, width - String(v).count)) + String(v) }
        let millis = Int32(ts.nanoseconds / 1_000_000 % 1000)
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)).\(pad(millis, 3))Z"
    }

    private static func makeSpool() -> Int32 {
        var template = Array("\(ProcessEnvironment.temporaryDirectory)/wstap-har-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        if fd >= 0 { template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) } }  // gone when closed
        return fd
    }

    private static func append(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n <= 0 { if errno == EINTR { continue }; return }
            offset += n
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: off_t) {
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = pwrite(fd, raw.baseAddress! + done, raw.count - done, offset + off_t(done))
                if n <= 0 { if errno == EINTR { continue }; return }
                done += n
            }
        }
    }

    private static func readAll(_ fd: Int32) -> [UInt8] {
        let size = Int(lseek(fd, 0, SEEK_END))
        guard size > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: size)
        let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, size, 0) }
        return read == size ? bytes : Array(bytes.prefix(max(0, read)))
    }
}

enum ProcessEnvironment {
    static var temporaryDirectory: String {
        if let dir = getenv("TMPDIR") { return String(cString: dir) }
        return "/tmp"
    }
}

extension JSONWriter {
    /// A bare comma between two top-level values written by separate writers (HAR message spool).
    mutating func rawComma() { appendRaw(UInt8(ascii: ",")) }
}
