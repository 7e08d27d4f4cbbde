import WSTapFilter
import WSTapRecording
import WSTapWire

/// What `wstap mock` serves, made from a recording once and shared by every client: per recorded
/// connection, the server messages sent before any client message (on connect) and, for each client
/// data message, the server messages that followed it (its reply).
public struct MockScript: Sendable {
    public struct Reply: Sendable {
        /// A data message, or a close the server sent first (it ends the reply).
        public var message: Recording.Message
        /// Nanoseconds after the message it answers (or after the connection opened), as recorded.
        public var delay: Int64
    }

    public struct Step: Sendable {
        public var request: Recording.Message
        public var replies: [Reply]
    }

    public struct Connection: Sendable {
        public var id: UInt64
        /// The recorded request target (`/chat?room=1`), and its path without the query.
        public var target: String?
        public var path: String?
        public var subprotocol: String?
        /// The recording negotiated permessage-deflate (or, for a HAR, compressed something).
        public var deflate: Bool
        public var onConnect: [Reply]
        public var steps: [Step]
    }

    public var connections: [Connection]

    public init(_ recording: Recording) {
        connections = recording.connections.map(Self.connection)
    }

    static func connection(_ recorded: Recording.Connection) -> Connection {
        let target = recorded.open.request?.target
        var onConnect: [Reply] = []
        var steps: [Step] = []
        var anchor = recorded.openedAt.nanoseconds
        var clientClosed = false
        for message in recorded.messages {
            switch (message.direction, message.opcode) {
            case (.clientToServer, .close):
                clientClosed = true
            case (.clientToServer, let opcode) where !opcode.isControl:
                steps.append(Step(request: message, replies: []))
                anchor = message.time.nanoseconds
            case (.serverToClient, let opcode) where !opcode.isControl || (opcode == .close && !clientClosed):
                // A close the server sent first is part of the reply; one answering the client's is
                // the mock's own answer.
                let reply = Reply(message: message, delay: max(0, message.time.nanoseconds - anchor))
                if steps.isEmpty { onConnect.append(reply) } else { steps[steps.count - 1].replies.append(reply) }
            default:
                break  // pings and pongs: the mock answers pings itself and sends none
            }
        }
        let deflate = recorded.open.extensions.map { ExtensionOffer.parse([$0]).contains { $0.name == "permessage-deflate" } }
            ?? recorded.messages.contains(where: \.compressed)
        return Connection(id: recorded.id, target: target, path: target.map { String($0.prefix { $0 != "?" }) },
                          subprotocol: recorded.open.subprotocol, deflate: deflate, onConnect: onConnect, steps: steps)
    }

    /// The recorded connection a client's request target is served from: the same target, else the
    /// same path, else the first.
    public func connection(forTarget target: String) -> Connection? {
        let path = String(target.prefix { $0 != "?" })
        return connections.first { $0.target == target } ?? connections.first { $0.path == path } ?? connections.first
    }

    /// Client data messages a recording's connections have, in all.
    public var requestCount: Int { connections.reduce(0) { $0 + $1.steps.count } }
}

public struct MockOptions: Sendable {
    public enum Match: String, Sendable, CaseIterable {
        /// The same opcode and the same bytes.
        case exact
        /// JSON compared as structure, `ignore` paths left out; other payloads byte for byte.
        case json
        /// The recorded text is a regular expression the whole message must match (edit the
        /// recording to write patterns); one that does not compile is matched exactly.
        case regex
    }

    public enum Pace: String, Sendable {
        /// Replies go at once.
        case reply
        /// Replies go after their recorded delays (× 1/speed).
        case timing
    }

    public enum Unmatched: Sendable, Equatable {
        case ignore
        case close(code: UInt16)
        case echo
        /// Unmatched messages go to a real server, whose messages come back to the client.
        case passthrough(to: ReplayTarget)
    }

    public var match = Match.exact
    public var ignore: [JSONPath] = []
    public var pace = Pace.reply
    public var speed: Double = 1
    public var unmatched = Unmatched.ignore
    /// Bytes of each payload kept in records; matching sees whole messages up to the longest recorded one.
    public var payloadCap = 64 * 1024
    public var maxInflate: UInt64 = 64 * 1024 * 1024
    /// How long a client may take to send its upgrade request, and to answer a close.
    public var timeout: Duration = .seconds(10)

    public init() {}
}

/// How one client's session with the mock went, for its summary line.
public struct MockSummary: Sendable {
    public var script: UInt64?
    public var target: String?
    public var received = 0
    public var matched = 0
    public var unmatched = 0
    public var passedThrough = 0
    public var notes: [String] = []
}
