import WSTapDissect
import WSTapWire

/// A recording as replay and mock use it, whatever it was read from (JSON Lines, HAR, pcap/pcapng):
/// per WebSocket connection the handshake and each direction's messages in the order they were seen,
/// with their payloads, frame shapes where the source knows them, and times.
public struct Recording: Sendable {
    public var connections: [Connection]

    public init(connections: [Connection] = []) { self.connections = connections }

    public struct Connection: Sendable {
        public var id: UInt64
        /// The `open` record: URL, addresses, the request and response heads (nil when a capture
        /// started after the upgrade), subprotocol, extensions, and how it was found (`discovery`).
        public var open: OpenRecord
        public var openedAt: Timestamp
        /// Both directions, in the order the recording has them.
        public var messages: [Message]
        /// Nil when the recording stops while the connection is open.
        public var end: EndRecord?

        public init(id: UInt64, open: OpenRecord, openedAt: Timestamp, messages: [Message] = [], end: EndRecord? = nil) {
            self.id = id
            self.open = open
            self.openedAt = openedAt
            self.messages = messages
            self.end = end
        }

        public func messages(from direction: Direction) -> [Message] { messages.filter { $0.direction == direction } }

        /// Messages whose payload the recording cut (`truncated`): a replay of them would send less.
        public var truncatedCount: Int { messages.count { $0.truncated } }
    }

    public struct Message: Sendable, Equatable {
        public var direction: Direction
        public var opcode: Opcode
        /// The whole payload (after inflating), or its first bytes when `truncated`.
        public var payload: [UInt8]
        /// The payload's whole length.
        public var length: UInt64
        public var truncated: Bool
        /// Sent compressed (permessage-deflate); false when the source cannot say (HAR).
        public var compressed: Bool
        /// It did not inflate: `payload` holds the compressed bytes as they were on the wire.
        public var inflateFailed: Bool
        /// Payload bytes of each frame on the wire, in order; nil when the source keeps no frames (HAR).
        public var frameLengths: [UInt64]?
        public var time: Timestamp

        public init(direction: Direction, opcode: Opcode, payload: [UInt8], length: UInt64, truncated: Bool, compressed: Bool,
                    inflateFailed: Bool = false, frameLengths: [UInt64]?, time: Timestamp) {
            self.direction = direction
            self.opcode = opcode
            self.payload = payload
            self.length = length
            self.truncated = truncated
            self.compressed = compressed
            self.inflateFailed = inflateFailed
            self.frameLengths = frameLengths
            self.time = time
        }
    }

    public func connection(_ id: UInt64) -> Connection? { connections.first { $0.id == id } }
}

/// Builds a `Recording` from records as they are read. Frame records give the messages their frame
/// shapes: a data message's frames are the data frames of its direction since the last message.
public struct RecordingBuilder: Sendable {
    private var connections: [Recording.Connection] = []
    private var index: [UInt64: Int] = [:]
    /// Data frames seen per connection and direction since that direction's last data message.
    private var pendingFrames: [UInt64: [Direction: [UInt64]]] = [:]
    private var lastControlFrame: [UInt64: [Direction: UInt64]] = [:]
    /// Whether any frame record was seen for the connection: without any, the source keeps no frames.
    private var framesSeen: Set<UInt64> = []

    public init() {}

    public mutating func add(_ record: TapRecord) {
        let conn = record.connection
        switch record.body {
        case .open(let open):
            // A recording that reuses an id (two files read in one session) starts a new connection.
            index[conn] = connections.count
            connections.append(Recording.Connection(id: conn, open: open, openedAt: record.timestamp))
            pendingFrames[conn] = nil
            lastControlFrame[conn] = nil
        case .frame(let frame):
            guard index[conn] != nil else { return }
            framesSeen.insert(conn)
            if frame.header.opcode.isControl {
                lastControlFrame[conn, default: [:]][frame.direction] = frame.header.payloadLength
            } else {
                pendingFrames[conn, default: [:]][frame.direction, default: []].append(frame.header.payloadLength)
            }
        case .message(let message):
            guard let at = index[conn] else { return }
            var shape: [UInt64]?
            if framesSeen.contains(conn) {
                if message.opcode.isControl {
                    shape = lastControlFrame[conn]?[message.direction].map { [$0] }
                } else {
                    let frames = pendingFrames[conn]?[message.direction] ?? []
                    shape = frames.count == message.frames ? frames : nil
                    pendingFrames[conn, default: [:]][message.direction] = []
                }
            }
            connections[at].messages.append(Recording.Message(
                direction: message.direction, opcode: message.opcode, payload: message.payload, length: message.length,
                truncated: message.truncated, compressed: message.compressed, inflateFailed: message.inflateFailed, frameLengths: shape, time: record.timestamp))
        case .end(let end):
            guard let at = index[conn] else { return }
            connections[at].end = end
            index[conn] = nil
        case .http, .diagnostic, .gap, .change:
            break
        }
    }

    public var recording: Recording { Recording(connections: connections) }
}
