import Testing
@testable import WSTapWire

/// Heads are kept as the bytes they arrived with; rewrites touch only the lines they change.
@Suite struct HTTPHeadTests {
    /// Non-ASCII values (UTF-8 and bytes that are not), odd whitespace, obsolete folding, a bare LF,
    /// lower-case names and an empty value: everything a normalising parser would change.
    static let awkward: [UInt8] = Array("GET /caf\u{00E9}?q=1 HTTP/1.1\r\n".utf8)
        + Array("host:  example.test:9000 \r\n".utf8)
        + Array("X-U: caf".utf8) + [0xC3, 0xA9] + Array("\r\n".utf8)
        + Array("Cookie: a=".utf8) + [0xFF, 0xFE] + Array("; b=2\r\n".utf8)
        + Array("X-Folded: one\r\n\ttwo\r\n".utf8)
        + Array("X-Empty:\r\n".utf8)
        + Array("Upgrade: websocket\n".utf8)
        + Array("Connection: Upgrade\r\n\r\n".utf8)

    @Test func bytesAreKeptExactlyAtEverySplitPoint() throws {
        for split in 0...Self.awkward.count {
            var parser = HTTPHeadParser()
            var head = try parser.feed(Array(Self.awkward[..<split]))?.head
            if head == nil { head = try parser.feed(Array(Self.awkward[split...]))?.head }
            let parsed = try #require(head, "split at \(split)")
            #expect(parsed.bytes == Self.awkward)
            #expect(parsed.hasBareLineFeeds)
        }
    }

    @Test func theParsedViewDecodesEachByteAsOneCharacter() throws {
        var parser = HTTPHeadParser()
        let head = try #require(try parser.feed(Self.awkward)?.head)
        #expect(head.value("x-u") == "caf\u{00C3}\u{00A9}")  // ISO-8859-1, lossless
        #expect(HTTPHead.wireBytes(head.value("x-u")!) == Array("caf".utf8) + [0xC3, 0xA9])
        #expect(head.value("host") == "example.test:9000")
        #expect(head.value("x-folded") == "one two")
        #expect(head.value("x-empty") == "")
        #expect(head.target == "/caf\u{00C3}\u{00A9}?q=1")
    }

    @Test func setHeaderChangesOnlyThatValue() throws {
        var parser = HTTPHeadParser()
        var head = try #require(try parser.feed(Self.awkward)?.head)
        head.setHeader("Host", "upstream.test:1")
        let expected = replacing(Self.awkward, Array("  example.test:9000 ".utf8), with: Array("  upstream.test:1".utf8))
        #expect(head.bytes == expected)
        #expect(head.value("host") == "upstream.test:1")
    }

    @Test func setRequestTargetKeepsMethodAndVersion() throws {
        var parser = HTTPHeadParser()
        var head = try #require(try parser.feed(Self.awkward)?.head)
        head.setRequestTarget("/socket")
        #expect(head.bytes == replacing(Self.awkward, Array("/caf\u{00E9}?q=1".utf8), with: Array("/socket".utf8)))
    }

    @Test func removingAndAddingFields() throws {
        var parser = HTTPHeadParser()
        var head = try #require(try parser.feed(Self.awkward)?.head)
        head.removeHeaders("X-Folded")
        #expect(head.bytes == replacing(Self.awkward, Array("X-Folded: one\r\n\ttwo\r\n".utf8), with: []))
        head.setHeader("X-New", "v")
        #expect(head.bytes.starts(with: Array("GET /caf\u{00E9}?q=1 HTTP/1.1\r\nX-New: v\r\nhost:".utf8)))

        var bare = HTTPHeadParser()
        var lf = try #require(try bare.feed(Array("GET / HTTP/1.1\nA: 1\n\n".utf8))?.head)
        lf.setHeader("Host", "h")
        #expect(lf.bytes == Array("GET / HTTP/1.1\nHost: h\nA: 1\n\n".utf8))  // inserted lines follow the head's own line ends
    }

    @Test func duplicatesAfterTheFirstAreRemovedBySetHeader() throws {
        var parser = HTTPHeadParser()
        var head = try #require(try parser.feed(Array("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhost: b\r\n\r\n".utf8))?.head)
        head.setHeader("Host", "c")
        #expect(head.bytes == Array("GET / HTTP/1.1\r\nHost: c\r\nX: 1\r\n\r\n".utf8))
    }

    /// Found by fuzzing: a whitespace line after the start line was taken as a field, and a Host that
    /// wstap inserted before it turned it into Host's folded continuation (RFC 9112 §2.2 says reject).
    @Test func headsThatServersWouldReadDifferentlyAreRefused() {
        for text in ["GET / HTTP/1.1\r\n X: 1\r\n\r\n", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "GET / HTTP/1.1\r\n: a\r\n\r\n"] {
            var parser = HTTPHeadParser()
            #expect(throws: HTTPHeadError.self, "\(text)") { try parser.feed(Array(text.utf8)) }
        }
    }

    /// Found by fuzzing: "\r\n\r\n" fed in pieces was taken for an empty head, fed at once it was
    /// skipped as leading empty lines (RFC 9112 §2.2). Now it is skipped however it arrives.
    @Test func leadingEmptyLinesAreSkippedAtEverySplitPoint() throws {
        let bytes = Array("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        for split in 0...bytes.count {
            var parser = HTTPHeadParser(expecting: .request)
            var head = try parser.feed(Array(bytes[..<split]))?.head
            if head == nil { head = try parser.feed(Array(bytes[split...]))?.head }
            #expect(head?.target == "/", "split at \(split)")
        }
    }

    /// Found by fuzzing: after 16 bytes of leading empty lines the start was no longer checked.
    @Test func theStartIsCheckedAfterAnyNumberOfEmptyLines() {
        var parser = HTTPHeadParser(expecting: .response)
        var refused = false
        for byte in [UInt8](repeating: 0x0D, count: 24) + [0x00, 0x41] {
            do { _ = try parser.feed([byte]) } catch { refused = true; break }
        }
        #expect(refused)
    }

    @Test func bytesThatCannotStartAHeadAreRefusedAtOnce() {
        var requests = HTTPHeadParser(expecting: .request)
        #expect(throws: HTTPHeadError.self) { try requests.feed([0x16, 0x03, 0x01, 0x02, 0x00]) }
        do {
            var fresh = HTTPHeadParser(expecting: .request)
            _ = try fresh.feed([0x16, 0x03, 0x01])
            Issue.record("a TLS record was taken as HTTP")
        } catch let error as HTTPHeadError {
            #expect(error.looksLikeTLS)
        } catch {
            Issue.record("\(error)")
        }
        var responses = HTTPHeadParser(expecting: .response)
        #expect(throws: HTTPHeadError.self) { try responses.feed(Array("SSH-2.0-OpenSSH\r\n".utf8)) }
        var partial = HTTPHeadParser(expecting: .response)
        #expect(throws: Never.self) { try partial.feed(Array("HTT".utf8)) }  // still could be HTTP
        var method = HTTPHeadParser(expecting: .request)
        #expect(throws: Never.self) { try method.feed(Array("\r\nM-SEARCH * HTTP/1.1\r\n".utf8)) }
    }

    private func replacing(_ bytes: [UInt8], _ old: [UInt8], with new: [UInt8]) -> [UInt8] {
        for start in 0...(bytes.count - old.count) where Array(bytes[start..<(start + old.count)]) == old {
            return Array(bytes[..<start]) + new + Array(bytes[(start + old.count)...])
        }
        return bytes
    }
}
