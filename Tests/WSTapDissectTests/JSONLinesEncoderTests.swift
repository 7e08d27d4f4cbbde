import Testing
import WSTapDissect
import WSTapFormats
import WSTapTestSupport
import WSTapWire

@Suite struct JSONLinesEncoderTests {
    @Test func escapesNumbersAndTimestampsAreExact() {
        let text = Array("q\"b\\s\n\r\t\u{01}\u{7F}é".utf8)
        let message = MessageRecordBuilder.text(text)
        let line = JSONLinesEncoder.line(TapRecord(connection: 18_446_744_073_709_551_615, timestamp: Timestamp(nanoseconds: 1_700_000_000_000_042_999), body: .message(message)))
        #expect(line == #"{"v":1,"type":"message","conn":18446744073709551615,"ts":1700000000.000042,"from":"server","opcode":1,"frames":1,"wire_length":12,"length":12,"compressed":false,"text":"q\"b\\s\n\r\t\u0001\u007fé","offset":0}"# + "\n")
    }

    /// Text that is not UTF-8 keeps its exact bytes (as base64) instead of a lossy U+FFFD string; a text
    /// cut at --max-payload inside a character is still text.
    @Test func invalidUTF8TextKeepsItsExactBytes() {
        let line = JSONLinesEncoder.line(TapRecord(connection: 1, timestamp: Timestamp(nanoseconds: 0), body: .message(MessageRecordBuilder.text([0x61, 0xFF, 0x62]))))
        #expect(line.contains(#""base64":"Yf9i""#))
        #expect(!line.contains(#""text""#))
        #expect(line.contains(#""ts":0.000000"#))
        var cut = MessageRecordBuilder.text(Array("aé".utf8))
        cut.payload.removeLast()
        cut.truncated = true
        #expect(JSONLinesEncoder.line(TapRecord(connection: 1, timestamp: Timestamp(nanoseconds: 0), body: .message(cut))).contains(#""text":"a""#))
    }

    @Test func closeBodyThatIsNotCodeAndReasonIsKept() {
        var close = MessageRecordBuilder.text([0x03])
        close.opcode = .close
        let line = JSONLinesEncoder.line(TapRecord(connection: 1, timestamp: Timestamp(nanoseconds: 0), body: .message(close)))
        #expect(line.contains(#""code":null,"reason":null,"base64":"Aw==""#))
    }

    @Test func frameRecordHasExactKeys() {
        let header = FrameHeader(fin: true, rsv1: true, opcode: .binary, maskKey: 0x0A0B_0C0D, payloadLength: 70000)
        let line = JSONLinesEncoder.line(TapRecord(connection: 2, timestamp: Timestamp(nanoseconds: 5_000_000_000), body: .frame(FrameRecord(direction: .clientToServer, header: header, offset: 9))))
        #expect(line == #"{"v":1,"type":"frame","conn":2,"ts":5.000000,"from":"client","fin":true,"rsv1":true,"rsv2":false,"rsv3":false,"opcode":2,"masked":true,"mask_key":"0a0b0c0d","length":70000,"length_bits":64,"header_length":14,"offset":9}"# + "\n")
    }
}

/// Builds message records the way the dissector fills them, for encoder tests.
enum MessageRecordBuilder {
    static func text(_ payload: [UInt8]) -> MessageRecord {
        MessageRecord(direction: .serverToClient, opcode: .text, frames: 1, wireLength: UInt64(payload.count), length: UInt64(payload.count),
                      compressed: false, payload: payload, truncated: false, closeCode: nil, closeReason: nil,
                      inflateFailed: false, incomplete: false, offset: 0)
    }
}

/// What rules, replay and mocks read back from a recording is what was written.
@Suite struct JSONLinesReaderTests {
    @Test func messagesOpensAndEndsReadBackAsTheyWereWritten() throws {
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = 100
        let steps = StreamDissectorTests.basic + [(c2s, Wire.frame(.binary, Array(repeating: 0xAB, count: 300), mask: 3)),
                                                  (s2c, Wire.frame(.text, [0x61, 0xFF]))]
        let lines = dissect(steps, configuration: configuration)
        let read = try JSONLinesReader.records(lines.joined())
        #expect(read.map(JSONLinesEncoder.line) == lines)
        let messages = read.compactMap { if case .message(let m) = $0.body { m } else { nil } }
        #expect(messages.contains { $0.truncated && $0.length == 300 && $0.payload.count == 100 })
        #expect(messages.contains { $0.payload == [0x61, 0xFF] })  // invalid text kept as its bytes
        #expect(throws: JSONLinesReader.Failure.self) { _ = try JSONLinesReader.records("{\"type\":\"message\"}\n") }
        // Found by the jsonl-reader fuzz target: a negative connection number trapped.
        #expect(throws: JSONLinesReader.Failure.self) { _ = try JSONLinesReader.records(#"{"type":"end","conn":-1}"#) }
    }

    /// Change and gap records, which the dissector above does not make, read back too.
    @Test func changesAndGapsReadBackAsTheyWereWritten() throws {
        let sent = [SentMessage(opcode: .text, frames: 2, length: 5, wireLength: 7, compressed: true, payload: Array("héllo".utf8), truncated: false),
                    SentMessage(opcode: .binary, frames: 1, length: 300, wireLength: 300, compressed: false, payload: [0, 1, 0xFF], truncated: true)]
        let records = [
            TapRecord(connection: 3, timestamp: Timestamp(nanoseconds: 1_700_000_000_123_456_000), body: .change(ChangeRecord(
                direction: .serverToClient, offset: 129, rules: ["edit", "line 2"], actions: [#"replace /a/ "b""#, "duplicate"], result: .edited,
                sent: sent, heldNanoseconds: 200_125_000, marks: ["seen"], notes: ["released after --hold-timeout 30 s"]))),
            TapRecord(connection: 3, timestamp: Timestamp(nanoseconds: 5_000), body: .change(ChangeRecord(
                direction: .clientToServer, offset: 0, rules: ["gone"], actions: ["drop"], result: .dropped, sent: []))),
            TapRecord(connection: 4, timestamp: Timestamp(nanoseconds: 0), body: .gap(GapRecord(direction: .clientToServer, bytes: 1460, offset: 90))),
        ]
        let lines = records.map(JSONLinesEncoder.line)
        #expect(try JSONLinesReader.records(lines.joined()).map(JSONLinesEncoder.line) == lines)
    }
}
