/// How a connection ended, from the facts the live relay and a capture both have, and the one wording
/// of the `end` record both derive from them, so `proxy`, `read` and `capture` say the same thing of
/// the same connection.
public struct ConnectionEnd: Sendable, Equatable {
    /// How one side ended its part of the TCP connection.
    public enum How: Sendable, Equatable {
        case fin
        case reset
        /// The connection failed for another reason (live only: a TLS error, for one).
        case error(String)
        /// The channel went away without a FIN or an error being seen first (live only).
        case closed
    }

    /// The first side to end its part, and how.
    public var first: (side: Direction, how: How)?
    /// Who sent the first close frame, when one was seen.
    public var closeFrameFrom: Direction?
    /// Whether the connection became a WebSocket (only then is a missing close frame worth saying).
    public var isWebSocket: Bool

    public init(first: (side: Direction, how: How)?, closeFrameFrom: Direction?, isWebSocket: Bool) {
        self.first = first
        self.closeFrameFrom = closeFrameFrom
        self.isWebSocket = isWebSocket
    }

    public static func == (a: ConnectionEnd, b: ConnectionEnd) -> Bool {
        a.first?.side == b.first?.side && a.first?.how == b.first?.how && a.closeFrameFrom == b.closeFrameFrom && a.isWebSocket == b.isWebSocket
    }

    /// "close frame from client, then server fin", "server reset without a close frame", "client fin"
    /// (a connection that stayed HTTP), and who ended it first: the close frame's sender, else the
    /// first side to end its TCP part.
    public var reason: (text: String, closedBy: String?) {
        let tcp = first.map { "\($0.side.sender) \(Self.text($0.how))" }
        if let closer = closeFrameFrom {
            return ("close frame from \(closer.sender)" + (tcp.map { ", then \($0)" } ?? ""), closer.sender)
        }
        guard let tcp, let first else { return ("connection closed", nil) }
        return (isWebSocket ? "\(tcp) without a close frame" : tcp, first.side.sender)
    }

    private static func text(_ how: How) -> String {
        switch how {
        case .fin: "fin"
        case .reset: "reset"
        case .error(let detail): "error: \(detail)"
        case .closed: "closed"
        }
    }
}
