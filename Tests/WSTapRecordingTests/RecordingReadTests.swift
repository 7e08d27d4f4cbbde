import Foundation
import Testing
import WSTapCapture
import WSTapDissect
import WSTapFormats
import WSTapRecording
import WSTapWire

/// The reference captures in ../shared/captures, and this target's HAR fixtures (written from the shapes
/// Chrome DevTools, mitmproxy's savehar addon and HTTP Toolkit document for `_webSocketMessages`).
enum Files {
    static let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let captures = here.appendingPathComponent("../../../shared/captures").standardized
    static func fixture(_ name: String) -> String { here.appendingPathComponent("Fixtures/\(name)").path }

    static var sharedCaptures: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: captures.path)) ?? [])
            .filter { $0.hasSuffix(".pcap") || $0.hasSuffix(".pcapng") }.sorted()
    }

    /// A capture's records, decrypted with its embedded secrets when it has any.
    static func records(capture name: String) throws -> [TapRecord] {
        let path = captures.appendingPathComponent(name).path
        let session = CaptureSession()
        if let secrets = PcapngSecrets.keyLogText(path: path) {
            session.keyLog = TLSKeyLog()
            session.keyLog!.add(text: secrets)
        }
        var all: [TapRecord] = []
        _ = try PcapFile.read(path: path, session: session) { all += $0 }
        return all
    }

    static func temporary(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("wstap-\(UUID().uuidString)-\(name)").path
    }

    static func fields(_ head: HTTPHead?) -> [String] {
        guard let head else { return [] }
        return ["\(head.startLine)"] + head.headers.map { "\($0.name): \($0.value)" }
    }

    static func lines(_ records: [TapRecord]) -> [String] { records.map(JSONLinesEncoder.line) }

    static func recording(_ records: [TapRecord]) -> Recording {
        var builder = RecordingBuilder()
        for record in records { builder.add(record) }
        return builder.recording
    }
}

@Suite(.enabled(if: FileManager.default.fileExists(atPath: Files.captures.path)))
struct JSONLinesRoundTripTests {
    /// Every record of every shared capture (opens with heads, http exchanges, frames, messages,
    /// diagnostics, gaps, ends) reads back from its line and writes the same line again, from a file.
    @Test(arguments: Files.sharedCaptures)
    func everyRecordOfASharedCaptureReadsBackToTheSameLine(_ capture: String) throws {
        let records = try Files.records(capture: capture)
        #expect(!records.isEmpty)
        let lines = Files.lines(records)
        let path = Files.temporary("roundtrip.jsonl")
        defer { try? FileManager.default.removeItem(atPath: path) }
        try lines.joined().write(toFile: path, atomically: false, encoding: .utf8)
        var read: [TapRecord] = []
        try JSONLinesReader.read(path: path) { read.append($0) }
        #expect(Files.lines(read) == lines)
        // The recording from the JSONL is the recording from the capture, frame shapes included.
        let fromCapture = Files.recording(records), fromLines = Files.recording(read)
        #expect(fromLines.connections.map(\.messages) == fromCapture.connections.map(\.messages))
        // Heads come back as their start line and fields (spacing after the colon is not kept).
        #expect(fromLines.connections.map { Files.fields($0.open.request) } == fromCapture.connections.map { Files.fields($0.open.request) })
        #expect(fromLines.connections.map { Files.fields($0.open.response) } == fromCapture.connections.map { Files.fields($0.open.response) })
    }

    /// Through HAR only messages survive (no frames, no compression flag): the same messages, payloads
    /// and heads, and a connection per WebSocket session.
    @Test(arguments: Files.sharedCaptures)
    func aSharedCaptureWrittenAsHARReadsBackToTheSameMessages(_ capture: String) throws {
        let records = try Files.records(capture: capture)
        let path = Files.temporary("capture.har")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try HARSink(path: path, creatorVersion: "test")
        sink.write(records)
        sink.finish()
        #expect(try RecordingFile.kind(of: path) == .har)
        let fromCapture = Files.recording(records), fromHAR = try RecordingFile.recording(path: path)
        #expect(fromHAR.connections.count == fromCapture.connections.count)
        for (har, original) in zip(fromHAR.connections, fromCapture.connections) {
            #expect(har.open.discovery == "har")
            #expect(har.open.server == original.open.server)
            // A session found mid-stream has no heads; HAR cannot say so and gets a made-up GET.
            if original.open.request != nil {
                #expect(Files.fields(har.open.request) == Files.fields(original.open.request))
                #expect(Files.fields(har.open.response) == Files.fields(original.open.response))
            }
            #expect(har.messages.map(\.direction) == original.messages.map(\.direction))
            #expect(har.messages.map(\.opcode) == original.messages.map(\.opcode))
            #expect(har.messages.allSatisfy { $0.frameLengths == nil && $0.compressed == $0.inflateFailed })
            // A payload cut at --max-payload, or one that did not inflate, says so through HAR too
            // (wstap's own members), so a replay of the HAR refuses it as it would the capture.
            #expect(har.messages.map(\.truncated) == original.messages.map(\.truncated))
            #expect(har.messages.map(\.inflateFailed) == original.messages.map { $0.inflateFailed && !$0.opcode.isControl })
            for (a, b) in zip(har.messages, original.messages) where b.truncated { #expect(a.length == b.length) }
            // Text that is not UTF-8 cannot be HAR text (it becomes U+FFFD there); the rest is exact.
            for (a, b) in zip(har.messages, original.messages)
            where b.opcode != .text || b.inflateFailed || String(validating: b.payload, as: UTF8.self) != nil {
                #expect(a.payload == b.payload)
            }
        }
    }

    @Test func kindsAreToldApartByTheirFirstBytes() throws {
        for capture in Files.sharedCaptures {
            #expect(try RecordingFile.kind(of: Files.captures.appendingPathComponent(capture).path) == .capture)
        }
        for fixture in ["chrome-devtools.har", "mitmproxy.har", "http-toolkit.har"] {
            #expect(try RecordingFile.kind(of: Files.fixture(fixture)) == .har)
        }
        #expect(RecordingFile.kind(ofFirstBytes: Array(#"{"v":1,"type":"open","conn":1}"#.utf8)) == .jsonLines)
        #expect(RecordingFile.kind(ofFirstBytes: [0xEF, 0xBB, 0xBF] + Array("\r\n {  \"log\": {".utf8)) == .har)
        // Neither: the capture reader says what it is not (a file of zeros is no endless JSON line).
        #expect(RecordingFile.kind(ofFirstBytes: [0, 0, 0, 0, 0]) == .capture)
        #expect(throws: RecordingFile.Failure.self) { _ = try RecordingFile.kind(of: "/nonexistent/file.jsonl") }
    }
}

@Suite struct HARFixtureTests {
    /// The same session as each of three tools writes it: one handshake, four messages, one connection.
    @Test(arguments: ["chrome-devtools.har", "mitmproxy.har", "http-toolkit.har"])
    func eachToolsHARReadsToTheSameSession(_ fixture: String) throws {
        let recording = try RecordingFile.recording(path: Files.fixture(fixture))
        let connection = try #require(recording.connections.last)
        #expect(connection.open.url == "ws://127.0.0.1:8765/chat?room=1")
        #expect(connection.open.server == "127.0.0.1:8765" || fixture == "http-toolkit.har")
        let request = try #require(connection.open.request)
        #expect(request.method == "GET" && request.target == "/chat?room=1" && request.version == "HTTP/1.1")
        #expect(request.value("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ==")
        #expect(connection.open.response?.status == 101)
        let messages = connection.messages
        #expect(messages.map(\.direction) == [.clientToServer, .serverToClient, .clientToServer, .serverToClient])
        #expect(messages.map(\.opcode) == [.text, .text, .binary, .binary])
        #expect(String(decoding: messages[1].payload, as: UTF8.self) == #"{"op":"welcome","id":1,"motd":"café"}"#)
        #expect(messages[2].payload == [0x00, 0x01, 0x02, 0xFF] && messages[3].payload == [0xDE, 0xAD, 0xBE, 0xEF])
        // Times to the microsecond, whatever the writer's time zone (HTTP Toolkit's is +01:00).
        #expect(connection.openedAt.nanoseconds == 1_796_320_800_123_000_000 || fixture == "mitmproxy.har")
        #expect(messages.map(\.time.nanoseconds) == [1_796_320_800_250_000_000, 1_796_320_800_261_234_000, 1_796_320_800_500_000_000, 1_796_320_800_510_000_000])
        #expect(connection.end != nil)
    }

    @Test func mitmproxysOffsetTimeAndSubprotocolRead() throws {
        let connection = try #require(try RecordingFile.recording(path: Files.fixture("mitmproxy.har")).connections.first)
        #expect(connection.openedAt.nanoseconds == 1_796_320_800_123_456_000)
        #expect(connection.open.subprotocol == "chat.v2")
    }

    /// Chrome's log also has the page that opened the socket: it reads as an http record, before it.
    @Test func plainEntriesBecomeHTTPRecords() throws {
        var records: [TapRecord] = []
        try HARReader.read(path: Files.fixture("chrome-devtools.har")) { records.append($0) }
        guard case .http(let exchange) = records.first?.body else { Issue.record("no http record first"); return }
        #expect(exchange.url == "http://127.0.0.1:8765/" && exchange.response.status == 200 && !exchange.wasUpgradeAttempt)
        #expect(exchange.responseBodyBytes == 120 && exchange.durationNanoseconds == 4_250_000)
        #expect(records.dropFirst().first?.connection == 2)
    }

    /// A log cut short gives the entries before the cut, then says where it ends.
    @Test func aHARCutShortYieldsTheEntriesBeforeTheCut() throws {
        let whole = Array(try String(contentsOfFile: Files.fixture("chrome-devtools.har"), encoding: .utf8).utf8)
        let secondEntry = try #require(String(decoding: whole, as: UTF8.self).range(of: "\"websocket\""))
        let cut = Array(whole[..<String(decoding: whole, as: UTF8.self).utf8.distance(from: String(decoding: whole, as: UTF8.self).startIndex, to: secondEntry.upperBound)])
        var records: [TapRecord] = []
        #expect {
            try HARReader.records(cut) { records.append($0) }
        } throws: { error in
            "\(error)".contains("ends inside entry 2")
        }
        #expect(records.count == 1)  // the page's http record
        #expect(throws: HARReader.Failure.self) { try HARReader.records(Array(#"{"v":1,"type":"open"}"#.utf8)) { _ in } }
        #expect(throws: HARReader.Failure.self) { try HARReader.records(Array(#"{"log":{"entries":[{"request":{}},{"#.utf8)) { _ in } }
    }

    @Test func isoTimesWithAndWithoutOffsets() throws {
        let records = try HARReader.recordsOf(entry: #"{"startedDateTime":"1970-01-02T00:00:00-01:30","request":{"url":"ws://h/"},"_webSocketMessages":[]}"#)
        let open = try #require(records.first)
        #expect(open.timestamp.nanoseconds == Int64(86_400 + 5_400) * 1_000_000_000)
        // Found by the har-reader fuzz target: a year before 1677 overflowed 64-bit nanoseconds. No time
        // is read from it (the record says 1970), and nothing traps.
        let early = try HARReader.recordsOf(entry: #"{"startedDateTime":"1013-12-03T17:59:59.900Z","request":{"url":"ws://h/"},"_webSocketMessages":[]}"#)
        #expect(early.first?.timestamp.nanoseconds == 0)
    }
}

extension HARReader {
    /// The records of a log holding just `entry`.
    static func recordsOf(entry: String) throws -> [TapRecord] {
        var out: [TapRecord] = []
        try records(Array(#"{"log":{"entries":["#.utf8) + Array(entry.utf8) + Array("]}}".utf8)) { out.append($0) }
        return out
    }
}

@Suite struct JSONLinesDamageTests {
    /// A line that is not a record: the records before it were handed over, the error names the line.
    @Test func aDamagedLineStopsTheReadAndNamesTheLine() throws {
        let path = Files.temporary("damaged.jsonl")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let good = #"{"v":1,"type":"end","conn":1,"ts":1.5,"reason":"r","closed_by":null,"client_bytes":1,"server_bytes":2}"#
        try (good + "\n" + good + "\r\n" + #"{"v":1,"type":"mess"#).write(toFile: path, atomically: false, encoding: .utf8)
        var read = 0
        #expect {
            try JSONLinesReader.read(path: path) { _ in read += 1 }
        } throws: { error in
            (error as? JSONLinesReader.Failure)?.line == 3
        }
        #expect(read == 2)
        // Inconsistent frame lengths could not have been on the wire, and would not encode.
        #expect(throws: JSONLinesReader.Failure.self) {
            _ = try JSONLinesReader.records(#"{"v":1,"type":"frame","conn":1,"ts":1,"from":"client","opcode":1,"length":300,"length_bits":7}"#)
        }
        #expect(throws: JSONLinesReader.Failure.self) { _ = try JSONLinesReader.records(#"{"v":2,"type":"end","conn":1}"#) }
    }
}
