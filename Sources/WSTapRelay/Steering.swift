import WSTapDissect
import WSTapRules
import WSTapWire

/// What the control API asks of one live WebSocket connection. The shell hands it to the
/// connection's event loop; the relay carries it out between the connection's reads, like an event,
/// and answers at once.
public enum SteerCommand: Sendable {
    /// wstap's own message to one peer (`to: .server` travels client→server).
    case send(OwnSend)
    /// A close frame to one peer or both; the close handshake completes as for a `close` rule.
    case close(code: UInt16, reason: String, to: Side)
    /// Both TCP connections reset after what was sent: no close handshake.
    case abort
    /// The messages a `hold` rule keeps, oldest first in each direction.
    case listHolds
    /// What becomes of one held message.
    case release(hold: UInt64, HoldDecision)
}

public struct OwnSend: Sendable {
    public var to: Side
    /// `.text` or `.binary`.
    public var opcode: Opcode
    public var payload: [UInt8]
    /// Frames to send it in (a first frame and continuations); at least 1.
    public var fragments: Int
    /// Compressed with permessage-deflate, when it was negotiated.
    public var compressed: Bool

    public init(to: Side, opcode: Opcode, payload: [UInt8], fragments: Int = 1, compressed: Bool = false) {
        self.to = to
        self.opcode = opcode
        self.payload = payload
        self.fragments = max(1, fragments)
        self.compressed = compressed
    }
}

/// What a held message becomes.
public enum HoldDecision: Sendable, Equatable {
    /// On as the rules left it.
    case forward
    case drop
    /// This payload instead (framed anew, compressed again when it came compressed).
    case replace([UInt8])
}

/// A message a `hold` keeps, as the control API lists it.
public struct HeldMessage: Sendable {
    /// Unique within the connection; the low bit says the direction (0: from the client).
    public let id: UInt64
    public let direction: Direction
    /// Where the message starts in its sender's stream (its `message` record has the same offset).
    public let offset: UInt64
    public let opcode: Opcode
    /// As the rules left it, inflated, whole.
    public let payload: [UInt8]
    public let compressed: Bool
    public let rules: [String]
    public let since: Timestamp
    /// When --hold-timeout lets it go by itself.
    public let releaseAt: Timestamp?
    /// A decision has been given; it waits for a message held before it.
    public let decided: Bool
}

public enum SteerAnswer: Sendable {
    /// Carried out: what happened, in a sentence.
    case done(String)
    case holds([HeldMessage])
    /// Not carried out, and why (the connection is unchanged).
    case refused(String)
    /// No such hold (already gone, or never held).
    case notFound(String)
}
