import CPcap
import Foundation
import WSTapCapture
import WSTapDissect
import WSTapTestSupport
import WSTapWire

/// Seed corpora: real traffic from the reference captures (their TCP streams, heads, frames, TLS
/// records, packets) in each target's input format, plus the kept regression inputs, so the fuzzer
/// starts from real handshakes and frames instead of random bytes.
public enum FuzzSeeds {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { Array($0) }
    }

    /// Writes `<directory>/<target>/seed-N` for every target; returns the count per target.
    /// - Parameters:
    ///   - captures: folder of pcap/pcapng files (the project's ../shared/captures).
    ///   - regressions: folder with one subfolder of kept inputs per target (Tests/Regressions).
    public static func write(to directory: String, captures: String, regressions: String) throws -> [(String, Int)] {
        var seeds: [String: [[UInt8]]] = [:]
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: captures)) ?? [])
            .filter { $0.hasSuffix(".pcap") || $0.hasSuffix(".pcapng") }.sorted()
        guard !files.isEmpty else { throw Failure(description: "no pcap or pcapng files in \(captures)") }
        for name in files {
            let path = (captures as NSString).appendingPathComponent(name)
            guard let bytes = read(path) else { continue }
            seeds["capture-file", default: []].append(bytes)
            let keyLogText = PcapngSecrets.keyLogText(bytes: bytes)
            if let keyLogText { seeds["key-log", default: []].append(Array(keyLogText.utf8)) }
            let (link, packets, connections) = try streams(path)
            seeds["packet-decoder", default: []] += packets.prefix(6).map { [UInt8(CaptureTargets.linkTypes.firstIndex(of: link) ?? 1), UInt8($0.count >> 8), UInt8($0.count & 0xFF)] + $0 }
            var sessionSeed: [UInt8] = []
            for packet in packets.prefix(200) where packet.count < 0xFFFF {
                sessionSeed += [UInt8(CaptureTargets.linkTypes.firstIndex(of: link) ?? 1), UInt8(packet.count >> 8), UInt8(packet.count & 0xFF)] + packet
            }
            seeds["capture-session", default: []].append(sessionSeed)
            for connection in connections {
                add(connection, keyLogText: keyLogText, to: &seeds)
            }
        }
        addSynthetic(to: &seeds)
        var counts: [(String, Int)] = []
        for target in FuzzTarget.all {
            let folder = (directory as NSString).appendingPathComponent(target.name)
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            var list = seeds[target.name] ?? []
            let kept = (regressions as NSString).appendingPathComponent(target.name)
            for file in ((try? FileManager.default.contentsOfDirectory(atPath: kept)) ?? []).sorted() {
                if let bytes = read((kept as NSString).appendingPathComponent(file)) { list.append(bytes) }
            }
            for (index, bytes) in list.enumerated() where bytes.count <= 1 << 20 {
                let seed = (folder as NSString).appendingPathComponent("seed-\(index)")
                guard FileManager.default.createFile(atPath: seed, contents: Data(bytes)) else {
                    throw Failure(description: "cannot write \(seed)")
                }
            }
            counts.append((target.name, list.count))
        }
        return counts
    }

    /// One connection's byte streams in arrival order, as the reassembler delivered them.
    struct Connection {
        var chunks: [(Direction, [UInt8])] = []
        func stream(_ direction: Direction) -> [UInt8] { chunks.filter { $0.0 == direction }.flatMap(\.1) }
    }

    /// The link type, the frames, and the reassembled connections of a capture.
    static func streams(_ path: String) throws -> (LinkType, [[UInt8]], [Connection]) {
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
        guard let handle = pcap_open_offline(path, &errorBuffer) else { throw Failure(description: "cannot read \(path)") }
        defer { pcap_close(handle) }
        guard let link = LinkType(rawValue: pcap_datalink(handle)) else { return (.ethernet, [], []) }
        let reassembler = TCPReassembler()
        var connections: [UInt64: Connection] = [:]
        var packets: [[UInt8]] = []
        var events: [TCPReassembler.Event] = []
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        func take(_ events: [TCPReassembler.Event]) {
            for case .data(let id, let direction, let bytes, _) in events { connections[id, default: Connection()].chunks.append((direction, bytes)) }
        }
        while pcap_next_ex(handle, &header, &data) == 1, let header, let data {
            let frame = Array(UnsafeBufferPointer(start: data, count: Int(header.pointee.caplen)))
            packets.append(frame)
            if let segment = PacketDecoder.tcpSegment(link: link, frame: frame, originalLength: Int(header.pointee.len)) {
                events.removeAll(keepingCapacity: true)
                reassembler.add(segment, at: Timestamp(nanoseconds: 0), into: &events)
                take(events)
            }
        }
        events.removeAll()
        reassembler.finish(at: Timestamp(nanoseconds: 0), into: &events)
        take(events)
        return (link, packets, connections.keys.sorted().compactMap { connections[$0] })
    }

    private static func add(_ connection: Connection, keyLogText: String?, to seeds: inout [String: [[UInt8]]]) {
        let client = connection.stream(.clientToServer), server = connection.stream(.serverToClient)
        guard !client.isEmpty else { return }
        if client.first == 0x16 {
            seeds["tls-client-hello", default: []].append(Array(client.prefix(4096)))
            if let keyLogText {
                var seed = Array(keyLogText.utf8.prefix(0xFFFF))
                seed.insert(contentsOf: [UInt8(seed.count >> 8), UInt8(seed.count & 0xFF)], at: 0)
                for (direction, bytes) in connection.chunks where bytes.count < 0xFFFF {
                    seed += [direction == .clientToServer ? 0 : 1, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
                }
                seeds["tls-decryptor", default: []].append(seed)
            }
            return
        }
        seeds["stream-dissector", default: []].append(Conversation.encode(control: 0x12, connection.chunks))
        seeds["http-head", default: []].append([0] + Array(client.prefix(4096)))
        seeds["http-head", default: []].append([1] + Array(server.prefix(4096)))
        if let end = headEnd(server) {
            seeds["frame-parser", default: []].append([3, 17] + Array(server[end...].prefix(1 << 16)))
        } else {
            seeds["frame-parser", default: []].append([3, 17] + Array(server.prefix(1 << 16)))
        }
        if let end = headEnd(client) {
            seeds["frame-parser", default: []].append([1, 5] + Array(client[end...].prefix(1 << 16)))
        }
        // The relay's view: the client's head, the upstream connected, the answer, then the frames.
        var relay: [UInt8] = [0]
        func event(_ kind: UInt8, _ bytes: [UInt8]) {
            let piece = bytes.prefix(4095)
            relay += [kind, UInt8(piece.count >> 8), UInt8(piece.count & 0xFF)] + piece
        }
        event(11, [])
        for (index, chunk) in connection.chunks.enumerated() {
            event(chunk.0 == .clientToServer ? 0 : 3, chunk.1)
            if index == 0 { event(5, []) }
        }
        event(7, [])
        event(8, [])
        seeds["relay-session", default: []].append(relay)
        // The changing relay starts after the 101: the frames of both directions, heads cut off.
        if let clientEnd = headEnd(client), let serverEnd = headEnd(server) {
            for options: UInt8 in [0, 1, 2, 3] {
                var changing: [UInt8] = [options]
                var offsets = (client: 0, server: 0)
                for chunk in connection.chunks {
                    let up = chunk.0 == .clientToServer
                    let skip = max(0, (up ? clientEnd - offsets.client : serverEnd - offsets.server))
                    if up { offsets.client += chunk.1.count } else { offsets.server += chunk.1.count }
                    let piece = chunk.1.dropFirst(skip).prefix(4095)
                    guard !piece.isEmpty else { continue }
                    changing += [up ? 0 : 2, UInt8(piece.count >> 8), UInt8(piece.count & 0xFF)] + piece
                }
                seeds["changing-relay", default: []].append(Array(changing.prefix(4096)))
            }
        }
    }

    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 3..<bytes.count where bytes[index - 3] == 0x0D && bytes[index - 2] == 0x0A && bytes[index - 1] == 0x0D && bytes[index] == 0x0A {
            return index + 1
        }
        return nil
    }

    /// Seeds for inputs the captures do not hold in the target's shape.
    private static func addSynthetic(to seeds: inout [String: [[UInt8]]]) {
        seeds["tls-client-hello", default: []] += [TLSHelloFixture.withSNI, TLSHelloFixture.withoutSNI]
        seeds["http-body", default: []] += [[0, 0, 5] + Array("hello".utf8), [1, 0, 0] + Array("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n".utf8),
                                             [2, 0, 0] + Array("until close".utf8), [1, 0, 0] + Array("a;ext=1\r\n0123456789\r\n0\r\n\r\n".utf8)]
        seeds["deflate-parameters", default: []] += [
            Array("permessage-deflate; client_max_window_bits".utf8),
            Array("permessage-deflate; server_no_context_takeover; client_max_window_bits=10\nx-webkit-deflate-frame".utf8),
            Array("permessage-deflate; server_max_window_bits=\"12\", permessage-deflate".utf8),
        ]
        var rng = SplitMix(seed: 7)
        for round in 0..<6 {
            let deflater = Deflater(windowBits: 9 + round, noContextTakeover: round % 2 == 0)
            var seed: [UInt8] = [UInt8(round * 37)]
            for message in 0..<3 {
                let text = (0..<(50 + rng.below(400))).map { _ in UInt8(ascii: "a") + UInt8(rng.below(message + 3)) }
                if message > 0 { seed += [0xFF, 0x00] }
                seed += deflater.compressMessage(text + Array(String(repeating: "{\"id\":\(message)}", count: 8).utf8))
            }
            seeds["inflater", default: []].append(seed)
        }
        seeds["json", default: []] += [#"{"op":"subscribe","data":[{"id":7,"tags":["a","b"]}],"ok":true,"n":null}"#,
                                       #"[1,-2.5e3,"x\u00e9\n\ud83d\ude00",{},[]]"#, "0", #""\"""#].map { Array($0.utf8) }
        seeds["filter", default: []] += [
            #"from=client op=text text~/"op":"subscribe"/"#, #"from=server json.type="tick" len>4K"#, "url~/chat/ -op=ping -op=pong",
            "type=message (op=ping or op=pong) not compressed?", #"json.data[0].tags[1]="b" bytes:7b22 code>=1000 reason:by"#,
            "diag=reserved-opcode or frames>1 and wire<=0.5M", #"json["odd key"]? /SUB/i "two words" masked=true fin=false"#,
        ].map { Array($0.utf8) + [0] + Array(#"{"type":"tick","data":[{"id":7,"tags":["a","b"]}],"odd key":1}"#.utf8) }
        let rulesFile = """
            # a rules file
            [greet p=0.5] from=client op=text => replace /(\\w+)/ "<$1>"; mark g
            json.type? => set json.type "edited"; delete json.id; set json.data[1] {"a":[1,null]}
            op=ping => drop
            * => delay 200ms±50ms; hold; inject to=client text "hi"; inject to=server hex:0102; close 4000 "bye" to=server
            len>4K => fragment size=1K; uncompressed; corrupt utf8; duplicate; replace-bytes hex:6162 hex:ff; exec ./hook --x
            """
        let recording = dissect([(c2s, Wire.request(extensions: "permessage-deflate")), (s2c, Wire.response(extensions: "permessage-deflate")),
                                 (c2s, Wire.text(#"{"op":"hi"}"#, mask: 7)), (s2c, Wire.frame(.binary, [0, 1, 0xFF])),
                                 (c2s, Wire.frame(.close, [0x03, 0xE8] + Array("bye".utf8), mask: 9)), (s2c, Wire.frame(.text, [0x61, 0xFF]))])
        seeds["jsonl-reader", default: []].append(Array(recording.joined().utf8))
        seeds["control-request", default: []] += [
            "\u{0}/api/records?after=2&limit=3&filter=type%3Dmessage%20from%3Dserver&conn=1",
            "\u{0}/api/events?filter=op%3Dtext\nlast-event-id: 3",
            "\u{0}/api/connections?state=open&filter=path%3D%22%2Fchat%22\norigin: http://127.0.0.1:1",
            "\u{0}/?token=t&x=%zz\nauthorization:\ncookie: a=b; wstap_token=t",
            "\u{1}/api/connections/1\nhost: evil.test:1",
            "\u{0}/api/records/4",
            "\u{0}/api/holds",
            "\u{0}/api/records?after=18446744073709551615&limit=0",
            "\u{0}/api/events\nlast-event-id: 18446744073709551615",
            "\u{1}/api/connections/1/holds/1\n\n{\"action\":\"edit\",\"text\":\"x\"}",
            "\u{1}/api/connections/1/messages\n\n{\"to\":\"both\",\"text\":\"hi\",\"fragments\":2,\"compressed\":true}",
            "\u{1}/api/connections/1/close\n\n{\"code\":4001,\"reason\":\"bye\",\"to\":\"server\"}",
            "\u{1}/api/connections/1/abort",
        ].map { Array($0.utf8) }
        seeds["har-reader", default: []].append(Array(RecordingTargets.seed.utf8))
        // Pieces as the replay and mock targets read them: a kind byte, a two-byte length, the bytes.
        func piece(_ kind: UInt8, _ bytes: [UInt8]) -> [UInt8] { [kind, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes }
        let server = [Wire.text("hello"), Wire.text(#"{"id":1,"r":"x"}"#), Wire.text(#"{"id":2,"t":"tok"}"#), Wire.frame(.ping, [1]), Wire.frame(.close, [0x03, 0xE8])]
        seeds["replay-session", default: []] += [0x00, 0x0C, 0x45].map { choice in [choice] + server.flatMap { piece(1, $0) } + [0, 60] }
        let client = [Wire.text(#"{"id":1,"op":"a"}"#, mask: 5), Wire.text("nobody", mask: 6), Wire.text(#"{"id":2,"op":"{{t}}"}"#, mask: 7),
                      Wire.frame(.ping, [2], mask: 8), Wire.frame(.close, [0x03, 0xE8], mask: 9)]
        seeds["mock-session", default: []] += [0x00, 0x09, 0x1A, 0x1D, 0x04].map { choice in [choice] + client.flatMap { piece(3, $0) } + [0, 60] }
        seeds["rules", default: []] += [Array(rulesFile.utf8) + [0] + Array(#"{"type":"t","id":1,"data":[0]} abc"#.utf8)]
        seeds["hook-verdict", default: []] += [
            #"{"id":1,"verdict":"forward"}"#, #"{"id":2,"verdict":"replace","base64":"AAH/","inject":[{"to":"client","text":"hi"}]}"#,
            #"{"verdict":"close","id":3,"code":4000,"reason":"bye","to":"server"}"#, #"{"id":4,"verdict":"delay","ms":250}"#,
            #"{"id":5,"verdict":"replace","text":"x\u00e9\n"}"# + "\r",
        ].map { Array($0.utf8) }
        seeds["key-log", default: []].append(Array("CLIENT_RANDOM \(String(repeating: "ab", count: 32)) \(String(repeating: "01", count: 48))\n# comment\n".utf8))
        // Segments: SYN, SYN-ACK, data both ways out of order, a retransmission, FINs.
        seeds["tcp-reassembly", default: []].append([0x02, 0, 0, 0, 0, 0x12, 1, 0, 0, 0, 0x18, 0, 0, 1, 5] + Array("GET /".utf8)
            + [0x18, 0, 0, 10, 3] + Array("xyz".utf8) + [0x18, 0, 0xFF, 0xF6, 5] + Array("GET /".utf8)
            + [0x18, 1, 0, 1, 4] + Array("HTTP".utf8) + [0x11, 0, 0, 0, 0, 0x11, 1, 0, 0, 0])
    }
}
