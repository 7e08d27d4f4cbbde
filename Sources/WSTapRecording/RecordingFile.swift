import WSTapCapture
import WSTapDissect
import WSTapFormats

#if canImport(Glibc)
import Glibc
#endif

/// A file of traffic wstap can read: a capture, its own JSON Lines, or a HAR log. Told apart by their
/// first bytes, not their names (a `.json` may be either; `tcpdump -w x` has no extension).
public enum RecordingFile {
    public enum Kind: String, Sendable {
        case capture   // pcap or pcapng
        case jsonLines
        case har
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// What the file at `path` holds, from its first bytes.
    public static func kind(of path: String) throws(Failure) -> Kind {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: "cannot open '\(path)': \(String(cString: strerror(errno)))") }
        defer { Glibc.close(fd) }
        var head = [UInt8](repeating: 0, count: 4096)
        let count = head.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        guard count >= 0 else { throw Failure(description: "cannot read '\(path)': \(String(cString: strerror(errno)))") }
        // An empty file is left to the capture reader, which says so in its own words.
        guard count > 0 else { return .capture }
        return kind(ofFirstBytes: Array(head[..<count]))
    }

    /// pcap (either byte order, micro- or nanosecond) and pcapng by their magic numbers; a JSON object
    /// whose first member is `log` is HAR; another JSON object is taken for JSON Lines (whose reader
    /// then says which line is not a record). Anything else goes to the capture reader, which says
    /// what it is not (and never reads a file of zeros as one endless line).
    public static func kind(ofFirstBytes bytes: [UInt8]) -> Kind {
        let magics: [[UInt8]] = [[0xD4, 0xC3, 0xB2, 0xA1], [0xA1, 0xB2, 0xC3, 0xD4], [0x4D, 0x3C, 0xB2, 0xA1], [0xA1, 0xB2, 0x3C, 0x4D],
                                 [0x0A, 0x0D, 0x0D, 0x0A]]
        if magics.contains(where: { bytes.starts(with: $0) }) { return .capture }
        var i = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        func skipSpace() { while i < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[i]) { i += 1 } }
        skipSpace()
        guard i < bytes.count, bytes[i] == UInt8(ascii: "{") else { return .capture }
        i += 1
        skipSpace()
        return bytes[i...].starts(with: Array("\"log\"".utf8)) ? .har : .jsonLines
    }

    /// Reads a JSON Lines or HAR file, handing each record to `body`. Captures go through
    /// `PcapFile` with the caller's session (key logs, --decode-as, threads), not through here.
    public static func readRecords(path: String, kind: Kind, _ body: (TapRecord) throws -> Void) throws {
        switch kind {
        case .jsonLines: try JSONLinesReader.read(path: path, body)
        case .har: try HARReader.read(path: path, body)
        case .capture: throw Failure(description: "'\(path)' is a capture: read it with PcapFile")
        }
    }

    /// The recording in `path`, whatever its kind; captures are read with `session` (a default one
    /// when nil). `observe` sees every record on the way (replay's --filter chooses by them).
    public static func recording(path: String, session: CaptureSession? = nil, observe: (TapRecord) -> Void = { _ in }) throws -> Recording {
        var builder = RecordingBuilder()
        let kind = try kind(of: path)
        if kind == .capture {
            _ = try PcapFile.read(path: path, session: session ?? CaptureSession()) { records in
                for record in records {
                    observe(record)
                    builder.add(record)
                }
            }
        } else {
            try readRecords(path: path, kind: kind) { record in
                observe(record)
                builder.add(record)
            }
        }
        return builder.recording
    }
}
