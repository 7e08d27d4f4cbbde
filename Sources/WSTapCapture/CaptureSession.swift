import WSTapDissect

/// Captured packets in, the same records the live relay writes out: decode → TCP reassembly → one
/// `StreamDissector` per connection. Sans-IO; `PcapFile` and live capture only feed it packets.
///
/// Connections whose client does not start with an HTTP request (TLS, other protocols) are skipped, so
/// a busy capture yields records only for HTTP and WebSocket traffic.
public final class CaptureSession {
    public let configuration: StreamDissector.Configuration
    /// Ports whose connections are WebSocket from their first captured byte (`--decode-as`).
    public var decodeAsPorts: Set<UInt16> = []
    /// Also treat a connection as WebSocket when its first bytes are a plausible frame (not HTTP, not TLS).
    public var heuristic = true
    /// Connections whose client and server the reassembler guessed the wrong way round.
    private var swapped: Set<UInt64> = []
    private let reassembler = TCPReassembler()
    private var dissectors: [UInt64: StreamDissector] = [:]
    private var connections: [UInt64: TCPReassembler.Connection] = [:]
    /// Connections whose client has not yet sent enough bytes to tell whether it speaks HTTP; what
    /// arrived meanwhile is held (at most `decisionBytes` from the client, a little from the server).
    private var undecided: [UInt64: [(Direction, [UInt8], Timestamp)]] = [:]
    private static let decisionBytes = 8
    private var bytes: [UInt64: (client: UInt64, server: UInt64)] = [:]
    private var events: [TCPReassembler.Event] = []
    public private(set) var packets = 0
    public private(set) var tcpSegments = 0
    /// Secrets for TLS connections (`--keylog`, pcapng Decryption Secrets Blocks); nil: TLS is skipped.
    public var keyLog: TLSKeyLog?
    private var decryptors: [UInt64: TLSStreamDecryptor] = [:]
    /// TLS connections whose application data was decrypted, and why the others were not (reason → count).
    public private(set) var tlsDecrypted = 0
    public private(set) var tlsNotDecrypted: [String: Int] = [:]
    /// Connections dissected so far (HTTP or WebSocket; others are skipped).
    public private(set) var connectionsSeen = 0

    public init(configuration: StreamDissector.Configuration = .init()) {
        self.configuration = configuration
    }

    /// Connections opened (true) and closed (false) by the reassembler, in order, when `tracksLifecycle`
    /// is set. A reader that spreads connections over several sessions numbers them from these.
    public var tracksLifecycle = false
    public private(set) var lifecycle: [(id: UInt64, opened: Bool)] = []

    public func takeLifecycle() -> [(id: UInt64, opened: Bool)] {
        defer { lifecycle.removeAll(keepingCapacity: true) }
        return lifecycle
    }

    public func packet(link: LinkType, frame: [UInt8], originalLength: Int, at time: Timestamp, into records: inout [TapRecord]) {
        frame.withUnsafeBufferPointer { packet(link: link, frame: $0, originalLength: originalLength, at: time, into: &records) }
    }

    public func packet(link: LinkType, frame: UnsafeBufferPointer<UInt8>, originalLength: Int, at time: Timestamp, into records: inout [TapRecord]) {
        packets += 1
        guard let segment = PacketDecoder.tcpSegment(link: link, frame: frame, originalLength: originalLength) else { return }
        add(segment, at: time, into: &records)
    }

    /// A TCP segment already decoded from its packet.
    public func add(_ segment: TCPSegment, at time: Timestamp, into records: inout [TapRecord]) {
        tcpSegments += 1
        events.removeAll(keepingCapacity: true)
        reassembler.add(segment, at: time, into: &events)
        handle(events, into: &records)
    }

    public func finish(at time: Timestamp, into records: inout [TapRecord]) {
        events.removeAll()
        reassembler.finish(at: time, into: &events)
        handle(events, into: &records)
    }

    private func handle(_ events: [TCPReassembler.Event], into records: inout [TapRecord]) {
        for event in events {
            switch event {
            case .opened(let connection, _):
                if tracksLifecycle { lifecycle.append((connection.id, true)) }
                connections[connection.id] = connection
                bytes[connection.id] = (0, 0)
                if let port = [connection.server.port, connection.client.port].first(where: decodeAsPorts.contains) {
                    // The decode-as port is the server's.
                    startMidstream(connection, clientIsReally: connection.client.port == port ? connection.server : connection.client,
                                   discovery: "decode-as port \(port)")
                } else {
                    undecided[connection.id] = []
                }
            case .data(let id, let direction, let data, let time):
                if let decryptor = decryptors[id] {
                    let cleartext = decryptor.feed(data, from: direction)
                    if !cleartext.isEmpty { received(id, direction, cleartext, time, into: &records) }
                } else if let keyLog, undecided[id]?.isEmpty == true, direction == .clientToServer, Self.startsTLSHandshake(data) {
                    // TLS with a key log: everything from here on goes through the decryptor first.
                    let decryptor = TLSStreamDecryptor(keyLog: keyLog)
                    decryptors[id] = decryptor
                    _ = decryptor.feed(data, from: direction)
                } else {
                    received(id, direction, data, time, into: &records)
                }
            case .gap(let id, let direction, let count, let time):
                dissectors[id]?.gap(swapped.contains(id) ? direction.opposite : direction, bytes: count, at: time, into: &records)
            case .truncated:
                break  // reported as the gap that follows
            case .closed(let id, let ending, let time):
                if let dissector = dissectors.removeValue(forKey: id) {
                    dissector.finish(at: time, into: &records)
                    let counts = bytes[id] ?? (0, 0)
                    let (reason, closedBy) = Self.endReason(ending, dissector: dissector, swapped: swapped.contains(id))
                    records.append(TapRecord(connection: id, timestamp: time, body: .end(EndRecord(
                        reason: reason, closedBy: closedBy, clientBytes: counts.client, serverBytes: counts.server))))
                }
                if let decryptor = decryptors.removeValue(forKey: id) {
                    if decryptor.state == .decrypting { tlsDecrypted += 1 } else { tlsNotDecrypted[decryptor.reasonIfUnfinished, default: 0] += 1 }
                }
                if tracksLifecycle { lifecycle.append((id, false)) }
                connections[id] = nil
                undecided[id] = nil
                bytes[id] = nil
                swapped.remove(id)
            }
        }
    }

    /// Cleartext bytes of a connection (after TLS decryption, if any): decides whether it is HTTP or
    /// WebSocket while undecided, then feeds its dissector.
    private func received(_ id: UInt64, _ direction: Direction, _ data: [UInt8], _ time: Timestamp, into records: inout [TapRecord]) {
        if var held = undecided[id] {
            held.append((direction, data, time))
            let clientBytes = held.filter { $0.0 == .clientToServer }.flatMap(\.1)
            switch Self.httpRequestVerdict(clientBytes) {
            case nil where held.count < 64:
                undecided[id] = held  // not enough yet
                return
            case true?:
                undecided[id] = nil
                guard let connection = connections[id] else { return }
                connectionsSeen += 1
                dissectors[id] = StreamDissector(connection: id, info: info(id, client: connection.client, server: connection.server),
                                                 configuration: configuration)
                for (d, bytes, t) in held { feed(id, d, bytes, t, into: &records) }
            default:
                undecided[id] = nil
                if decryptors[id] == nil && Self.startsTLSHandshake(clientBytes) { tlsNotDecrypted["no key log given (--keylog FILE, or a pcapng with embedded secrets)", default: 0] += 1 }
                // Not HTTP. A capture that began after the upgrade still shows frames.
                guard heuristic, let connection = connections[id], let (d, first, _) = held.first,
                      let masked = Self.plausibleFrameStart(first) else { return }
                // Only clients mask (RFC 6455 §5.1): the masked side is the client.
                let sender = d == .clientToServer ? connection.client : connection.server
                let receiver = d == .clientToServer ? connection.server : connection.client
                startMidstream(connection, clientIsReally: masked ? sender : receiver, discovery: "heuristic")
                for (d, bytes, t) in held { feed(id, d, bytes, t, into: &records) }
            }
            return
        }
        feed(id, direction, data, time, into: &records)
    }

    /// The same wording as the live relay's for the same facts; what only a capture can see (it
    /// ended, the addresses were reused) is said as such, with the close frame's sender if any.
    static func endReason(_ ending: TCPReassembler.Ending, dissector: StreamDissector, swapped: Bool) -> (String, String?) {
        switch ending {
        case .tcp(let first, let how):
            return ConnectionEnd(first: (swapped ? first.opposite : first, how), closeFrameFrom: dissector.firstCloseFrom,
                                 isWebSocket: dissector.isWebSocket).reason
        case .captureEnded:
            return ("capture ended" + (dissector.firstCloseFrom.map { " after a close frame from \($0.sender)" } ?? ""), dissector.firstCloseFrom?.sender)
        case .addressesReused:
            return ("addresses reused by a new connection", dissector.firstCloseFrom?.sender)
        }
    }

    private func startMidstream(_ connection: TCPReassembler.Connection, clientIsReally client: Endpoint, discovery: String) {
        let server = client == connection.client ? connection.server : connection.client
        if client != connection.client { swapped.insert(connection.id) }
        connectionsSeen += 1
        dissectors[connection.id] = StreamDissector(connection: connection.id, info: info(connection.id, client: client, server: server),
                                                    configuration: configuration, midstream: discovery)
    }

    /// Addresses, and for a decrypted TLS connection the scheme and the SNI its client sent.
    private func info(_ id: UInt64, client: Endpoint, server: Endpoint) -> ConnectionInfo {
        var info = ConnectionInfo(client: client.description, server: server.description)
        if let decryptor = decryptors[id] {
            info.scheme = "wss"
            info.clientTLS = TLSLegInfo(serverName: decryptor.serverName, verified: nil)
        }
        return info
    }

    static func startsTLSHandshake(_ data: [UInt8]) -> Bool {
        data.count >= 2 && data[0] == 0x16 && data[1] == 0x03
    }

    /// Whether `data` starts with a frame header a WebSocket peer could send mid-session: a defined
    /// opcode, RSV2/RSV3 clear (RSV1 may be permessage-deflate), short unfragmented control frames, and
    /// the frame fitting in what is there or at least its header. Returns the mask bit, or nil.
    /// TLS records (0x16 0x03) and HTTP text never pass: their second byte fails the checks below.
    static func plausibleFrameStart(_ data: [UInt8]) -> Bool? {
        guard data.count >= 2 else { return nil }
        let first = data[0], second = data[1]
        let opcode = first & 0x0F
        guard [0, 1, 2, 8, 9, 10].contains(opcode), first & 0x30 == 0 else { return nil }
        if first == 0x16 && second == 0x03 { return nil }
        let masked = second & 0x80 != 0
        let length7 = Int(second & 0x7F)
        if opcode >= 8 && (first & 0x80 == 0 || length7 > 125 || first & 0x40 != 0) { return nil }
        // A short frame (7-bit length) fits in one segment: text that happens to pass the bit checks
        // usually claims more bytes than the segment has.
        let header = 2 + (length7 == 126 ? 2 : length7 == 127 ? 8 : 0) + (masked ? 4 : 0)
        if length7 < 126 && data.count < header + length7 { return nil }
        return masked
    }

    private func feed(_ id: UInt64, _ direction: Direction, _ data: [UInt8], _ time: Timestamp, into records: inout [TapRecord]) {
        let direction = swapped.contains(id) ? direction.opposite : direction
        guard let dissector = dissectors[id] else { return }
        if direction == .clientToServer { bytes[id]!.client += UInt64(data.count) } else { bytes[id]!.server += UInt64(data.count) }
        dissector.feed(data, from: direction, at: time, into: &records)
    }

    private static let methods = ["GET ", "POST ", "PUT ", "HEAD ", "OPTIONS ", "DELETE ", "PATCH "].map { Array($0.utf8) }

    /// true: starts with an HTTP method; false: cannot; nil: too few bytes to tell.
    static func httpRequestVerdict(_ data: [UInt8]) -> Bool? {
        if methods.contains(where: { data.starts(with: $0) }) { return true }
        if methods.contains(where: { $0.starts(with: data.prefix($0.count)) && data.count < $0.count }) { return nil }
        return false
    }
}
