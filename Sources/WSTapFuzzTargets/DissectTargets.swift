import WSTapDissect
import WSTapFormats
import WSTapWire

/// The dissector: both directions of one connection, as the relay and the capture reader feed it.
enum DissectTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "stream-dissector", input: Conversation.format, maxLength: 2048, run: streamDissector),
    ]

    /// Every record of a conversation, encoded as the JSONL file gets it (the encoders are fed too).
    static func records(_ conversation: Conversation, split: Bool) -> [String] {
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = conversation.payloadCap
        configuration.maxInflatedMessage = 1 << 20
        let dissector = conversation.midstream
            ? StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"), configuration: configuration, midstream: "heuristic")
            : StreamDissector(connection: 1, info: ConnectionInfo(client: "c", server: "s"), configuration: configuration)
        var records: [TapRecord] = []
        let time = Timestamp(nanoseconds: 1)
        for chunk in conversation.chunks {
            if chunk.gap > 0 {
                dissector.gap(chunk.direction, bytes: UInt64(chunk.gap), at: time, into: &records)
            }
            forEachPiece(chunk.bytes, sizes: split ? conversation.splitSizes : []) { piece in
                dissector.feed(piece, from: chunk.direction, at: time, into: &records)
            }
        }
        dissector.finish(at: time, into: &records)
        return records.map(JSONLinesEncoder.line)
    }

    /// The dissector's promise: the same records however the bytes of each direction are split.
    static func streamDissector(_ data: [UInt8]) {
        let conversation = Conversation(data)
        let whole = records(conversation, split: false)
        let split = records(conversation, split: true)
        FuzzCheck.expect(whole == split, "split-dependent records:\n\(whole.joined())---\n\(split.joined())")
    }
}

/// Both directions of a connection as fuzzer bytes: a control byte (payload cap, mid-stream start, split
/// sizes), then chunks of [direction and gap byte][length: 2 bytes][bytes]. Seeds made from real
/// captures start with an HTTP upgrade, so the fuzzer works from real handshakes and frames.
public struct Conversation {
    public static let format = "1 control byte, then chunks: [bit 0 direction, bits 1-7 >= 120: bytes lost before][u16 length][bytes]"

    public struct Chunk {
        public var direction: Direction
        /// Bytes lost before this chunk (as a capture can lose them).
        public var gap: Int
        public var bytes: [UInt8]
    }

    public var chunks: [Chunk] = []
    public var payloadCap: Int
    public var midstream: Bool
    public var splitSizes: [Int]

    public init(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let control = reader.byte()
        payloadCap = [0, 3, 100, 64 * 1024][Int(control & 3)]
        midstream = control & 4 != 0
        // Mostly pieces of a few bytes with a single byte now and then: boundaries fall everywhere
        // across runs without making every run pay for thousands of one-byte feeds.
        splitSizes = [1 + Int(control >> 3), 1, 7 + Int(control >> 4)]
        while !reader.isAtEnd {
            let head = reader.byte()
            let bytes = reader.bytes(reader.u16())
            // Bits 1-7 of 120 and above say how many bytes (1-8) were lost before the chunk.
            let gap = Int(head >> 1) >= 120 ? Int(head >> 1) - 119 : 0
            chunks.append(Chunk(direction: head & 1 == 0 ? .clientToServer : .serverToClient, gap: gap, bytes: bytes))
        }
    }

    /// The bytes of a conversation in this format, for seeds.
    public static func encode(control: UInt8, _ chunks: [(Direction, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = [control]
        for (direction, bytes) in chunks {
            for start in stride(from: 0, to: max(bytes.count, 1), by: 0xFFFF) {
                let piece = bytes[start..<min(bytes.count, start + 0xFFFF)]
                out += [direction == .clientToServer ? 0 : 1, UInt8(piece.count >> 8), UInt8(piece.count & 0xFF)] + piece
            }
        }
        return out
    }
}
