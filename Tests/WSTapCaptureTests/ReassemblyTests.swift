import Testing
import WSTapCapture
import WSTapDissect
import WSTapFormats
import WSTapWire

/// Synthesized captures: a clean WebSocket session, then the same bytes reordered, duplicated, cut into
/// tiny segments and with a segment lost. Message records must not change (except what a loss takes).
@Suite struct ReassemblyTests {
    static let client = Endpoint(address: [10, 0, 0, 1], port: 50000)
    static let server = Endpoint(address: [10, 0, 0, 2], port: 8080)
    static let key = "dGhlIHNhbXBsZSBub25jZQ=="

    struct Packet { var fromClient: Bool; var seq: UInt32; var flags: UInt8; var payload: [UInt8] }

    /// An Ethernet + IPv4 + TCP frame.
    static func frame(_ p: Packet) -> [UInt8] {
        let (src, dst) = p.fromClient ? (client, server) : (server, client)
        var tcp: [UInt8] = [UInt8(src.port >> 8), UInt8(src.port & 0xFF), UInt8(dst.port >> 8), UInt8(dst.port & 0xFF)]
        tcp += withUnsafeBytes(of: p.seq.bigEndian, Array.init) + [0, 0, 0, 0, 0x50, p.flags, 0xFF, 0xFF, 0, 0, 0, 0]
        let total = 20 + tcp.count + p.payload.count
        let ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 0, 0x40, 0, 64, 6, 0, 0] + src.address + dst.address
        return [UInt8](repeating: 0, count: 12) + [0x08, 0x00] + ip + tcp + p.payload
    }

    /// Client and server byte streams of a small session, with a masked fragmented text and compressed-free binary.
    static func streams() -> (client: [UInt8], server: [UInt8]) {
        var c = Array("GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8)
        var s = Array("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(HandshakeAccept.expected(forKey: key))\r\n\r\n".utf8)
        for i in 0..<20 {
            var text = Array("message number \(i) ".utf8) + [UInt8](repeating: UInt8(ascii: "a") + UInt8(i), count: 40 * i)
            let header = FrameHeader(fin: true, opcode: .text, maskKey: 0x0102_0304 &* UInt32(i + 1), payloadLength: UInt64(text.count))
            Masking.apply(key: header.maskKey!, offset: 0, to: &text)
            c += header.encoded() + text
            let reply = Array("reply \(i)".utf8)
            s += FrameHeader(fin: true, opcode: .text, maskKey: nil, payloadLength: UInt64(reply.count)).encoded() + reply
        }
        return (c, s)
    }

    /// Segments both streams into `size`-byte packets (with a SYN exchange first), interleaved.
    static func packets(size: Int) -> [Packet] {
        let (c, s) = streams()
        var out = [Packet(fromClient: true, seq: 999, flags: 0x02, payload: []), Packet(fromClient: false, seq: 4_294_967_000, flags: 0x12, payload: [])]
        var ci = 0, si = 0
        while ci < c.count || si < s.count {
            if ci < c.count {
                let n = min(size, c.count - ci)
                out.append(Packet(fromClient: true, seq: 1000 &+ UInt32(ci), flags: 0x18, payload: Array(c[ci..<(ci + n)])))
                ci += n
            }
            if si < s.count && ci > 200 {  // the server answers after the request
                let n = min(size, s.count - si)
                // Its ISN is near 2^32, so its sequence numbers wrap during the session.
                out.append(Packet(fromClient: false, seq: 4_294_967_001 &+ UInt32(si), flags: 0x18, payload: Array(s[si..<(si + n)])))
                si += n
            }
        }
        return out
    }

    static func messageLines(_ packets: [Packet]) -> [String] {
        let session = CaptureSession()
        var records: [TapRecord] = []
        for (i, p) in packets.enumerated() {
            session.packet(link: .ethernet, frame: frame(p), originalLength: frame(p).count, at: Timestamp(nanoseconds: Int64(i)), into: &records)
        }
        session.finish(at: Timestamp(nanoseconds: 1_000_000), into: &records)
        return records.compactMap { r -> String? in
            switch r.body {
            case .message(let m): "\(m.direction.sender) \(String(decoding: m.payload, as: UTF8.self))\(m.incomplete ? " [incomplete]" : "")"
            case .gap(let g): "gap \(g.direction.sender) \(g.bytes)"
            case .diagnostic(let d) where d.code != .resynchronised: "diagnostic \(d.code.rawValue)"
            default: nil
            }
        }
    }

    @Test func cleanCaptureGivesEveryMessage() {
        let lines = Self.messageLines(Self.packets(size: 1400))
        #expect(lines.count == 40)
        #expect(lines.first == "client message number 0 ")
        #expect(lines.contains("server reply 19"))
    }

    /// Each direction's records, in order. How the two directions interleave depends on how their
    /// packets alternate in the capture, so only per-direction order is invariant.
    static func perDirection(_ lines: [String]) -> [[String]] {
        [lines.filter { !$0.hasPrefix("server") }, lines.filter { $0.hasPrefix("server") }]
    }

    @Test func tinySegmentsReorderingAndDuplicatesChangeNothing() {
        let clean = Self.perDirection(Self.messageLines(Self.packets(size: 1400)))
        #expect(clean[0].count == 20 && clean[1].count == 20)
        for size in [1, 2, 7, 100] {
            let lines = Self.perDirection(Self.messageLines(Self.packets(size: size)))
            #expect(lines == clean, "segments of \(size): \(lines[0].count) client, \(lines[1].count) server")
        }
        // Swap neighbours and send every third packet twice (retransmissions).
        var shuffled = Self.packets(size: 50)
        for i in stride(from: 2, to: shuffled.count - 1, by: 5) { shuffled.swapAt(i, i + 1) }
        var duplicated: [Packet] = []
        for (i, p) in shuffled.enumerated() { duplicated.append(p); if i % 3 == 0 { duplicated.append(p) } }
        #expect(Self.perDirection(Self.messageLines(duplicated)) == clean)
        // Overlapping retransmission: a later packet that repeats half of the previous one.
        var overlapped: [Packet] = []
        for p in Self.packets(size: 64) {
            if p.fromClient && p.payload.count == 64 {
                overlapped.append(Packet(fromClient: true, seq: p.seq, flags: p.flags, payload: Array(p.payload[..<32])))
            }
            overlapped.append(p)
        }
        #expect(Self.perDirection(Self.messageLines(overlapped)) == clean)
    }

    @Test func aLostSegmentIsAGapAndDissectionResumes() {
        var packets = Self.packets(size: 60)
        let clientData = packets.indices.filter { packets[$0].fromClient && !packets[$0].payload.isEmpty }
        let lost = clientData[clientData.count / 2]
        let lostBytes = packets[lost].payload.count
        packets.remove(at: lost)
        let lines = Self.messageLines(packets)
        #expect(lines.contains("gap client \(lostBytes)"))
        #expect(lines.contains("server reply 19"))
        #expect(lines.contains("client message number 19 " + String(repeating: "t", count: 760)))  // after the gap, back in sync
        let clean = Set(Self.messageLines(Self.packets(size: 60)))
        #expect(lines.filter { !clean.contains($0) && !$0.hasPrefix("gap") && !$0.hasSuffix("[incomplete]") }.isEmpty)
    }
}
