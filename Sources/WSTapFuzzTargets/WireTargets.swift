import WSTapDissect
import WSTapTestSupport
import WSTapWire

/// Parsers of the RFC 6455 / 7692 codec and of HTTP heads.
enum WireTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "frame-parser", input: "1 byte of split sizes, then WebSocket frame bytes", maxLength: 2048, run: frameParser),
        FuzzTarget(name: "http-head", input: "1 byte (expected kind, split size), then bytes that may be an HTTP head", maxLength: 2048, run: httpHead),
        FuzzTarget(name: "http-body", input: "1 byte (framing: length, chunked, until close), 2 bytes of length, then body bytes", maxLength: 1024, run: httpBody),
        FuzzTarget(name: "tls-client-hello", input: "the first bytes of a TLS connection", maxLength: 4096, run: tlsClientHello),
        FuzzTarget(name: "deflate-parameters", input: "Sec-WebSocket-Extensions values, one per line", maxLength: 512, run: deflateParameters),
        FuzzTarget(name: "inflater", input: "1 byte (split size, context reset), then raw deflate data of messages separated by 0xFF 0x00", maxLength: 2048, run: inflater),
    ]

    /// What a parse found: each frame's header and its payload bytes (ranges differ by split, bytes not).
    private struct ParsedFrame: Equatable {
        var header: FrameHeader
        var payload: [UInt8] = []
        var complete = false
    }

    private static func parseFrames(_ bytes: [UInt8], sizes: [Int]) -> [ParsedFrame] {
        var parser = FrameParser()
        var frames: [ParsedFrame] = []
        forEachPiece(bytes, sizes: sizes) { raw in
                var index = 0
                while let event = parser.next(raw, index: &index) {
                    switch event {
                    case .header(let header):
                        FuzzCheck.expect(header.encoded().count == header.headerLength, "header length of \(header)")
                        frames.append(ParsedFrame(header: header))
                    case .payload(let range, let offset):
                        FuzzCheck.expect(!frames.isEmpty && offset == UInt64(frames[frames.count - 1].payload.count),
                                         "payload at offset \(offset) does not follow what came before")
                        frames[frames.count - 1].payload += raw[range]
                    case .frameEnd:
                        FuzzCheck.expect(!frames.isEmpty && UInt64(frames[frames.count - 1].payload.count) == frames[frames.count - 1].header.payloadLength,
                                         "frame ended before its payload length")
                        frames[frames.count - 1].complete = true
                    }
                }
                FuzzCheck.expect(index == raw.count, "the parser stopped at \(index) of \(raw.count) bytes")
        }
        return frames
    }

    static func frameParser(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let sizes = [1 + Int(reader.byte() % 7), 1 + Int(reader.byte())]
        let frames = reader.rest()
        // The parser promises the same frames however the input is split.
        FuzzCheck.expect(parseFrames(frames, sizes: []) == parseFrames(frames, sizes: sizes), "split-dependent frames")
        // A header it parsed encodes back to the bytes it came from (length encoding kept).
        var parser = FrameParser()
        frames.withUnsafeBytes { raw in
            var index = 0
            if case .header(let header)? = parser.next(raw, index: &index) {
                FuzzCheck.expect(Array(frames.prefix(header.headerLength)) == header.encoded(), "header does not round-trip: \(header)")
            }
        }
    }

    static func httpHead(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let control = reader.byte()
        let expecting: HTTPHeadParser.Expecting = [.request, .response, .either][Int(control % 3)]
        let bytes = reader.rest()
        var whole = HTTPHeadParser(limit: 4096, expecting: expecting)
        let all = try? whole.feed(bytes)
        // Fed in pieces, the parser finds the same head at the same place (or fails the same way).
        var split = HTTPHeadParser(limit: 4096, expecting: expecting)
        var found: (head: HTTPHead, consumed: Int)?
        var offset = 0
        var failed = false
        for piece in cut(bytes, sizes: [1 + Int(control >> 2)]) where found == nil && !failed {
            do {
                if let result = try split.feed(piece) { found = (result.head, offset + result.consumed) }
            } catch {
                failed = true
            }
            offset += piece.count
        }
        FuzzCheck.expect(all?.head.bytes == found?.head.bytes && all?.consumed == found?.consumed, "split-dependent head")
        guard let (head, consumed) = all else { return }
        // The head is exactly the bytes it was read from, and reads the same again.
        FuzzCheck.expect(head.bytes == Array(bytes[..<consumed]), "head bytes differ from the input")
        var again = HTTPHeadParser(limit: 1 << 20, expecting: .either)
        FuzzCheck.expect((try? again.feed(head.bytes))?.head == head, "head does not re-parse")
        // Rewrites change what they say and keep the head readable.
        var rewritten = head
        rewritten.setHeader("Host", "fuzz.test:1")
        FuzzCheck.expect(rewritten.values("host") == ["fuzz.test:1"], "setHeader gave \(rewritten.values("host"))")
        FuzzCheck.expect(rewritten.headers.count == head.headers.count - max(0, head.values("host").count - 1) + (head.values("host").isEmpty ? 1 : 0),
                         "setHeader changed other fields")
        rewritten.removeHeaders("Content-Length")
        FuzzCheck.expect(rewritten.values("content-length").isEmpty, "removeHeaders left Content-Length")
        if head.method != nil {
            rewritten.setRequestTarget("/fuzz")
            FuzzCheck.expect(rewritten.target == "/fuzz" && rewritten.method == head.method && rewritten.version == head.version,
                             "setRequestTarget gave \(rewritten.startLine)")
        }
        var reparsed = HTTPHeadParser(limit: 1 << 20, expecting: .either)
        FuzzCheck.expect((try? reparsed.feed(rewritten.bytes))?.head == rewritten, "a rewritten head does not re-parse")
    }

    static func httpBody(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let control = reader.byte()
        let length = reader.u16()
        let head: HTTPHead
        switch control % 3 {
        case 0: head = HTTPHead(startLine: .response(version: "HTTP/1.1", status: 200, reason: "OK"), headers: [("Content-Length", "\(length)")])
        case 1: head = HTTPHead(startLine: .response(version: "HTTP/1.1", status: 200, reason: "OK"), headers: [("Transfer-Encoding", "chunked")])
        default: head = HTTPHead(startLine: .response(version: "HTTP/1.0", status: 200, reason: "OK"), headers: [])
        }
        let body = reader.rest()
        func consume(_ pieces: [[UInt8]]) -> (used: Int, done: Bool, failed: Bool) {
            guard var framing = try? HTTPBodyFraming.forResponse(head, requestMethod: "GET") else { return (0, true, true) }
            var used = 0
            for piece in pieces {
                var index = 0
                do {
                    try piece.withUnsafeBytes { try framing.consume($0, index: &index) }
                } catch {
                    return (used + index, framing.isDone, true)
                }
                FuzzCheck.expect(index <= piece.count, "consumed past the input")
                used += index
                if framing.isDone { break }
            }
            return (used, framing.isDone, false)
        }
        let whole = consume([body])
        let split = consume(cut(body, sizes: [1 + Int(control >> 2)]))
        if !whole.failed && !split.failed {
            FuzzCheck.expect(whole.used == split.used && whole.done == split.done, "split-dependent body end: \(whole) vs \(split)")
        }
    }

    static func tlsClientHello(_ data: [UInt8]) {
        let full = TLSClientHello.parse(data)
        // A prefix of a recognised ClientHello is never taken for something else.
        if case .clientHello = full, data.count > 5 {
            let prefix = TLSClientHello.parse(Array(data.prefix(data.count / 2)))
            FuzzCheck.expect(prefix == .needMoreBytes || prefix == full, "prefix parsed as \(prefix)")
        }
    }

    static func deflateParameters(_ data: [UInt8]) {
        let values = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for offer in ExtensionOffer.parse(values) {
            let (configuration, _) = PerMessageDeflate.fromResponse(offer)
            _ = configuration.description
            _ = configuration.resetsContext(fromClient: true)
        }
    }

    /// Differential: our inflater against zlib on the same messages, fed in pieces. Where zlib
    /// succeeds ours must give its output; where zlib fails ours must fail with zlib's reason. Before
    /// a message's end is fed the outputs must agree too: nothing decodable may be held back, since a
    /// message cut short (a capture gap, a violation) shows what had come out by then.
    static func inflater(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let control = reader.byte()
        let resetContext = control & 1 != 0
        let messages = split(reader.rest(), separator: [0xFF, 0x00])
        let ours = Inflater()
        let reference = ZlibReferenceInflater()
        var ourOut: [UInt8] = [], referenceOut: [UInt8] = []
        let limit = 4 << 20  // outputs compared up to here: bombs are the dissector's limit to catch
        for message in messages.prefix(8) {
            var ourError: String?, referenceError: String?
            var ourBeforeEnd: Int?, referenceBeforeEnd: Int?
            do {
                for piece in cut(message, sizes: [1 + Int(control >> 1)]) {
                    try piece.withUnsafeBytes { try ours.inflate($0) { if ourOut.count < limit { ourOut += $0 } } }
                }
                ourBeforeEnd = ourOut.count
                try ours.finishMessage(resetContext: resetContext) { if ourOut.count < limit { ourOut += $0 } }
            } catch Inflater.Failure.invalid(let reason) {
                ourError = reason
            } catch {
                FuzzCheck.fail("unexpected inflater error \(error)")
            }
            do {
                try message.withUnsafeBytes { try reference.inflate($0) { if referenceOut.count < limit { referenceOut += $0 } } }
                referenceBeforeEnd = referenceOut.count
                try reference.finishMessage(resetContext: resetContext) { if referenceOut.count < limit { referenceOut += $0 } }
            } catch ZlibReferenceInflater.Failure.zlib(_, let reason) {
                referenceError = reason
            } catch {
                FuzzCheck.fail("unexpected zlib error \(error)")
            }
            if let ourBeforeEnd, let referenceBeforeEnd, ourBeforeEnd < limit && referenceBeforeEnd < limit {
                FuzzCheck.expect(ourBeforeEnd == referenceBeforeEnd, "before the message's end: \(ourBeforeEnd) bytes out, zlib \(referenceBeforeEnd)")
            }
            FuzzCheck.expect(ourError == referenceError, "inflater says \(ourError ?? "ok"), zlib says \(referenceError ?? "ok")")
            FuzzCheck.expect(ourOut.prefix(limit) == referenceOut.prefix(limit), "inflated output differs from zlib's")
            if ourError != nil || ourOut.count >= limit { return }
        }
    }

    static func split(_ bytes: [UInt8], separator: [UInt8]) -> [[UInt8]] {
        var parts: [[UInt8]] = [[]]
        var index = 0
        while index < bytes.count {
            if index + separator.count <= bytes.count && Array(bytes[index..<(index + separator.count)]) == separator {
                parts.append([])
                index += separator.count
            } else {
                parts[parts.count - 1].append(bytes[index])
                index += 1
            }
        }
        return parts
    }
}
