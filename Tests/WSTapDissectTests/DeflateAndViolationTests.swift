import Foundation
import Testing
import WSTapDissect
import WSTapWire
import WSTapTestSupport

@Suite struct DeflateDissectionTests {
    @Test func rfc7692FragmentedCompressedMessageInflates() {
        // §7.2.3.2: RSV1 on the first fragment only.
        let lines = dissect([
            (c2s, Wire.request(extensions: "permessage-deflate")), (s2c, Wire.response(extensions: "permessage-deflate")),
            (s2c, [0x41, 0x03, 0xF2, 0x48, 0xCD] + [0x80, 0x04, 0xC9, 0xC9, 0x07, 0x00]),
            (s2c, [0xC1, 0x05, 0xF2, 0x00, 0x11, 0x00, 0x00]),  // §7.2.3.1 shared window: refers back
        ])
        let messages = records(lines, type: "message")
        #expect(diagnosticCodes(lines).isEmpty, "\(lines)")
        #expect(messages.count == 2)
        #expect(messages[0].contains("\"text\":\"Hello\"") && messages[0].contains("\"compressed\":true") && messages[0].contains("\"wire_length\":7"))
        #expect(messages[1].contains("\"text\":\"Hello\""))
        #expect(records(lines, type: "open")[0].contains("\"extensions\":\"permessage-deflate\""))
    }

    @Test func asymmetricParametersApplyToTheRightDirection() {
        // server_no_context_takeover: the server resets per message; the client keeps its context.
        let clientDeflater = Deflater(windowBits: 10)
        let serverDeflater = Deflater(noContextTakeover: true)
        var steps: [Step] = [
            (c2s, Wire.request(extensions: "permessage-deflate; client_max_window_bits")),
            (s2c, Wire.response(extensions: "permessage-deflate; server_no_context_takeover; client_max_window_bits=10")),
        ]
        for i in 0..<3 {
            let text = Array("{\"seq\":\(i),\"payload\":\"repeat repeat repeat\"}".utf8)
            steps.append((c2s, Wire.frame(.text, clientDeflater.compressMessage(text), rsv1: true, mask: UInt32(i + 1))))
            steps.append((s2c, Wire.frame(.text, serverDeflater.compressMessage(text), rsv1: true)))
        }
        let lines = dissect(steps)
        #expect(diagnosticCodes(lines).isEmpty, "\(lines)")
        let messages = records(lines, type: "message")
        #expect(messages.count == 6)
        for (i, m) in messages.enumerated() { #expect(m.contains("\\\"seq\\\":\(i / 2)")) }
    }

    @Test func inflateErrorIsReportedAndTheDirectionRecovers() {
        let deflater = Deflater()
        let first = deflater.compressMessage(Array("aaaaaaaaaaaaaaaaaaaaaaaa".utf8))
        let second = deflater.compressMessage(Array("aaaaaaaaaaaaaaaaaaaaaaaa".utf8))  // refers back to the first
        let standalone = Deflater().compressMessage(Array("fresh".utf8))
        let lines = dissect([
            (c2s, Wire.request(extensions: "permessage-deflate")), (s2c, Wire.response(extensions: "permessage-deflate")),
            // The first message is lost (as in a capture that starts late): the second cannot inflate.
            (s2c, Wire.frame(.text, second, rsv1: true)),
            (s2c, Wire.frame(.text, standalone, rsv1: true)),
        ])
        _ = first
        #expect(diagnosticCodes(lines) == ["inflate-failed"])
        let messages = records(lines, type: "message")
        #expect(messages[0].contains("\"inflate_failed\":true") && messages[0].contains("\"base64\""))
        #expect(messages[1].contains("\"text\":\"fresh\""))
    }

    /// A new fragmented message while a compressed one is open: the first is reported incomplete, and
    /// what the inflater held of it must not become the start of the second, which starts afresh.
    @Test func aCompressedMessageCutShortByANewOneLeavesNothingBehind() {
        let abandoned = Deflater().compressMessage(Array("the first message, never finished".utf8))
        let fresh = Deflater().compressMessage(Array("a second one".utf8))
        let lines = dissect([
            (c2s, Wire.request(extensions: "permessage-deflate")), (s2c, Wire.response(extensions: "permessage-deflate")),
            (s2c, Wire.frame(.text, Array(abandoned.prefix(abandoned.count / 2)), fin: false, rsv1: true)),
            (s2c, Wire.frame(.text, Array(fresh.prefix(5)), fin: false, rsv1: true)),
            (s2c, Wire.frame(.continuation, Array(fresh.dropFirst(5)))),
        ])
        #expect(diagnosticCodes(lines) == ["data-frame-inside-fragmented-message"])
        let messages = records(lines, type: "message")
        #expect(messages.count == 2)
        #expect(messages[0].contains("\"incomplete\":true"))
        #expect(messages[1].contains("\"text\":\"a second one\"") && messages[1].contains("\"frames\":2"))
    }

    @Test func decompressionBombStopsAtTheLimit() {
        var config = StreamDissector.Configuration()
        config.maxInflatedMessage = 100_000
        let bomb = Deflater().compressMessage([UInt8](repeating: 0, count: 1_000_000))
        let lines = dissect([
            (c2s, Wire.request(extensions: "permessage-deflate")), (s2c, Wire.response(extensions: "permessage-deflate")),
            (s2c, Wire.frame(.binary, bomb, rsv1: true)),
        ], configuration: config)
        #expect(diagnosticCodes(lines) == ["inflate-limit-exceeded"])
        #expect(bomb.count < 2000)
    }
}

@Suite struct ViolationTests {
    static let open: [Step] = [(c2s, Wire.request()), (s2c, Wire.response())]

    /// The 13 violations of shared/captures/gen-ws-violations.pcap, built the same way.
    @Test(arguments: [
        ("rsv-without-extension", (c2s, Wire.frame(.text, Array("rsv2".utf8), rsv2: true, mask: 1))),
        ("rsv-without-extension", (c2s, Wire.frame(.text, Array("rsv1".utf8), rsv1: true, mask: 1))),
        ("reserved-opcode", (c2s, Wire.frame(Opcode(rawValue: 3), [1], mask: 1))),
        ("reserved-opcode", (c2s, Wire.frame(Opcode(rawValue: 0xB), [1], mask: 1))),
        ("unmasked-client-frame", (c2s, Wire.text("unmasked"))),
        ("masked-server-frame", (s2c, Wire.text("masked", mask: 5))),
        ("fragmented-control-frame", (c2s, Wire.frame(.ping, [1], fin: false, mask: 1))),
        ("control-frame-too-long", (c2s, Wire.frame(.ping, [UInt8](repeating: 0x78, count: 126), mask: 1))),
        ("invalid-utf8-text", (c2s, Wire.frame(.text, [0xC3, 0x28, 0x20, 0xFF], mask: 1))),
        ("continuation-without-message", (c2s, Wire.frame(.continuation, Array("orphan".utf8), mask: 1))),
        ("data-frame-inside-fragmented-message", (c2s, Wire.text("start,", mask: 1, fin: false) + Wire.text("new", mask: 2) + Wire.frame(.continuation, Array("end".utf8), mask: 3))),
        ("non-minimal-length", (c2s, Wire.frame(.text, Array("short".utf8), mask: 1, encoding: .sixtyFourBit))),
        ("close-body-one-byte", (c2s, Wire.frame(.close, [3], mask: 1))),
        ("close-code-not-allowed", (s2c, Wire.frame(.close, [0x03, 0xED] + Array("reserved".utf8)))),
        ("invalid-utf8-close-reason", (s2c, Wire.frame(.close, [0x03, 0xE8, 0xFF]))),
        ("length-msb-set", (s2c, Wire.frame(.binary, [], declaredLength: 1 << 63))),
    ] as [(String, Step)])
    func violationIsReported(code: String, step: Step) {
        let lines = dissect(Self.open + [step])
        #expect(diagnosticCodes(lines).filter { $0 != "truncated-frame" } == [code], "\(lines)")
    }

    @Test func dataFrameInsideFragmentKeepsBothMessages() {
        let lines = dissect(Self.open + [(c2s, Wire.text("start,", mask: 1, fin: false) + Wire.text("new", mask: 2) + Wire.frame(.continuation, Array("end".utf8), mask: 3))])
        let texts = records(lines, type: "message")
        #expect(texts.count == 2 && texts[0].contains("\"text\":\"new\"") && texts[1].contains("\"text\":\"start,end\""))
    }

    @Test func badAcceptAndUnofferedExtensionAndSubprotocol() {
        let lines = dissect([
            (c2s, Wire.request()),
            (s2c, Wire.response(extensions: "permessage-deflate", protocol: "chat", accept: "bogus=")),
        ])
        #expect(Set(diagnosticCodes(lines)) == ["bad-accept", "extension-not-offered", "subprotocol-not-offered"])
    }

    @Test func violationsStillDecodeLaterFrames() {
        let lines = dissect(Self.open + [
            (c2s, Wire.frame(Opcode(rawValue: 3), [1, 2, 3], mask: 1)),
            (c2s, Wire.text("after", mask: 2)),
        ])
        #expect(records(lines, type: "message").last?.contains("\"text\":\"after\"") == true)
    }
}
