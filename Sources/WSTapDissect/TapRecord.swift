import WSTapWire

public enum Direction: Sendable, Hashable {
    case clientToServer
    case serverToClient

    /// "client" or "server": who sent the bytes.
    public var sender: String { self == .clientToServer ? "client" : "server" }
    public var receiver: String { self == .clientToServer ? "server" : "client" }
    public var opposite: Direction { self == .clientToServer ? .serverToClient : .clientToServer }
}

/// Wall-clock or capture time in nanoseconds since the Unix epoch. The core never reads a clock:
/// the shells pass the time in.
public struct Timestamp: Comparable, Sendable {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.nanoseconds < b.nanoseconds }

    /// This time plus `duration` (deadlines of holds, delays and timers).
    public func adding(_ duration: Duration) -> Timestamp {
        let (seconds, attoseconds) = duration.components
        return Timestamp(nanoseconds: nanoseconds + seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// TLS facts of one leg of a proxied connection.
public struct TLSLegInfo: Sendable, Equatable {
    /// SNI the client sent (client leg) or that wstap sent (upstream leg); nil when none.
    public var serverName: String?
    /// Upstream leg: whether the certificate was verified (false with --insecure). Nil for the client leg.
    public var verified: Bool?

    public init(serverName: String?, verified: Bool?) {
        self.serverName = serverName
        self.verified = verified
    }
}

/// Addresses and URL base of one connection, supplied by the shell that owns it.
public struct ConnectionInfo: Sendable {
    public var client: String
    public var server: String
    /// "ws" or "wss": the scheme of the URL the server was asked for.
    public var scheme: String
    /// Set when wstap terminated TLS from the client.
    public var clientTLS: TLSLegInfo?
    /// Set when wstap spoke TLS to the upstream.
    public var upstreamTLS: TLSLegInfo?
    /// `host[:port]` the client asked the proxy for (CONNECT target, absolute-form URL, --upstream):
    /// record URLs use it instead of the Host header, which may leave out the port. Nil for captures.
    public var authority: String?
    public init(client: String, server: String, scheme: String = "ws") {
        self.client = client
        self.server = server
        self.scheme = scheme
    }
}

public struct OpenRecord: Sendable {
    public var client: String
    public var server: String
    public var url: String
    /// The upgrade; nil when the capture started after it (then `discovery` says how it was found).
    public var request: HTTPHead?
    public var response: HTTPHead?
    public var subprotocol: String?
    /// The negotiated Sec-WebSocket-Extensions value, or nil when none was accepted.
    public var extensions: String?
    public var clientTLS: TLSLegInfo?
    public var upstreamTLS: TLSLegInfo?
    /// "handshake", or for captures that start after the upgrade: "decode-as port N" or "heuristic".
    public var discovery: String = "handshake"

    public init(client: String, server: String, url: String, request: HTTPHead?, response: HTTPHead?, subprotocol: String?,
                extensions: String?, clientTLS: TLSLegInfo?, upstreamTLS: TLSLegInfo?, discovery: String = "handshake") {
        self.client = client
        self.server = server
        self.url = url
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.extensions = extensions
        self.clientTLS = clientTLS
        self.upstreamTLS = upstreamTLS
        self.discovery = discovery
    }
}

/// A non-upgrade HTTP exchange, or an upgrade the server refused.
public struct HTTPExchangeRecord: Sendable {
    /// http(s)://host/path of the request, when there was one.
    public var url: String?
    public var request: HTTPHead?
    public var response: HTTPHead
    public var wasUpgradeAttempt: Bool
    public var requestBodyBytes: UInt64
    public var responseBodyBytes: UInt64
    /// From the request head to the end of the response body.
    public var durationNanoseconds: Int64

    public init(url: String?, request: HTTPHead?, response: HTTPHead, wasUpgradeAttempt: Bool, requestBodyBytes: UInt64,
                responseBodyBytes: UInt64, durationNanoseconds: Int64) {
        self.url = url
        self.request = request
        self.response = response
        self.wasUpgradeAttempt = wasUpgradeAttempt
        self.requestBodyBytes = requestBodyBytes
        self.responseBodyBytes = responseBodyBytes
        self.durationNanoseconds = durationNanoseconds
    }
}

public struct FrameRecord: Sendable {
    public var direction: Direction
    public var header: FrameHeader
    public var offset: UInt64

    public init(direction: Direction, header: FrameHeader, offset: UInt64) {
        self.direction = direction
        self.header = header
        self.offset = offset
    }
}

public struct MessageRecord: Sendable {
    public var direction: Direction
    public var opcode: Opcode
    public var frames: Int
    /// Payload bytes on the wire (compressed size for compressed messages), headers excluded.
    public var wireLength: UInt64
    /// Payload bytes after inflate (equal to wireLength when not compressed).
    public var length: UInt64
    public var compressed: Bool
    /// The first `payloadCap` bytes of the (inflated) payload.
    public var payload: [UInt8]
    public var truncated: Bool
    public var closeCode: UInt16?
    public var closeReason: String?
    /// Set when the message could not be inflated; `payload` then holds the compressed bytes.
    public var inflateFailed: Bool
    /// Set when the connection ended before the message's final frame.
    public var incomplete: Bool
    public var offset: UInt64
    /// What the dissector found checking every payload byte of a text message, so encoders need not
    /// check the preview again and, above all, know about bytes past the `payloadCap` cut.
    public var textValidity: TextValidity

    public enum TextValidity: Sendable, Equatable {
        /// The whole message is complete, valid UTF-8: any preview cut at a character boundary is too.
        case valid
        /// Some byte of the message, maybe one past the preview, is not UTF-8 (or it ends inside a
        /// character): the payload is not text.
        case invalid
        /// Not every byte was seen (the message is incomplete, not inflated, or was not checked):
        /// only the preview itself can be judged.
        case unchecked
    }

    public init(direction: Direction, opcode: Opcode, frames: Int, wireLength: UInt64, length: UInt64, compressed: Bool,
                payload: [UInt8], truncated: Bool, closeCode: UInt16?, closeReason: String?, inflateFailed: Bool,
                incomplete: Bool, offset: UInt64, textValidity: TextValidity = .unchecked) {
        self.direction = direction
        self.opcode = opcode
        self.frames = frames
        self.wireLength = wireLength
        self.length = length
        self.compressed = compressed
        self.payload = payload
        self.truncated = truncated
        self.closeCode = closeCode
        self.closeReason = closeReason
        self.inflateFailed = inflateFailed
        self.incomplete = incomplete
        self.offset = offset
        self.textValidity = textValidity
    }
}

public struct EndRecord: Sendable {
    public var reason: String
    /// "client", "server" or nil when it cannot be told (e.g. a capture that just stops).
    public var closedBy: String?
    public var clientBytes: UInt64
    public var serverBytes: UInt64

    public init(reason: String, closedBy: String?, clientBytes: UInt64, serverBytes: UInt64) {
        self.reason = reason
        self.closedBy = closedBy
        self.clientBytes = clientBytes
        self.serverBytes = serverBytes
    }
}

/// Bytes of one direction that a capture does not have (lost packets, snap length).
public struct GapRecord: Sendable {
    public var direction: Direction
    public var bytes: UInt64
    /// Stream offset where the missing bytes start.
    public var offset: UInt64

    public init(direction: Direction, bytes: UInt64, offset: UInt64) {
        self.direction = direction
        self.bytes = bytes
        self.offset = offset
    }
}

/// What wstap did on purpose to one message (rules, docs/rules.md). The message as it was received is
/// the `message` record at the same offset; this record says which rules matched and what left instead.
public struct ChangeRecord: Sendable {
    public enum Result: String, Sendable {
        /// Sent on with its own bytes (rules that only mark, delay or hold).
        case forwarded
        /// Sent on with other bytes: `sent` holds what left.
        case edited
        case dropped
        /// Not sent: a rule's `abort` reset both connections.
        case aborted
        /// Not sent: a rule's `close` sent wstap's own close frame instead.
        case closed
        /// wstap's own message (`inject`, or the close frame of `close`): `sent` holds it, `offset`
        /// is where the direction's received bytes had got to when it went in.
        case injected
    }

    public var direction: Direction
    /// Offset of the received message's first frame.
    public var offset: UInt64
    /// The rules that matched, in order, and their actions as written.
    public var rules: [String]
    public var actions: [String]
    public var result: Result
    /// Each copy that left (two for `duplicate`, none when dropped).
    public var sent: [SentMessage]
    /// How long the message waited in its direction's queue (delay, hold), nil when it did not.
    public var heldNanoseconds: Int64?
    public var marks: [String]
    /// Edits that did not apply and why, and how a hold ended early.
    public var notes: [String]

    public init(direction: Direction, offset: UInt64, rules: [String], actions: [String], result: Result, sent: [SentMessage],
                heldNanoseconds: Int64? = nil, marks: [String] = [], notes: [String] = []) {
        self.direction = direction
        self.offset = offset
        self.rules = rules
        self.actions = actions
        self.result = result
        self.sent = sent
        self.heldNanoseconds = heldNanoseconds
        self.marks = marks
        self.notes = notes
    }
}

/// A message as wstap sent it after a change.
public struct SentMessage: Sendable, Equatable {
    public var opcode: Opcode
    public var frames: Int
    /// Payload bytes before compression, and on the wire.
    public var length: UInt64
    public var wireLength: UInt64
    public var compressed: Bool
    /// The first `payloadCap` bytes of the payload before compression.
    public var payload: [UInt8]
    public var truncated: Bool

    public init(opcode: Opcode, frames: Int, length: UInt64, wireLength: UInt64, compressed: Bool, payload: [UInt8], truncated: Bool) {
        self.opcode = opcode
        self.frames = frames
        self.length = length
        self.wireLength = wireLength
        self.compressed = compressed
        self.payload = payload
        self.truncated = truncated
    }
}

public struct TapRecord: Sendable {
    public enum Body: Sendable {
        case gap(GapRecord)
        case change(ChangeRecord)
        case open(OpenRecord)
        case http(HTTPExchangeRecord)
        case frame(FrameRecord)
        case message(MessageRecord)
        case diagnostic(Diagnostic)
        case end(EndRecord)
    }

    public var connection: UInt64
    public var timestamp: Timestamp
    public var body: Body

    public init(connection: UInt64, timestamp: Timestamp, body: Body) {
        self.connection = connection
        self.timestamp = timestamp
        self.body = body
    }
}
