import WSTapDissect
import WSTapWire

/// Encodes records as JSON Lines, schema version 1 (docs/record-schema.md). One line per record.
public enum JSONLinesEncoder {
    public static let schemaVersion = 1

    public static func encode(_ record: TapRecord, into writer: inout JSONWriter) {
        encodeObject(record, into: &writer)
        writer.newline()
    }

    /// The record as one JSON object, without the newline that ends its line; `seq` is the control
    /// API's process-wide number of the record (docs/control-api.md), not in files.
    public static func encodeObject(_ record: TapRecord, seq: UInt64? = nil, into writer: inout JSONWriter) {
        writer.beginObject()
        writer.key("v"); writer.integer(schemaVersion)
        if let seq { writer.key("seq"); writer.integer(seq) }
        writer.key("type")
        switch record.body {
        case .open: writer.string("open")
        case .http: writer.string("http")
        case .frame: writer.string("frame")
        case .message: writer.string("message")
        case .diagnostic: writer.string("diagnostic")
        case .end: writer.string("end")
        case .gap: writer.string("gap")
        case .change: writer.string("change")
        }
        writer.key("conn"); writer.integer(record.connection)
        writer.key("ts"); writer.timestamp(nanoseconds: record.timestamp.nanoseconds)
        switch record.body {
        case .open(let open):
            writer.key("client"); writer.string(open.client)
            writer.key("server"); writer.string(open.server)
            writer.key("url"); writer.string(open.url)
            writer.key("request")
            if let request = open.request { encodeHead(request, into: &writer) } else { writer.null() }
            writer.key("response")
            if let response = open.response { encodeHead(response, into: &writer) } else { writer.null() }
            writer.key("subprotocol"); writer.stringOrNull(open.subprotocol)
            writer.key("extensions"); writer.stringOrNull(open.extensions)
            writer.key("client_tls"); encodeTLS(open.clientTLS, into: &writer)
            writer.key("upstream_tls"); encodeTLS(open.upstreamTLS, into: &writer)
            writer.key("discovery"); writer.string(open.discovery)
        case .http(let exchange):
            writer.key("url"); writer.stringOrNull(exchange.url)
            writer.key("upgrade"); writer.bool(exchange.wasUpgradeAttempt)
            writer.key("request")
            if let request = exchange.request { encodeHead(request, into: &writer) } else { writer.null() }
            writer.key("response"); encodeHead(exchange.response, into: &writer)
            writer.key("request_body_bytes"); writer.integer(exchange.requestBodyBytes)
            writer.key("response_body_bytes"); writer.integer(exchange.responseBodyBytes)
            writer.key("duration_ms"); writer.number(milliseconds: exchange.durationNanoseconds)
        case .frame(let frame):
            let h = frame.header
            writer.key("from"); writer.string(frame.direction.sender)
            writer.key("fin"); writer.bool(h.fin)
            writer.key("rsv1"); writer.bool(h.rsv1)
            writer.key("rsv2"); writer.bool(h.rsv2)
            writer.key("rsv3"); writer.bool(h.rsv3)
            writer.key("opcode"); writer.integer(h.opcode.rawValue)
            writer.key("masked"); writer.bool(h.masked)
            writer.key("mask_key")
            if let key = h.maskKey { writer.hexString(key) } else { writer.null() }
            writer.key("length"); writer.integer(h.payloadLength)
            writer.key("length_bits"); writer.integer(h.lengthEncoding.rawValue)
            writer.key("header_length"); writer.integer(h.headerLength)
            writer.key("offset"); writer.integer(frame.offset)
        case .message(let message):
            writer.key("from"); writer.string(message.direction.sender)
            writer.key("opcode"); writer.integer(message.opcode.rawValue)
            writer.key("frames"); writer.integer(message.frames)
            writer.key("wire_length"); writer.integer(message.wireLength)
            writer.key("length"); writer.integer(message.length)
            writer.key("compressed"); writer.bool(message.compressed)
            if let text = textPreview(message) {
                writer.key("text"); writer.string(validUTF8: text)
            } else if message.opcode == .close {
                writer.key("code")
                if let code = message.closeCode { writer.integer(code) } else { writer.null() }
                writer.key("reason"); writer.stringOrNull(message.closeReason)
                // A body that is not code + UTF-8 reason (1 byte, invalid UTF-8) is kept as it was sent.
                let body = message.payload
                if body.count == 1 || (body.count > 2 && !UTF8Validator.isValid(Array(body[2...]))) {
                    writer.key("base64"); writer.base64(body)
                }
            } else {
                // Binary and control payloads, and text that is not valid UTF-8 (exact bytes, not U+FFFD).
                writer.key("base64"); writer.base64(message.payload)
            }
            if message.truncated { writer.key("truncated"); writer.bool(true) }
            if message.inflateFailed { writer.key("inflate_failed"); writer.bool(true) }
            if message.incomplete { writer.key("incomplete"); writer.bool(true) }
            writer.key("offset"); writer.integer(message.offset)
        case .diagnostic(let diagnostic):
            writer.key("code"); writer.string(diagnostic.code.rawValue)
            writer.key("severity"); writer.string(diagnostic.severity.rawValue)
            writer.key("from"); writer.stringOrNull(diagnostic.direction?.sender)
            writer.key("offset"); writer.integer(diagnostic.offset)
            writer.key("detail"); writer.string(diagnostic.detail)
        case .gap(let gap):
            writer.key("from"); writer.string(gap.direction.sender)
            writer.key("bytes"); writer.integer(gap.bytes)
            writer.key("offset"); writer.integer(gap.offset)
        case .change(let change):
            writer.key("from"); writer.string(change.direction.sender)
            writer.key("offset"); writer.integer(change.offset)
            writer.key("result"); writer.string(change.result.rawValue)
            writer.key("rules"); writer.beginArray(); for rule in change.rules { writer.string(rule) }; writer.endArray()
            writer.key("actions"); writer.beginArray(); for action in change.actions { writer.string(action) }; writer.endArray()
            writer.key("sent"); writer.beginArray()
            for sent in change.sent {
                writer.beginObject()
                writer.key("opcode"); writer.integer(sent.opcode.rawValue)
                writer.key("frames"); writer.integer(sent.frames)
                writer.key("wire_length"); writer.integer(sent.wireLength)
                writer.key("length"); writer.integer(sent.length)
                writer.key("compressed"); writer.bool(sent.compressed)
                // The relay cuts a text preview on a character boundary, so a cut one is still text.
                if sent.opcode == .text, UTF8Validator.isValid(sent.payload) {
                    writer.key("text"); writer.string(validUTF8: sent.payload)
                } else {
                    writer.key("base64"); writer.base64(sent.payload)
                }
                if sent.truncated { writer.key("truncated"); writer.bool(true) }
                writer.endObject()
            }
            writer.endArray()
            if let held = change.heldNanoseconds { writer.key("held_ms"); writer.number(milliseconds: held) }
            if !change.marks.isEmpty { writer.key("marks"); writer.beginArray(); for mark in change.marks { writer.string(mark) }; writer.endArray() }
            if !change.notes.isEmpty { writer.key("notes"); writer.beginArray(); for note in change.notes { writer.string(note) }; writer.endArray() }
        case .end(let end):
            writer.key("reason"); writer.string(end.reason)
            writer.key("closed_by"); writer.stringOrNull(end.closedBy)
            writer.key("client_bytes"); writer.integer(end.clientBytes)
            writer.key("server_bytes"); writer.integer(end.serverBytes)
        }
        writer.endObject()
    }

    public static func line(_ record: TapRecord) -> String {
        var writer = JSONWriter()
        encode(record, into: &writer)
        return String(decoding: writer.bytes, as: UTF8.self)
    }

    private static func encodeTLS(_ leg: TLSLegInfo?, into writer: inout JSONWriter) {
        guard let leg else { return writer.null() }
        writer.beginObject()
        writer.key("sni"); writer.stringOrNull(leg.serverName)
        if let verified = leg.verified { writer.key("verified"); writer.bool(verified) }
        writer.endObject()
    }

    private static func encodeHead(_ head: HTTPHead, into writer: inout JSONWriter) {
        writer.beginObject()
        switch head.startLine {
        case .request(let method, let target, let version):
            writer.key("method"); writer.string(method)
            writer.key("target"); writer.string(target)
            writer.key("version"); writer.string(version)
        case .response(let version, let status, let reason):
            writer.key("status"); writer.integer(status)
            writer.key("reason"); writer.string(reason)
            writer.key("version"); writer.string(version)
        }
        writer.key("headers")
        writer.beginArray()
        for (name, value) in head.headers {
            writer.beginArray(); writer.string(name); writer.string(value); writer.endArray()
        }
        writer.endArray()
        writer.endObject()
    }

    static func hex32(_ value: UInt32) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: 8 - text.count) + text
    }

    /// The payload as text, or nil when it must be given as base64 (not text, or not UTF-8 somewhere,
    /// even past the preview: schema v1 says invalid text is base64).
    static func textPreview(_ message: MessageRecord) -> [UInt8]? {
        guard message.opcode == .text && !message.inflateFailed else { return nil }
        let text = validPrefix(message.payload, truncated: message.truncated)
        switch message.textValidity {
        case .valid: return text
        case .invalid: return nil
        case .unchecked: return UTF8Validator.isValid(text) ? text : nil
        }
    }

    /// A capped text preview may end inside a UTF-8 sequence: cut back to the last whole character
    /// so the record does not show a replacement character that was never sent.
    static func validPrefix(_ bytes: [UInt8], truncated: Bool) -> [UInt8] {
        guard truncated, !bytes.isEmpty else { return bytes }
        var end = bytes.count
        var back = 0
        while end > 0 && back < 4 && bytes[end - 1] & 0xC0 == 0x80 { end -= 1; back += 1 }
        if end > 0 && bytes[end - 1] >= 0xC0 {
            let lead = bytes[end - 1]
            let need = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1
            if back < need { return Array(bytes[..<(end - 1)]) }
        }
        return bytes
    }
}
