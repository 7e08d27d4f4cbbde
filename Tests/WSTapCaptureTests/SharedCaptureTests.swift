import Foundation
import Testing
import WSTapCapture
import WSTapDissect
import WSTapFormats

/// The reference captures in ../shared/captures (SOURCES.md says where tshark 4.0 is right and wrong).
enum SharedCaptures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../shared/captures").standardized

    static func records(_ name: String, keyLog: TLSKeyLog? = nil) throws -> [TapRecord] {
        let session = CaptureSession()
        session.keyLog = keyLog
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

    /// TLS 1.3 (TLS_AES_256_GCM_SHA384) decrypted with the secrets in the pcapng's Decryption Secrets Block.
    @Test func wssCaptureDecryptsWithEmbeddedSecrets() throws {
        let path = SharedCaptures.directory.appendingPathComponent("gen-wss-keylog.pcapng").path
        let embedded = try #require(PcapngSecrets.keyLogText(path: path))
        let keyLog = TLSKeyLog()
        #expect(keyLog.add(text: embedded) == 5)
        let records = try SharedCaptures.records("gen-wss-keylog.pcapng", keyLog: keyLog)
        let messages = SharedCaptures.messages(records)
        #expect(messages.map(\.opcode) == [.text, .text, .binary, .close, .close])
        #expect(SharedCaptures.text(messages[0]) == "secret hello over TLS")
        #expect(SharedCaptures.text(messages[1]) == "compressed reply over TLS, compressed reply over TLS")
        #expect(messages[2].payload == (0..<4).flatMap { _ in Array(0..<32).map(UInt8.init) })
        #expect(messages.filter { $0.opcode == .close }.map(\.closeReason) == ["tls bye", "tls bye"])
        #expect(SharedCaptures.codes(records).isEmpty)
        // Without the secrets the connection is TLS, not WebSocket: nothing is made up.
        #expect(SharedCaptures.messages(try SharedCaptures.records("gen-wss-keylog.pcapng")).isEmpty)
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

@Suite(.enabled(if: FileManager.default.fileExists(atPath: SharedCaptures.directory.path)))
struct MidstreamCaptureTests {
    static func records(_ name: String, decodeAs: Set<UInt16> = [], heuristic: Bool = true) throws -> [TapRecord] {
        let session = CaptureSession()
        session.decodeAsPorts = decodeAs
        session.heuristic = heuristic
        var all: [TapRecord] = []
        try PcapFile.read(path: SharedCaptures.directory.appendingPathComponent(name).path, session: session) { all += $0 }
        return all
    }

    static func opens(_ records: [TapRecord]) -> [OpenRecord] {
        records.compactMap { if case .open(let o) = $0.body { o } else { nil } }
    }

    /// tshark 4.0 shows nothing here without Decode As; the truth is in the .tshark.tsv made with it.
    @Test(arguments: [(Set<UInt16>(), "heuristic"), (Set<UInt16>([9123]), "decode-as port 9123")])
    func captureStartingAfterTheUpgrade(decodeAs: Set<UInt16>, discovery: String) throws {
        let records = try Self.records("gen-ws-midstream.pcap", decodeAs: decodeAs)
        #expect(Self.opens(records).map(\.discovery) == [discovery])
        #expect(Self.opens(records).first?.server == "127.0.0.1:9123")
        let messages = SharedCaptures.messages(records)
        #expect(messages.map { "\($0.direction.sender) \($0.opcode.rawValue)" } == ["client 1", "server 1", "client 2", "client 9", "server 10", "client 8", "server 8"])
        #expect(SharedCaptures.text(messages[0]) == "captured after the upgrade")
        #expect(messages.last?.closeReason == "done")
        #expect(SharedCaptures.codes(records).isEmpty)
    }

    @Test func compressedFrameWithoutItsContextIsReportedNotGuessed() throws {
        let records = try Self.records("pub-eririmba-socketio-sample-midstream.pcap")
        let message = try #require(SharedCaptures.messages(records).first)
        #expect(message.compressed && message.inflateFailed)
        #expect(message.payload == [0x22, 0x20, 0x0F, 0x00])  // the bytes tshark shows with Decode As
        #expect(SharedCaptures.codes(records) == ["inflate-failed"])
    }

    @Test func heuristicNeverTakesTLSOrCanBeSwitchedOff() throws {
        #expect(Self.opens(try Self.records("gen-wss-keylog.pcapng")).isEmpty)
        #expect(Self.opens(try Self.records("gen-ws-midstream.pcap", heuristic: false)).isEmpty)
    }
}

/// A read spread over several sessions (threads) must give exactly what one session gives: the same
/// records in the same order, connections numbered alike.
@Suite(.enabled(if: FileManager.default.fileExists(atPath: SharedCaptures.directory.path)))
struct ShardedReadTests {
    static func lines(_ path: String, shards: Int, keyLog: () -> TLSKeyLog?) throws -> [String] {
        var all: [TapRecord] = []
        if shards == 1 {
            let session = CaptureSession()
            session.keyLog = keyLog()
            try PcapFile.read(path: path, session: session) { all += $0 }
        } else {
            let sessions = (0..<shards).map { _ in CaptureSession() }
            for session in sessions { session.keyLog = keyLog() }
            try PcapFile.read(path: path, sessions: sessions) { all += $0 }
        }
        return all.map(JSONLinesEncoder.line)
    }

    @Test func everySharedCaptureReadsTheSameOnOneOrManyThreads() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: SharedCaptures.directory.path)
            .filter { $0.hasSuffix(".pcap") || $0.hasSuffix(".pcapng") }.sorted()
        #expect(names.count >= 15)
        for name in names {
            let path = SharedCaptures.directory.appendingPathComponent(name).path
            let keyLog: () -> TLSKeyLog? = {
                guard let text = PcapngSecrets.keyLogText(path: path) else { return nil }
                let log = TLSKeyLog()
                _ = log.add(text: text)
                return log
            }
            let single = try Self.lines(path, shards: 1, keyLog: keyLog)
            #expect(!single.isEmpty, "\(name)")
            for shards in [2, 3] {
                #expect(try Self.lines(path, shards: shards, keyLog: keyLog) == single, "\(name) on \(shards) threads")
            }
        }
    }
}
