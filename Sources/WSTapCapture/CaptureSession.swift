import WSTapDissect

/// Captured packets in, the same records the live relay writes out: decode → TCP reassembly → one
/// `StreamDissector` per connection. Sans-IO; `PcapFile` and live capture only feed it packets.
///
/// Connections whose client does not start with an HTTP request (TLS, other protocols) are skipped, so
/// a busy capture yields records only for HTTP and WebSocket traffic.
public final class CaptureSession {
    public let configuration: StreamDissector.Configuration
    private let reassembler = TCPReassembler()
    private var dissectors: [UInt64: StreamDissector] = [:]
    private var connections: [UInt64: TCPReassembler.Connection] = [:]
    private var undecided: Set<UInt64> = []
    private var bytes: [UInt64: (client: UInt64, server: UInt64)] = [:]
    private var events: [TCPReassembler.Event] = []
    public private(set) var packets = 0
    public private(set) var tcpSegments = 0

    public init(configuration: StreamDissector.Configuration = .init()) {
        self.configuration = configuration
    }

    public func packet(link: LinkType, frame: [UInt8], originalLength: Int, at time: Timestamp, into records: inout [TapRecord]) {
        packets += 1
        guard let segment = PacketDecoder.tcpSegment(link: link, frame: frame, originalLength: originalLength) else { return }
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
                connections[connection.id] = connection
                undecided.insert(connection.id)
                bytes[connection.id] = (0, 0)
            case .data(let id, let direction, let data, let time):
                if undecided.contains(id) {
                    // Decide on the client's first bytes: an HTTP request, or nothing to dissect.
                    guard direction == .clientToServer else { continue }
                    undecided.remove(id)
                    guard Self.looksLikeHTTPRequest(data), let connection = connections[id] else { continue }
                    dissectors[id] = StreamDissector(connection: id, info: ConnectionInfo(client: connection.client.description, server: connection.server.description),
                                                     configuration: configuration)
                }
                guard let dissector = dissectors[id] else { continue }
                if direction == .clientToServer { bytes[id]!.client += UInt64(data.count) } else { bytes[id]!.server += UInt64(data.count) }
                dissector.feed(data, from: direction, at: time, into: &records)
            case .gap(let id, let direction, let count, let time):
                dissectors[id]?.gap(direction, bytes: count, at: time, into: &records)
            case .truncated:
                break  // reported as the gap that follows
            case .closed(let id, let reason, let time):
                if let dissector = dissectors.removeValue(forKey: id) {
                    dissector.finish(at: time, into: &records)
                    let counts = bytes[id] ?? (0, 0)
                    let closedBy = dissector.firstCloseFrom.map { $0.sender }
                    records.append(TapRecord(connection: id, timestamp: time, body: .end(EndRecord(
                        reason: reason, closedBy: closedBy, clientBytes: counts.client, serverBytes: counts.server))))
                }
                connections[id] = nil
                undecided.remove(id)
                bytes[id] = nil
            }
        }
    }

    static func looksLikeHTTPRequest(_ data: [UInt8]) -> Bool {
        let text = String(decoding: data.prefix(8), as: UTF8.self)
        return ["GET ", "POST ", "PUT ", "HEAD ", "OPTIONS ", "DELETE ", "PATCH "].contains(where: text.hasPrefix)
    }
}
