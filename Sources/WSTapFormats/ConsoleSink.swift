import WSTapDissect
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

/// Human-readable output: one line per message, open, end and diagnostic; one per frame with -v.
public final class ConsoleSink: RecordSink {
    public struct Options: Sendable {
        public var verbose = false
        public var color = false
        public var previewCharacters = 80
        public init(verbose: Bool = false, color: Bool = false) {
            self.verbose = verbose
            self.color = color
        }
    }

    private let output: OutputFile
    private let options: Options

    public init(output: OutputFile, options: Options) {
        self.output = output
        self.options = options
    }

    /// Colour only on a terminal and never when NO_COLOR is set (https://no-color.org).
    public static func wantsColor(_ output: OutputFile, environment: [String: String]) -> Bool {
        output.isTerminal && environment["NO_COLOR"].map(\.isEmpty) ?? true && environment["TERM"] != "dumb"
    }

    public func write(_ records: [TapRecord]) {
        var text = ""
        for record in records {
            if let line = format(record) { text += line + "\n" }
        }
        if !text.isEmpty { output.write(Array(text.utf8)) }
    }

    public func format(_ record: TapRecord) -> String? {
        let prefix = "\(dim(Self.clockText(record.timestamp))) \(bold("#\(record.connection)"))"
        switch record.body {
        case .open(let open):
            var line = "\(prefix) \(paint("open", 32)) \(open.url)  \(open.client) ⇄ \(open.server)"
            if let proto = open.subprotocol { line += "  protocol=\(proto)" }
            if let ext = open.extensions { line += "  extensions=\(ext)" }
            switch open.discovery {
            case "handshake": break
            case "har": line += "  (from a HAR log: messages only, no frames)"
            default: line += "  (mid-stream, found by \(open.discovery))"
            }
            return line
        case .http(let exchange):
            let request = exchange.request.map { "\($0.method ?? "?") \($0.target ?? "?")" } ?? "(no request)"
            return "\(prefix) http \(request) → \(exchange.response.status ?? 0) \(exchange.response.reason ?? "")"
        case .frame(let frame):
            guard options.verbose else { return nil }
            let h = frame.header
            let rsv = "\(h.rsv1 ? 1 : 0)\(h.rsv2 ? 1 : 0)\(h.rsv3 ? 1 : 0)"
            let mask = h.maskKey.map { "mask=" + JSONLinesEncoder.hex32($0) } ?? "unmasked"
            return "\(prefix) \(arrow(frame.direction)) \(dim("frame")) \(h.fin ? "FIN" : "fin=0") rsv=\(rsv) \(h.opcode) \(mask) len=\(h.payloadLength) (\(h.lengthEncoding.rawValue)-bit) hdr=\(h.headerLength)B @\(frame.offset)"
        case .message(let m):
            var size = "\(Self.bytes(m.length))"
            if m.compressed { size = "\(Self.bytes(m.wireLength))→\(Self.bytes(m.length)) deflate" }
            if m.frames > 1 { size += ", \(m.frames) frames" }
            var line = "\(prefix) \(arrow(m.direction)) \(paint(m.opcode.description, 36)) \(size)"
            if let preview = preview(m) { line += "  " + preview }
            if m.incomplete { line += " " + paint("[incomplete]", 33) }
            if m.inflateFailed { line += " " + paint("[not inflated]", 33) }
            return line
        case .diagnostic(let d):
            let colour = d.severity == .error ? 31 : d.severity == .warning ? 33 : 34
            let from = d.direction.map { arrow($0) } ?? " "
            return "\(prefix) \(from) \(paint("\(d.severity.rawValue) \(d.code.rawValue)", colour)) @\(d.offset): \(d.detail)"
        case .gap(let gap):
            return "\(prefix) \(arrow(gap.direction)) \(paint("gap", 33)) \(gap.bytes) bytes missing from the capture @\(gap.offset)"
        case .change(let c):
            let what = switch c.result {
            case .edited: "edited"
            case .dropped: "dropped"
            case .aborted: "aborted"
            case .closed: "closed"
            case .injected: "injected"
            case .forwarded: c.heldNanoseconds == nil ? "matched" : "held"
            }
            var line = "\(prefix) \(arrow(c.direction)) \(paint(what, 35))"
            if let held = c.heldNanoseconds {
                // A hook answers within a millisecond or two: "0 ms" would say it did not wait at all.
                line += held < 10_000_000 ? " \(held / 1_000_000).\(held / 100_000 % 10) ms" : " \(held / 1_000_000) ms"
            }
            line += " by \(c.rules.joined(separator: ", "))"
            for sent in c.sent where c.result == .edited || c.result == .injected {
                let isClose = sent.opcode == .close && sent.payload.count >= 2
                let m = MessageRecord(direction: c.direction, opcode: sent.opcode, frames: sent.frames, wireLength: sent.wireLength, length: sent.length,
                                      compressed: sent.compressed, payload: sent.payload, truncated: sent.truncated,
                                      closeCode: isClose ? UInt16(sent.payload[0]) << 8 | UInt16(sent.payload[1]) : nil,
                                      closeReason: isClose ? String(decoding: sent.payload[2...], as: UTF8.self) : nil,
                                      inflateFailed: false, incomplete: false, offset: c.offset)
                line += " → " + (preview(m) ?? "(empty)")
            }
            if !c.marks.isEmpty { line += "  [" + c.marks.joined(separator: ", ") + "]" }
            for note in c.notes { line += "  (" + note + ")" }
            return line
        case .end(let end):
            return "\(prefix) \(paint("end", 32)) \(end.reason)  client sent \(Self.bytes(end.clientBytes)), server sent \(Self.bytes(end.serverBytes))"
        }
    }

    private func preview(_ m: MessageRecord) -> String? {
        if m.opcode == .close {
            guard let code = m.closeCode else { return "(no status)" }
            let name = CloseCode.name(code).map { " \($0)" } ?? ""
            return "\(code)\(name)" + (m.closeReason.map { $0.isEmpty ? "" : " \"\($0)\"" } ?? "")
        }
        if m.payload.isEmpty { return nil }
        let ellipsis = m.truncated || m.payload.count > options.previewCharacters ? "…" : ""
        if m.opcode == .text && !m.inflateFailed {
            var text = String(decoding: m.payload.prefix(options.previewCharacters * 4), as: UTF8.self)
            if text.count > options.previewCharacters { text = String(text.prefix(options.previewCharacters)) }
            let escaped = text.unicodeScalars.map { $0.value < 0x20 ? ($0 == "\n" ? "\\n" : "·") : String($0) }.joined()
            return "\"\(escaped)\"\(ellipsis)"
        }
        let shown = m.payload.prefix(options.previewCharacters / 3)
        return shown.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ") + (m.payload.count > shown.count || m.truncated ? " …" : "")
    }

    private func arrow(_ direction: Direction) -> String { direction == .clientToServer ? paint("→", 35) : paint("←", 34) }
    private func paint(_ text: String, _ code: Int) -> String { options.color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text }
    private func bold(_ text: String) -> String { options.color ? "\u{1B}[1m\(text)\u{1B}[0m" : text }
    private func dim(_ text: String) -> String { options.color ? "\u{1B}[2m\(text)\u{1B}[0m" : text }

    static func bytes(_ n: UInt64) -> String {
        if n < 10_000 { return "\(n) B" }
        if n < 10_000_000 { return "\(n / 1024) KiB" }
        return "\(n / (1024 * 1024)) MiB"
    }

    /// Local wall-clock time of day with milliseconds.
    static func clockText(_ ts: Timestamp) -> String {
        var seconds = time_t(ts.nanoseconds / 1_000_000_000)
        var parts = tm()
        localtime_r(&seconds, &parts)
        let millis = Int(ts.nanoseconds / 1_000_000 % 1000)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)"
    }
}
