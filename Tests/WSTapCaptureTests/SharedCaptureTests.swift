import Foundation
import Testing
import WSTapCapture
import WSTapDissect
import WSTapFormats

/// The reference captures in ../shared/captures (SOURCES.md says where tshark 4.0 is right and wrong).
enum SharedCaptures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/captures").standardized

    static func records(_ name: String) throws -> [TapRecord] {
        let session = CaptureSession()
        var all: [TapRecord] = []
        try PcapFile.read(path: directory.appendingPathComponent(name).path, session: session) { all += $0 }
        return all
    }

    static func messages(_ records: [TapRecord]) -> [MessageRecord] {
        records.compactMap { if case .message(let m) = $0.body { m } else { nil } }
    }

    static func text(_ m: MessageRecord) -> String { String(decoding: m.payload, as: UTF8.self) }

    static func codes(_ records: [TapRecord]) -> [String] {
        records.compactMap { if case .diagnostic(let d) = $0.body { d.code.rawValue } else { nil } }
    }
}

@Suite(.enabled(if: FileManager.default.fileExists(atPath: SharedCaptures.directory.path)))
struct SharedCaptureTests {
    @Test func basicCaptureMatchesTshark() throws {
        let records = try SharedCaptures.records("gen-ws-basic.pcap")
        let messages = SharedCaptures.messages(records)
        #expect(SharedCaptures.codes(records).isEmpty)
        #expect(messages.contains { $0.opcode == .binary && $0.length == 70000 && $0.direction == .clientToServer })
        #expect(messages.contains { $0.opcode == .binary && $0.length == 70000 && $0.direction == .serverToClient })
        #expect(messages.filter { $0.opcode == .close }.map(\.closeReason) == ["bye", "bye"])
        #expect(messages.contains { $0.opcode == .text && $0.length == 0 })  // the empty text frame
    }

    /// tshark 4.0 bugs: interleaved fragments take the wrong opcode; an empty final fragment is ignored.
    @Test func fragmentedCaptureIsRightWhereTsharkIsWrong() throws {
        let messages = SharedCaptures.messages(try SharedCaptures.records("gen-ws-fragmented.pcap"))
        let client = messages.first { $0.direction == .clientToServer && SharedCaptures.text($0) == "client-part1,client-part2" }
        #expect(client?.opcode == .text)
        let emptyFinal = messages.first { SharedCaptures.text($0).hasPrefix("ends-with-empty") }
        #expect(emptyFinal.map { SharedCaptures.text($0) } == "ends-with-empty-cont")
        #expect(messages.contains { SharedCaptures.text($0) == "next fragmented, message" })
    }

    /// tshark 4.0: fragmented compressed messages are not inflated and break later ones.
    @Test(arguments: ["gen-ws-deflate-takeover.pcap", "gen-ws-deflate-pylib.pcap", "gen-ws-deflate-noctx-asym.pcap"])
    func compressedCapturesInflateEverything(name: String) throws {
        let records = try SharedCaptures.records(name)
        #expect(!SharedCaptures.codes(records).contains("inflate-failed"), "\(SharedCaptures.codes(records))")
        let compressed = SharedCaptures.messages(records).filter(\.compressed)
        #expect(!compressed.isEmpty)
        #expect(compressed.allSatisfy { !$0.inflateFailed })
    }

    @Test func allThirteenViolationsAreFlagged() throws {
        let codes = Set(SharedCaptures.codes(try SharedCaptures.records("gen-ws-violations.pcap")))
        let expected: Set = ["rsv-without-extension", "reserved-opcode", "unmasked-client-frame", "masked-server-frame",
                             "fragmented-control-frame", "control-frame-too-long", "invalid-utf8-text",
                             "continuation-without-message", "data-frame-inside-fragmented-message", "non-minimal-length",
                             "close-body-one-byte", "close-code-not-allowed"]
        #expect(expected.isSubset(of: codes), "missing \(expected.subtracting(codes))")
    }

    @Test func refusedUpgradeThenRetryAndFirstFrameInThe101Segment() throws {
        let records = try SharedCaptures.records("gen-ws-upgrade-edge.pcap")
        let opens = records.filter { if case .open = $0.body { true } else { false } }
        #expect(opens.count == 2)
        #expect(records.contains { if case .http(let h) = $0.body { h.response.status == 426 } else { false } })
        #expect(SharedCaptures.messages(records).count >= 4)
    }
}
