import WSTapDissect

/// Rebuilds the byte streams of TCP connections from captured segments (sans-IO).
///
/// Per connection and direction it delivers bytes in sequence order exactly once: retransmissions and
/// overlaps are trimmed, out-of-order segments wait (up to `maxBufferedPerDirection` bytes), and bytes
/// that never arrive become an explicit `.gap` with their count. Sequence numbers compare wrap-safely.
/// Event order per connection: `.opened`, then `.data`/`.gap` per direction in stream order, then
/// `.closed` (both FINs, a RST, a new SYN on the same addresses, or `finish`).
public final class TCPReassembler {
    public struct Connection: Sendable {
        public var id: UInt64
        public var client: Endpoint
        public var server: Endpoint
        /// Whether the SYN was captured (otherwise client and server were guessed).
        public var sawHandshake: Bool
    }

    public enum Event {
        case opened(Connection, Timestamp)
        case data(UInt64, Direction, [UInt8], Timestamp)
        case gap(UInt64, Direction, bytes: UInt64, Timestamp)
        /// Bytes missing from captured segments because of the snap length.
        case truncated(UInt64, Direction, bytes: Int, Timestamp)
        case closed(UInt64, Ending, Timestamp)
    }

    /// Why the reassembler closed a connection.
    public enum Ending: Sendable, Equatable {
        /// FINs or a RST: the first side to send one, and which it was.
        case tcp(first: Direction, how: ConnectionEnd.How)
        /// The capture ended with the connection open.
        case captureEnded
        /// A new SYN on the same addresses.
        case addressesReused
    }

    public let maxBufferedPerDirection: Int

    private struct Key: Hashable {
        var a: Endpoint
        var b: Endpoint
        init(_ x: Endpoint, _ y: Endpoint) {
            // Order-independent: both directions map to one key.
            if Endpoint.precedes(x, y) { (a, b) = (x, y) } else { (a, b) = (y, x) }
        }
    }

    private struct Stream {
        var next: UInt32?
        var pending: [(seq: UInt32, bytes: [UInt8], time: Timestamp)] = []
        var pendingBytes = 0
        var finAt: UInt32?
        var finished = false
    }

    private final class State {
        let connection: Connection
        var clientToServer = Stream()
        var serverToClient = Stream()
        /// Who sent the first FIN: the side that ended the connection first.
        var firstFIN: Direction?
        init(_ connection: Connection) { self.connection = connection }

        subscript(direction: Direction) -> Stream {
            get { direction == .clientToServer ? clientToServer : serverToClient }
            set { if direction == .clientToServer { clientToServer = newValue } else { serverToClient = newValue } }
        }
    }

    private var states: [Key: State] = [:]
    private var nextID: UInt64 = 1

    public init(maxBufferedPerDirection: Int = 4 << 20) {
        self.maxBufferedPerDirection = maxBufferedPerDirection
    }

    public func add(_ segment: TCPSegment, at time: Timestamp, into events: inout [Event]) {
        let key = Key(segment.source, segment.destination)
        if segment.syn && !segment.ackFlag, let old = states[key] {
            // A new connection reuses the addresses: the old one is over.
            finish(old, .addressesReused, at: time, into: &events)
            states[key] = nil
        }
        let state: State
        if let existing = states[key] {
            state = existing
        } else {
            guard segment.syn || !segment.payload.isEmpty else { return }  // a lone ACK opens nothing
            state = State(orient(segment))
            states[key] = state
            events.append(.opened(state.connection, time))
        }
        let direction: Direction = segment.source == state.connection.client ? .clientToServer : .serverToClient
        let id = state.connection.id
        var stream = state[direction]
        if segment.rst {
            state[direction] = stream
            // A RST ends the connection at once; the first FIN, if one came earlier, ended it first.
            finish(state, .tcp(first: state.firstFIN ?? direction, how: state.firstFIN == nil ? .reset : .fin), at: time, into: &events)
            states[key] = nil
            return
        }
        var seq = segment.sequence
        if segment.syn {
            stream.next = seq &+ 1
            seq = seq &+ 1
        } else if stream.next == nil {
            stream.next = seq  // capture started mid-stream: begin where we are
        }
        if segment.truncatedBy > 0 { events.append(.truncated(id, direction, bytes: segment.truncatedBy, time)) }
        // Snap-length loss is a gap of its own: the sender's bytes existed, the capture did not keep them.
        let length = segment.payload.count + segment.truncatedBy
        if segment.fin {
            stream.finAt = seq &+ UInt32(truncatingIfNeeded: length)
            if state.firstFIN == nil { state.firstFIN = direction }
        }
        if length > 0 {
            if segment.truncatedBy > 0 {
                accept(seq: seq, bytes: segment.payload, time: time, stream: &stream, id: id, direction: direction, events: &events)
                let after = seq &+ UInt32(segment.payload.count)
                if let next = stream.next, Self.diff(after, next) == 0 {
                    events.append(.gap(id, direction, bytes: UInt64(segment.truncatedBy), time))
                    stream.next = after &+ UInt32(segment.truncatedBy)
                    drain(&stream, id: id, direction: direction, events: &events)
                }
            } else {
                accept(seq: seq, bytes: segment.payload, time: time, stream: &stream, id: id, direction: direction, events: &events)
            }
        }
        if let finAt = stream.finAt, let next = stream.next, Self.diff(next, finAt) >= 0 { stream.finished = true }
        state[direction] = stream
        if state.clientToServer.finished && state.serverToClient.finished {
            finish(state, .tcp(first: state.firstFIN ?? direction, how: .fin), at: time, into: &events)
            states[key] = nil
        }
    }

    /// End of input: deliver what is still buffered (with gaps before it) and close every connection.
    public func finish(at time: Timestamp, into events: inout [Event]) {
        for (_, state) in states.sorted(by: { $0.value.connection.id < $1.value.connection.id }) {
            finish(state, .captureEnded, at: time, into: &events)
        }
        states = [:]
    }

    private func finish(_ state: State, _ ending: Ending, at time: Timestamp, into events: inout [Event]) {
        let id = state.connection.id
        for direction in [Direction.clientToServer, .serverToClient] {
            var stream = state[direction]
            while !stream.pending.isEmpty { forceGap(&stream, id: id, direction: direction, events: &events) }
            state[direction] = stream
        }
        events.append(.closed(id, ending, time))
    }

    private func accept(seq: UInt32, bytes: [UInt8], time: Timestamp, stream: inout Stream, id: UInt64, direction: Direction, events: inout [Event]) {
        guard let next = stream.next else { return }
        let offset = Self.diff(seq, next)
        if offset <= 0 {
            // Retransmission or overlap: keep only what is new.
            let skip = Int(-offset)
            guard skip < bytes.count else { return }
            let fresh = skip == 0 ? bytes : Array(bytes[skip...])
            events.append(.data(id, direction, fresh, time))
            stream.next = next &+ UInt32(fresh.count)
            drain(&stream, id: id, direction: direction, events: &events)
        } else {
            // Ahead of what we have: wait for the bytes in between.
            if !stream.pending.contains(where: { $0.seq == seq && $0.bytes.count >= bytes.count }) {
                stream.pending.append((seq, bytes, time))
                stream.pendingBytes += bytes.count
            }
            while stream.pendingBytes > maxBufferedPerDirection { forceGap(&stream, id: id, direction: direction, events: &events) }
        }
    }

    /// Delivers pending segments that now follow on.
    private func drain(_ stream: inout Stream, id: UInt64, direction: Direction, events: inout [Event]) {
        var progress = true
        while progress {
            progress = false
            guard let next = stream.next else { return }
            for (i, piece) in stream.pending.enumerated() where Self.diff(piece.seq, next) <= 0 {
                stream.pending.remove(at: i)
                stream.pendingBytes -= piece.bytes.count
                let skip = Int(-Self.diff(piece.seq, next))
                if skip < piece.bytes.count {
                    let fresh = Array(piece.bytes[skip...])
                    events.append(.data(id, direction, fresh, piece.time))
                    stream.next = next &+ UInt32(fresh.count)
                }
                progress = true
                break
            }
        }
    }

    /// Gives up on missing bytes: reports them as a gap and continues at the earliest buffered segment.
    private func forceGap(_ stream: inout Stream, id: UInt64, direction: Direction, events: inout [Event]) {
        guard let next = stream.next, let earliest = stream.pending.min(by: { Self.diff($0.seq, $1.seq) < 0 }) else { return }
        let missing = Self.diff(earliest.seq, next)
        if missing > 0 {
            events.append(.gap(id, direction, bytes: UInt64(missing), earliest.time))
            stream.next = earliest.seq
        }
        drain(&stream, id: id, direction: direction, events: &events)
    }

    /// Signed distance a - b in sequence space (RFC 1982 style), so wrap-around compares correctly.
    static func diff(_ a: UInt32, _ b: UInt32) -> Int64 { Int64(Int32(bitPattern: a &- b)) }

    /// Who is the client: the SYN's sender; else whoever speaks HTTP requests first; else the higher port.
    private func orient(_ segment: TCPSegment) -> Connection {
        defer { nextID += 1 }
        let (s, d) = (segment.source, segment.destination)
        if segment.syn { return Connection(id: nextID, client: segment.ackFlag ? d : s, server: segment.ackFlag ? s : d, sawHandshake: true) }
        let text = String(decoding: segment.payload.prefix(8), as: UTF8.self)
        if ["GET ", "POST ", "PUT ", "HEAD ", "OPTIONS ", "CONNECT ", "DELETE ", "PATCH "].contains(where: text.hasPrefix) {
            return Connection(id: nextID, client: s, server: d, sawHandshake: false)
        }
        if text.hasPrefix("HTTP/") { return Connection(id: nextID, client: d, server: s, sawHandshake: false) }
        return s.port > d.port
            ? Connection(id: nextID, client: s, server: d, sawHandshake: false)
            : Connection(id: nextID, client: d, server: s, sawHandshake: false)
    }
}
