import Testing
@testable import WSTapWire

/// Parses all of `bytes` fed in pieces of the given sizes; returns headers and unmasked payloads.
func parseFrames(_ bytes: [UInt8], pieces: [Int]? = nil) -> [(FrameHeader, [UInt8])] {
    var parser = FrameParser()
    var frames: [(FrameHeader, [UInt8])] = []
    var chunks: [[UInt8]] = []
    if let pieces {
        var start = 0
        for size in pieces where start < bytes.count { chunks.append(Array(bytes[start..<min(bytes.count, start + size)])); start += size }
        if start < bytes.count { chunks.append(Array(bytes[start...])) }
    } else {
        chunks = [bytes]
    }
    for chunk in chunks {
        chunk.withUnsafeBytes { raw in
            var index = 0
            while let event = parser.next(raw, index: &index) {
                switch event {
                case .header(let h): frames.append((h, []))
                case .payload(let range, let offset):
                    var piece = Array(raw[range])
                    if let key = frames.last!.0.maskKey { Masking.apply(key: key, offset: offset, to: &piece) }
                    frames[frames.count - 1].1 += piece
                case .frameEnd: break
                }
            }
        }
    }
    return frames
}

@Suite struct FrameParserTests {
    // RFC 6455 §5.7 examples, literal bytes.
    @Test func rfc6455UnmaskedText() {
        let frames = parseFrames([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
        #expect(frames.count == 1)
        #expect(frames[0].0 == FrameHeader(fin: true, opcode: .text, maskKey: nil, payloadLength: 5))
        #expect(frames[0].1 == Array("Hello".utf8))
    }

    @Test func rfc6455MaskedText() {
        let frames = parseFrames([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
        #expect(frames[0].0.maskKey == 0x37FA_213D)
        #expect(frames[0].0.headerLength == 6)
        #expect(frames[0].1 == Array("Hello".utf8))
    }

    @Test func rfc6455FragmentedText() {
        let frames = parseFrames([0x01, 0x03, 0x48, 0x65, 0x6C, 0x80, 0x02, 0x6C, 0x6F])
        #expect(frames.map(\.0.fin) == [false, true])
        #expect(frames.map(\.0.opcode) == [.text, .continuation])
        #expect(frames.flatMap(\.1) == Array("Hello".utf8))
    }

    @Test func rfc6455PingAndMaskedPong() {
        let frames = parseFrames([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
        #expect(frames.map(\.0.opcode) == [.ping, .pong])
        #expect(frames.map(\.1) == [Array("Hello".utf8), Array("Hello".utf8)])
    }

    @Test func rfc6455SixteenAndSixtyFourBitLengths() {
        let body256 = [UInt8](repeating: 7, count: 256)
        let body64k = [UInt8](repeating: 9, count: 65536)
        let bytes = [0x82, 0x7E, 0x01, 0x00] + body256 + [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0] + body64k
        let frames = parseFrames(bytes, pieces: [3, 1, 100, 7, 9000])
        #expect(frames.map(\.0.lengthEncoding) == [.sixteenBit, .sixtyFourBit])
        #expect(frames.map(\.0.payloadLength) == [256, 65536])
        #expect(frames.map(\.0.hasNonMinimalLength) == [false, false])
        #expect(frames[0].1 == body256 && frames[1].1 == body64k)
    }

    @Test func nonMinimalAndMSBLengthsAreParsedAndFlagged() {
        let nonMinimal: [UInt8] = [0x81, 0x7F, 0, 0, 0, 0, 0, 0, 0, 2, 0x68, 0x69]
        let frames = parseFrames(nonMinimal)
        #expect(frames[0].0.hasNonMinimalLength)
        #expect(frames[0].1 == Array("hi".utf8))
        let msb = parseFrames([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1])
        #expect(msb[0].0.hasLengthMSBSet)
        #expect(!parseFrames([0x82, 0x7E, 0x00, 0x7D] + [UInt8](repeating: 0, count: 125))[0].0.hasLengthMSBSet)
        #expect(parseFrames([0x82, 0x7E, 0x00, 0x7D] + [UInt8](repeating: 0, count: 125))[0].0.hasNonMinimalLength)
    }

    @Test func everySplitPointGivesTheSameFrames() {
        let masked = FrameHeader(fin: false, rsv1: true, opcode: .binary, maskKey: 0xA1B2_C3D4, payloadLength: 300)
        var bytes = masked.encoded() + (0..<300).map { UInt8($0 & 0xFF) }
        bytes += FrameHeader(fin: true, opcode: .continuation, maskKey: nil, payloadLength: 0).encoded()
        bytes += FrameHeader(fin: true, opcode: .ping, maskKey: 0x0102_0304, payloadLength: 3).encoded() + [1, 2, 3]
        let whole = parseFrames(bytes)
        #expect(whole.count == 3)
        for split in 1..<bytes.count {
            let pieces = parseFrames(bytes, pieces: [split])
            #expect(pieces.map(\.0) == whole.map(\.0), "split at \(split)")
            #expect(pieces.map(\.1) == whole.map(\.1), "split at \(split)")
        }
        // Byte by byte too.
        let single = parseFrames(bytes, pieces: [Int](repeating: 1, count: bytes.count))
        #expect(single.map(\.1) == whole.map(\.1))
    }

    @Test func headerEncodingRoundTrips() {
        for length: UInt64 in [0, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for key: UInt32? in [nil, 0xDEAD_BEEF] {
                let h = FrameHeader(fin: length % 2 == 0, rsv2: true, opcode: .binary, maskKey: key, payloadLength: length)
                let parsed = parseFrames(h.encoded())
                #expect(parsed.first?.0 == h)
                #expect(h.encoded().count == h.headerLength)
            }
        }
    }

    @Test func maskingAtAnyOffsetMatchesBytewiseXor() {
        let key: UInt32 = 0x1234_5678
        let keyBytes: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        let data = (0..<61).map { UInt8($0 * 7 & 0xFF) }
        for offset in 0..<8 {
            var fast = data
            Masking.apply(key: key, offset: UInt64(offset), to: &fast)
            let slow = data.enumerated().map { $0.element ^ keyBytes[($0.offset + offset) % 4] }
            #expect(fast == slow)
        }
    }
}
