import CZlib
import Testing
@testable import WSTapWire
import WSTapTestSupport

/// The inflater against zlib: every kind of stream zlib's deflate makes, fed in pieces split anywhere,
/// must come out as the original; and damaged streams must fail exactly where zlib fails, with the
/// same output before the failure.
@Suite struct InflaterTests {
    /// Raw deflate with any level, strategy and window, one message per sync flush (RFC 7692 §7.2.1).
    final class Compressor {
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        init(level: Int32, strategy: Int32, windowBits: Int32, memLevel: Int32 = 8) {
            stream.initialize(to: z_stream())
            precondition(wstap_deflateInit2(stream, level, -windowBits, memLevel) == Z_OK)
            precondition(deflateParams(stream, level, strategy) == Z_OK)
        }
        deinit { deflateEnd(stream); stream.deallocate() }
        func message(_ input: [UInt8], final: Bool = false) -> [UInt8] {
            var input = input
            var result: [UInt8] = []
            var out = [UInt8](repeating: 0, count: 64 * 1024)
            input.withUnsafeMutableBytes { raw in
                stream.pointee.next_in = raw.baseAddress?.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_in = uInt(raw.count)
                repeat {
                    out.withUnsafeMutableBytes { o in
                        stream.pointee.next_out = o.baseAddress!.assumingMemoryBound(to: Bytef.self)
                        stream.pointee.avail_out = uInt(o.count)
                        _ = deflate(stream, final ? Z_FINISH : Z_SYNC_FLUSH)
                        result += o.prefix(o.count - Int(stream.pointee.avail_out))
                    }
                } while stream.pointee.avail_out == 0
            }
            if !final && result.suffix(4) == [0x00, 0x00, 0xFF, 0xFF] { result.removeLast(4) }
            return result
        }
    }

    static func sampleMessages(_ rng: inout SplitMix) -> [[UInt8]] {
        let words = Array("price quote order trade symbol bid ask volume user session token update".split(separator: " ").map { Array($0.utf8) })
        var json: [UInt8] = []
        while json.count < 300_000 { json += Array("{\"".utf8) + words[rng.below(words.count)] + Array("\": \(rng.below(100_000))}, ".utf8) }
        let random = (0..<70_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let runs = (0..<40_000).map { UInt8($0 / 997 % 3) }
        return [
            [], Array("Hello".utf8), Array(json[0..<120]), Array(json[0..<5_000]), random, runs,
            Array(json[1_000..<70_000]), Array(repeating: 0x61, count: 1_000), Array(json[5_000..<300_000]),
            Array(random[0..<40]), Array(json[100..<140]),
        ]
    }

    static func inflate(_ pieces: [[UInt8]], with inflater: Inflater, resetContext: Bool = false) throws -> [UInt8] {
        var out: [UInt8] = []
        for piece in pieces { try piece.withUnsafeBytes { try inflater.inflate($0) { out += $0 } } }
        try inflater.finishMessage(resetContext: resetContext) { out += $0 }
        return out
    }

    static func cut(_ bytes: [UInt8], _ rng: inout SplitMix) -> [[UInt8]] {
        var pieces: [[UInt8]] = []
        var start = 0
        while start < bytes.count {
            let size = [1, 2, 3, 7, 64, 1_448, 70_000][rng.below(7)]
            pieces.append(Array(bytes[start..<min(bytes.count, start + size)]))
            start += size
        }
        return pieces
    }

    @Test(arguments: [Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED])
    func everyStrategyLevelAndWindowRoundTrips(strategy: Int32) throws {
        var rng = SplitMix(seed: UInt64(strategy) + 1)
        let messages = Self.sampleMessages(&rng)
        for level: Int32 in [0, 1, 6, 9] {
            for windowBits: Int32 in [9, 12, 15] {
                for takeover in [true, false] {
                    let compressor = Compressor(level: level, strategy: strategy, windowBits: windowBits)
                    let inflater = Inflater()
                    for message in messages {
                        let compressed = compressor.message(message)
                        if !takeover { deflateReset(compressor.stream) }
                        let out = try Self.inflate(Self.cut(compressed, &rng), with: inflater, resetContext: !takeover)
                        #expect(out == message, "level \(level) window \(windowBits) takeover \(takeover) size \(message.count)")
                    }
                }
            }
        }
    }

    @Test func everySplitPointOfADynamicBlockGivesTheSameMessage() throws {
        var rng = SplitMix(seed: 7)
        let message = Array(Self.sampleMessages(&rng)[3])
        let compressed = Compressor(level: 9, strategy: Z_DEFAULT_STRATEGY, windowBits: 15).message(message)
        #expect(compressed[0] & 0x06 == 0x04, "first block is dynamic")
        for split in 0...compressed.count {
            for second in [split, min(compressed.count, split + 1), min(compressed.count, split + 5)] {
                let pieces = [Array(compressed[..<split]), Array(compressed[split..<second]), Array(compressed[second...])]
                #expect(try Self.inflate(pieces, with: Inflater()) == message, "split at \(split), \(second)")
            }
        }
    }

    /// A message cut short (a capture gap, a new message before this one's last fragment) shows what
    /// had been inflated by then: every prefix of a stream must give what zlib gives for it, whether it
    /// came whole or a byte at a time. Paired-literal table entries once held back a literal whose
    /// code had arrived, so the output of a cut message depended on where its input was split.
    @Test func nothingDecodableIsHeldBackAtTheEndOfTheInput() throws {
        var rng = SplitMix(seed: 11)
        let message = Array(Self.sampleMessages(&rng)[2])
        let compressed = Compressor(level: 9, strategy: Z_DEFAULT_STRATEGY, windowBits: 15).message(message)
        for end in 0...compressed.count {
            let prefix = Array(compressed[..<end])
            var expected: [UInt8] = []
            try prefix.withUnsafeBytes { try ZlibReferenceInflater().inflate($0) { expected += $0 } }
            for pieces in [[prefix], prefix.map { [$0] }] {
                let inflater = Inflater()
                var out: [UInt8] = []
                for piece in pieces { try piece.withUnsafeBytes { try inflater.inflate($0) { out += $0 } } }
                #expect(out == expected, "prefix of \(end) bytes in \(pieces.count) pieces")
            }
        }
    }

    @Test func aFinalBlockEndsTheStreamAndTheNextMessageStartsAfresh() throws {
        let inflater = Inflater()
        // §7.2.1: after a BFINAL block the sender appends an empty stored block, whose first byte stays.
        let first = Compressor(level: 6, strategy: Z_DEFAULT_STRATEGY, windowBits: 15).message(Array("final block".utf8), final: true) + [0x00]
        #expect(try Self.inflate([first], with: inflater) == Array("final block".utf8))
        let second = Compressor(level: 6, strategy: Z_DEFAULT_STRATEGY, windowBits: 15).message(Array("next".utf8))
        #expect(try Self.inflate([second], with: inflater) == Array("next".utf8))
    }

    /// Flips, inserts and drops bytes in valid streams. zlib is the judge: where it fails we must fail
    /// with the same reason and the same output before it; where it succeeds we must give its output.
    @Test func damagedStreamsFailWhereZlibFails() throws {
        var rng = SplitMix(seed: 42)
        let messages = Self.sampleMessages(&rng).filter { $0.count < 80_000 }
        var failures = 0
        for round in 0..<3_000 {
            let compressor = Compressor(level: [1, 6, 9][round % 3], strategy: [Z_DEFAULT_STRATEGY, Z_FIXED, Z_HUFFMAN_ONLY][round % 3 == 0 ? 0 : rng.below(3)], windowBits: 15)
            let first = messages[rng.below(messages.count)]
            let second = messages[rng.below(messages.count)]
            let clean = compressor.message(first)
            var damaged = compressor.message(second)
            guard !damaged.isEmpty else { continue }
            for _ in 0..<(1 + rng.below(3)) {
                let at = rng.below(damaged.count)
                switch rng.below(3) {
                case 0: damaged[at] ^= UInt8(1 << rng.below(8))
                case 1: damaged.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
                default: if damaged.count > 1 { damaged.remove(at: at) }
                }
            }
            let ours = Inflater()
            let reference = ZlibReferenceInflater()
            var ourOut: [UInt8] = [], referenceOut: [UInt8] = []
            var ourError: String?, referenceError: String?
            for (index, message) in [clean, damaged].enumerated() {
                let pieces = index == 0 ? [message] : Self.cut(message, &rng)
                do {
                    for piece in pieces { try piece.withUnsafeBytes { try ours.inflate($0) { ourOut += $0 } } }
                    try ours.finishMessage(resetContext: false) { ourOut += $0 }
                } catch Inflater.Failure.invalid(let reason) { ourError = reason }
                do {
                    for piece in pieces { try piece.withUnsafeBytes { try reference.inflate($0) { referenceOut += $0 } } }
                    try reference.finishMessage(resetContext: false) { referenceOut += $0 }
                } catch ZlibReferenceInflater.Failure.zlib(_, let reason) { referenceError = reason }
                if ourError != nil || referenceError != nil { break }
            }
            if referenceError != nil { failures += 1 }
            #expect(ourError == referenceError, "round \(round)")
            #expect(ourOut == referenceOut, "round \(round)")
        }
        // The damage must actually exercise the error paths, not only benign changes.
        #expect(failures > 600)
    }

    /// RFC 7692 §7.2.1: a sender flushes, so each message ends between blocks; one that ends inside a
    /// stored block still inflates (its tail reads as block data) but leaves the stream mid-block.
    @Test func saysWhetherAMessageEndedBetweenBlocks() throws {
        let inflater = Inflater()
        let flushed = Deflater().compressMessage(Array("hello hello hello".utf8))
        try flushed.withUnsafeBytes { try inflater.inflate($0) { _ in } }
        try inflater.finishMessage(resetContext: false) { _ in }
        #expect(inflater.endsOnBlockBoundary)
        // A stored block of 10 bytes with only 3 of them: the 4 bytes of tail are 4 more.
        let unfinished: [UInt8] = [0x00, 0x0A, 0x00, 0xF5, 0xFF] + Array("abc".utf8)
        var out: [UInt8] = []
        try unfinished.withUnsafeBytes { try inflater.inflate($0) { out += $0 } }
        try inflater.finishMessage(resetContext: false) { out += $0 }
        #expect(out == Array("abc".utf8) + [0x00, 0x00, 0xFF, 0xFF])
        #expect(!inflater.endsOnBlockBoundary)
    }
}
