import CPcap
import WSTapCapture
import WSTapDissect
import WSTapFormats

/// Capture input: link layers, whole pcap/pcapng files through libpcap, TCP reassembly, TLS
/// decryption, key logs, and the whole capture session over packets.
enum CaptureTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "packet-decoder", input: "1 byte (link type), 2 bytes (original length), then a captured frame", maxLength: 2048, run: packetDecoder),
        FuzzTarget(name: "capture-file", input: "a pcap or pcapng file", maxLength: 8192, run: captureFile),
        FuzzTarget(name: "tcp-reassembly", input: "segments: [flags][direction][u16 sequence step][u8 length], payload from the input", maxLength: 4096, run: tcpReassembly),
        FuzzTarget(name: "tls-decryptor", input: "[u16 key log length][key log text], then chunks of [direction][u16 length][TLS bytes]", maxLength: 4096, run: tlsDecryptor),
        FuzzTarget(name: "key-log", input: "NSS key log text, or a pcapng file to take Decryption Secrets Blocks from", maxLength: 4096, run: keyLog),
        FuzzTarget(name: "capture-session", input: "packets: [u8 link][u16 length][frame]", maxLength: 4096, run: captureSession),
    ]

    static let linkTypes: [LinkType] = [.null, .ethernet, .raw, .loop, .linuxSLL, .rawIPv4, .rawIPv6, .linuxSLL2, .dltRaw12, .dltRaw14]

    static func packetDecoder(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let link = linkTypes[reader.choice(linkTypes.count)]
        let originalLength = reader.u16()
        let frame = reader.rest()
        guard let segment = PacketDecoder.tcpSegment(link: link, frame: frame, originalLength: originalLength) else { return }
        // What it says was cut by the snap length is never more than the packet said it had.
        FuzzCheck.expect(segment.payload.count <= frame.count, "payload larger than the frame")
        FuzzCheck.expect(segment.truncatedBy >= 0 && segment.truncatedBy <= max(originalLength, 65_535) + 65_535, "truncatedBy \(segment.truncatedBy)")
    }

    /// The path of `wstap read`: embedded secrets, libpcap, every record encoded.
    static func captureFile(_ data: [UInt8]) {
        let session = CaptureSession()
        if let text = PcapngSecrets.keyLogText(bytes: data) {
            let log = TLSKeyLog()
            log.add(text: text)
            session.keyLog = log
        }
        var records: [TapRecord] = []
        _ = try? PcapFile.read(bytes: data, session: session) { records += $0 }
        for record in records { _ = JSONLinesEncoder.line(record) }
    }

    static func tcpReassembly(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let reassembler = TCPReassembler(maxBufferedPerDirection: 4096)
        let client = Endpoint(address: [10, 0, 0, 1], port: 40000), server = Endpoint(address: [10, 0, 0, 2], port: 80)
        var sequence: [Direction: UInt32] = [.clientToServer: 1000, .serverToClient: 4_294_967_000]
        var events: [TCPReassembler.Event] = []
        var delivered: [UInt64: [Direction: UInt64]] = [:]
        var open: Set<UInt64> = []
        func check(_ events: [TCPReassembler.Event]) {
            for event in events {
                switch event {
                case .opened(let connection, _):
                    FuzzCheck.expect(open.insert(connection.id).inserted, "connection \(connection.id) opened twice")
                case .data(let id, let direction, let bytes, _):
                    FuzzCheck.expect(open.contains(id), "data for a connection that is not open")
                    FuzzCheck.expect(!bytes.isEmpty, "empty data event")
                    delivered[id, default: [:]][direction, default: 0] += UInt64(bytes.count)
                case .gap(let id, _, let bytes, _):
                    FuzzCheck.expect(open.contains(id) && bytes > 0, "bad gap")
                case .truncated:
                    break
                case .closed(let id, _, _):
                    FuzzCheck.expect(open.remove(id) != nil, "closed a connection that is not open")
                }
            }
        }
        var steps = 0
        while !reader.isAtEnd && steps < 512 {
            steps += 1
            let flags = reader.byte() & 0x17  // FIN, SYN, RST, ACK
            let direction: Direction = reader.byte() & 1 == 0 ? .clientToServer : .serverToClient
            let step = Int16(bitPattern: UInt16(reader.u16()))
            let payload = reader.bytes(Int(reader.byte()))
            let seq = sequence[direction]! &+ UInt32(bitPattern: Int32(step))
            let (source, destination) = direction == .clientToServer ? (client, server) : (server, client)
            let segment = TCPSegment(source: source, destination: destination, sequence: seq, acknowledgment: 0, flags: flags,
                                     payload: payload, truncatedBy: 0)
            events.removeAll(keepingCapacity: true)
            reassembler.add(segment, at: Timestamp(nanoseconds: Int64(steps)), into: &events)
            check(events)
            sequence[direction] = seq &+ UInt32(payload.count)
        }
        events.removeAll()
        reassembler.finish(at: Timestamp(nanoseconds: 1 << 40), into: &events)
        check(events)
        FuzzCheck.expect(open.isEmpty, "connections left open after finish")
    }

    static func tlsDecryptor(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let log = TLSKeyLog()
        log.add(text: String(decoding: reader.bytes(reader.u16()), as: UTF8.self))
        let decryptor = TLSStreamDecryptor(keyLog: log)
        var steps = 0
        while !reader.isAtEnd && steps < 256 {
            steps += 1
            let direction: Direction = reader.byte() & 1 == 0 ? .clientToServer : .serverToClient
            _ = decryptor.feed(reader.bytes(reader.u16()), from: direction)
        }
    }

    static func keyLog(_ data: [UInt8]) {
        let log = TLSKeyLog()
        log.add(text: String(decoding: data, as: UTF8.self))
        if let text = PcapngSecrets.keyLogText(bytes: data) { log.add(text: text) }
    }

    /// Packets straight into a session (no libpcap): deeper into reassembly and dissection than
    /// mutated files get, with TLS detection, mid-stream discovery and decode-as on.
    static func captureSession(_ data: [UInt8]) {
        var reader = FuzzReader(data)
        let session = CaptureSession()
        session.decodeAsPorts = [9123]
        session.keyLog = TLSKeyLog()
        var records: [TapRecord] = []
        var packets = 0
        while !reader.isAtEnd && packets < 1024 {
            packets += 1
            let link = linkTypes[reader.choice(linkTypes.count)]
            let frame = reader.bytes(reader.u16())
            session.packet(link: link, frame: frame, originalLength: frame.count, at: Timestamp(nanoseconds: Int64(packets)), into: &records)
        }
        session.finish(at: Timestamp(nanoseconds: Int64(packets + 1)), into: &records)
        for record in records { _ = JSONLinesEncoder.line(record) }
    }
}
