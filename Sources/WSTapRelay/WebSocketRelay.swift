import NIOCore
import WSTapDissect

/// The sans-IO relay of a connection's WebSocket part, from the buffer after the one that held the 101.
///
/// `RelaySession` routes, answers CONNECT, intercepts TLS and follows HTTP up to the upgrade; once the
/// dissector says WebSocket has started it hands every later byte here. Each direction has its own
/// `DirectionPipe`, so what one direction does (later: hold a message, re-encode after an edit) never
/// stalls the other. Time comes in with each event; the relay never reads a clock.
///
/// Records go out before the bytes they describe: once a peer has seen a byte, its records are
/// written, so killing wstap at any moment loses nothing a peer has already seen.
public final class WebSocketRelay {
    public enum Event {
        /// Bytes as they arrived from the side that sent them.
        case received(Direction, ByteBuffer, at: Timestamp)
    }

    public enum Action {
        /// Bytes for the peer of the direction's sender: `.clientToServer` bytes go to the server.
        case send(Direction, ByteBuffer)
        case emit([TapRecord])
    }

    /// What the upgrade settled (offsets, compression): the pipes that change messages need it.
    public let start: WebSocketStart
    private let dissector: StreamDissector
    private var clientToServer: DirectionPipe
    private var serverToClient: DirectionPipe

    /// - Parameter dissector: the connection's dissector, already past the 101; it keeps recording every byte.
    public init(start: WebSocketStart, dissector: StreamDissector) {
        self.start = start
        self.dissector = dissector
        clientToServer = DirectionPipe(direction: .clientToServer)
        serverToClient = DirectionPipe(direction: .serverToClient)
    }

    /// Appends what to do to `actions` (the caller's buffer, reused from read to read: this runs for
    /// every read of every WebSocket connection).
    public func handle(_ event: Event, into actions: inout [Action]) {
        switch event {
        case .received(let direction, let buffer, let time):
            var records: [TapRecord] = []
            buffer.withUnsafeReadableBytes { dissector.feed($0, from: direction, at: time, into: &records) }
            if !records.isEmpty { actions.append(.emit(records)) }
            if direction == .clientToServer {
                clientToServer.received(buffer, into: &actions)
            } else {
                serverToClient.received(buffer, into: &actions)
            }
        }
    }
}

/// One direction of a WebSocket relay: what arrives from the sender, what leaves for its peer.
struct DirectionPipe {
    enum Mode {
        /// Every read leaves as it came, as one write, without a copy: the default, and the only mode
        /// while no rule can change a message.
        case passThrough
    }

    let direction: Direction
    private(set) var mode = Mode.passThrough

    init(direction: Direction) { self.direction = direction }

    mutating func received(_ buffer: ByteBuffer, into actions: inout [WebSocketRelay.Action]) {
        switch mode {
        case .passThrough:
            actions.append(.send(direction, buffer))
        }
    }
}
