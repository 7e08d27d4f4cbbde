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

    /// - Parameters:
    ///   - dissector: the connection's dissector, already past the 101; it keeps recording every byte.
    ///   - clientPosition, serverPosition: how many bytes of each direction were relayed before the
    ///     hand-over (the handshake heads, and frames sent in the same reads as them).
    public init(start: WebSocketStart, dissector: StreamDissector, clientPosition: UInt64, serverPosition: UInt64) {
        self.start = start
        self.dissector = dissector
        clientToServer = DirectionPipe(direction: .clientToServer, position: clientPosition)
        serverToClient = DirectionPipe(direction: .serverToClient, position: serverPosition)
    }

    public func handle(_ event: Event) -> [Action] {
        switch event {
        case .received(let direction, let buffer, let time):
            var records: [TapRecord] = []
            buffer.withUnsafeReadableBytes { dissector.feed($0, from: direction, at: time, into: &records) }
            var actions: [Action] = records.isEmpty ? [] : [.emit(records)]
            let out = direction == .clientToServer ? clientToServer.received(buffer) : serverToClient.received(buffer)
            actions += out.map { .send(direction, $0) }
            return actions
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
    /// Bytes of this direction taken in so far, counted from the connection's first byte.
    private(set) var position: UInt64

    init(direction: Direction, position: UInt64) {
        self.direction = direction
        self.position = position
    }

    mutating func received(_ buffer: ByteBuffer) -> [ByteBuffer] {
        position += UInt64(buffer.readableBytes)
        switch mode {
        case .passThrough:
            return [buffer]
        }
    }
}
