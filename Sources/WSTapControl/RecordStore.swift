import Synchronization
import WSTapDissect
import WSTapFilter
import WSTapFormats

/// The recent records of every connection, for the control API and the web UI: each with a
/// process-wide sequence number (`seq`, from 1) and its JSON Lines text, so the API serves the very
/// records the file holds, encoded once.
///
/// Bounded in bytes: when a new batch would pass `limitBytes`, the oldest records go, and the store
/// says up to which `seq` it has dropped (`droppedThrough`), so a reader can tell "nothing happened"
/// from "it is gone". Per connection it also keeps a summary (addresses, URL, counts, how it ended)
/// that outlives the connection's records, for the open connections and the `keptEnded` most
/// recently ended ones.
///
/// Thread-safe: every connection's event loop appends, the control server reads. Appending is a
/// lock, an encode and an array append; nothing in it waits for a reader.
public final class RecordStore: Sendable {
    public struct Entry: Sendable {
        public let seq: UInt64
        public let record: TapRecord
        /// The record as one JSON object with `seq` in it, without a line end.
        public let json: [UInt8]
        /// What the entry counts against the limit: its JSON, the payload it holds, and what the
        /// decoded record and the allocator take besides. That last part is measured, not derived:
        /// with 64 B messages a 64 MiB store took 146 MB of RSS while counting 96 B of it per entry
        /// (scripts/bench/run.py --ui, 2026-12-05); 448 B brings the store near its limit.
        var cost: Int { json.count + record.payloadBytes + 448 }
    }

    public let limitBytes: Int
    public let keptEnded: Int
    private let state: Mutex<State>
    /// Told after each append (with the last `seq`), outside the lock. Readers of the push stream
    /// register here; each must only schedule work, never do it in the caller's thread.
    private let listeners = Mutex<[UInt64: @Sendable (UInt64) -> Void]>([:])
    private let nextListener = Atomic<UInt64>(1)

    public init(limitBytes: Int = 64 << 20, keptEnded: Int = 1000) {
        self.limitBytes = max(1, limitBytes)
        self.keptEnded = max(0, keptEnded)
        state = Mutex(State())
    }

    struct State: ~Copyable {
        /// Entries in `seq` order from `head`; the space before `head` is reclaimed in bulk.
        var entries: [Entry] = []
        var head = 0
        var bytes = 0
        var lastSeq: UInt64 = 0
        var droppedThrough: UInt64 = 0
        var droppedRecords: UInt64 = 0
        var connections: [UInt64: ConnectionSummary] = [:]
        /// Ended connections, oldest first, so the oldest summaries go first.
        var ended: [UInt64] = []

        var count: Int { entries.count - head }
        var firstSeq: UInt64 { lastSeq - UInt64(count) + 1 }
    }

    /// Takes a batch of records (one connection's, in order), numbers and encodes them, and drops
    /// the oldest records beyond the limit. Returns the last `seq` given.
    @discardableResult
    public func append(_ records: [TapRecord]) -> UInt64 {
        guard !records.isEmpty else { return state.withLock { $0.lastSeq } }
        var writer = JSONWriter(capacity: 256 * records.count)
        let last: UInt64 = state.withLock { state in
            for record in records {
                state.lastSeq += 1
                writer.removeAll()
                JSONLinesEncoder.encodeObject(record, seq: state.lastSeq, into: &writer)
                let entry = Entry(seq: state.lastSeq, record: record, json: writer.bytes)
                state.bytes += entry.cost
                state.entries.append(entry)
                Self.summarize(record, seq: state.lastSeq, in: &state, keptEnded: keptEnded)
            }
            // The newest record stays even alone past the limit: a reader must see that it happened.
            while state.bytes > limitBytes && state.count > 1 {
                let gone = state.entries[state.head]
                state.bytes -= gone.cost
                state.droppedThrough = gone.seq
                state.droppedRecords += 1
                state.head += 1
            }
            // Dropped entries still hold their payloads until the array lets go of them: compact
            // once they are an eighth of it (at half, the store held nearly twice its limit).
            if state.head > 1024 && state.head * 8 > state.entries.count {
                state.entries.removeFirst(state.head)
                state.head = 0
            }
            return state.lastSeq
        }
        for listener in listeners.withLock({ Array($0.values) }) { listener(last) }
        return last
    }

    /// What the store holds now, in numbers.
    public struct Extent: Sendable, Equatable {
        /// Seq of the oldest record still held (lastSeq + 1 when empty).
        public var firstSeq: UInt64
        public var lastSeq: UInt64
        /// Every record up to this seq has been dropped to stay within the limit (0: none).
        public var droppedThrough: UInt64
        public var droppedRecords: UInt64
        public var bytes: Int

        /// Whether the oldest record held comes after the one following `after`: what a reader
        /// that has seen up to `after` would read next is gone. (`after + 1` would overflow at the
        /// largest seq a client may send; `firstSeq` is at least 1.)
        public func startsAfter(_ after: UInt64) -> Bool { after < firstSeq - 1 }
    }

    public var extent: Extent {
        state.withLock { Extent(firstSeq: $0.firstSeq, lastSeq: $0.lastSeq, droppedThrough: $0.droppedThrough, droppedRecords: $0.droppedRecords, bytes: $0.bytes) }
    }

    /// What a query found.
    public struct Page: Sendable {
        public var entries: [Entry]
        /// The seq up to which the query looked (at least `after`): where the next page starts.
        public var scannedThrough: UInt64
        public var extent: Extent
    }

    /// Up to `limit` entries with a seq above `after` that match `filter` (all without one), oldest
    /// first, looking at no more than `scanLimit` records. A filter's connection fields (url, host,
    /// path, subprotocol) are those of the record's connection, even when its open record is gone.
    public func entries(after: UInt64, limit: Int, filter: Filter? = nil, connection: UInt64? = nil, scanLimit: Int = .max) -> Page {
        state.withLock { state in
            let extent = Extent(firstSeq: state.firstSeq, lastSeq: state.lastSeq, droppedThrough: state.droppedThrough,
                                droppedRecords: state.droppedRecords, bytes: state.bytes)
            var out: [Entry] = []
            var scanned = max(after, state.droppedThrough)
            guard limit > 0, after < state.lastSeq else { return Page(entries: out, scannedThrough: max(after, scanned), extent: extent) }
            // Seqs are consecutive: the first entry past `after` is found by arithmetic.
            var index = state.head + Int(after >= state.firstSeq ? after - state.firstSeq + 1 : 0)
            var looked = 0
            while index < state.entries.count && out.count < limit && looked < scanLimit {
                let entry = state.entries[index]
                index += 1
                looked += 1
                scanned = entry.seq
                if let connection, entry.record.connection != connection { continue }
                if let filter, !filter.matches(entry.record, connection: state.connections[entry.record.connection]?.facts) { continue }
                out.append(entry)
            }
            return Page(entries: out, scannedThrough: scanned, extent: extent)
        }
    }

    /// Every entry held that matches, oldest first, read a page at a time: the lock is let go
    /// between pages, so a long walk does not hold up the connections appending records.
    public func forEachEntry(filter: Filter? = nil, connection: UInt64? = nil, _ body: (Entry) -> Void) {
        var after: UInt64 = 0
        while true {
            let page = entries(after: after, limit: 10_000, filter: filter, connection: connection)
            for entry in page.entries { body(entry) }
            guard page.scannedThrough > after, page.scannedThrough < page.extent.lastSeq else { return }
            after = page.scannedThrough
        }
    }

    /// Entries the store still references, dropped ones not yet let go included (for tests: they
    /// hold memory the limit no longer counts).
    var referencedEntries: (held: Int, all: Int) { state.withLock { ($0.count, $0.entries.count) } }

    /// The entry with this seq, if it is still held.
    public func entry(seq: UInt64) -> Entry? {
        state.withLock { state in
            guard seq >= state.firstSeq, seq <= state.lastSeq else { return nil }
            return state.entries[state.head + Int(seq - state.firstSeq)]
        }
    }

    /// Summaries of the connections known, by connection number.
    public func connections() -> [ConnectionSummary] {
        state.withLock { $0.connections.values.sorted { $0.id < $1.id } }
    }

    public func connection(_ id: UInt64) -> ConnectionSummary? { state.withLock { $0.connections[id] } }

    /// Calls `body` with the last seq after every append, on the appending thread, until `removeListener`.
    public func addListener(_ body: @escaping @Sendable (UInt64) -> Void) -> UInt64 {
        let id = nextListener.wrappingAdd(1, ordering: .relaxed).oldValue
        listeners.withLock { $0[id] = body }
        return id
    }

    public func removeListener(_ id: UInt64) { _ = listeners.withLock { $0.removeValue(forKey: id) } }

    private static func summarize(_ record: TapRecord, seq: UInt64, in state: inout State, keptEnded: Int) {
        let id = record.connection
        if case .open(let open) = record.body {
            state.connections[id] = ConnectionSummary(id: id, open: open, at: record.timestamp)
        } else if state.connections[id] == nil {
            // A connection whose open came before the store, or was forgotten: a summary of what is
            // known, so it can still be listed and steered.
            state.connections[id] = ConnectionSummary(id: id, at: record.timestamp)
        }
        state.connections[id]!.lastSeq = seq
        switch record.body {
        case .message(let message):
            state.connections[id]!.count(message)
        case .diagnostic:
            state.connections[id]!.diagnostics += 1
        case .change:
            state.connections[id]!.changes += 1
        case .end(let end):
            state.connections[id]!.end = ConnectionSummary.Ending(reason: end.reason, closedBy: end.closedBy, time: record.timestamp,
                                                                  clientBytes: end.clientBytes, serverBytes: end.serverBytes)
            state.ended.append(id)
            if state.ended.count > keptEnded {
                let forget = state.ended.count - keptEnded
                for old in state.ended.prefix(forget) { state.connections.removeValue(forKey: old) }
                state.ended.removeFirst(forget)
            }
        default:
            break
        }
    }
}

/// One connection as the control API lists it.
public struct ConnectionSummary: Sendable {
    public let id: UInt64
    public var client = ""
    public var server = ""
    public var url = ""
    public var subprotocol: String?
    public var extensions: String?
    public var opened: Timestamp
    public var messages: [Direction: UInt64] = [:]
    public var messageBytes: [Direction: UInt64] = [:]
    public var diagnostics: UInt64 = 0
    public var changes: UInt64 = 0
    public var lastSeq: UInt64 = 0
    public var end: Ending?

    public struct Ending: Sendable {
        public var reason: String
        public var closedBy: String?
        public var time: Timestamp
        public var clientBytes: UInt64
        public var serverBytes: UInt64
    }

    init(id: UInt64, at time: Timestamp) {
        self.id = id
        opened = time
    }

    init(id: UInt64, open: OpenRecord, at time: Timestamp) {
        self.init(id: id, at: time)
        client = open.client
        server = open.server
        url = open.url
        subprotocol = open.subprotocol
        extensions = open.extensions
    }

    public var isOpen: Bool { end == nil }
    var facts: ConnectionFacts { ConnectionFacts(url: url, subprotocol: subprotocol) }

    mutating func count(_ message: MessageRecord) {
        messages[message.direction, default: 0] += 1
        messageBytes[message.direction, default: 0] += message.length
    }

    /// The summary as a JSON object (docs/control-api.md).
    public func encode(into writer: inout JSONWriter) {
        writer.beginObject()
        writer.key("conn"); writer.integer(id)
        writer.key("state"); writer.string(isOpen ? "open" : "ended")
        writer.key("client"); writer.string(client)
        writer.key("server"); writer.string(server)
        writer.key("url"); writer.string(url)
        writer.key("subprotocol"); writer.stringOrNull(subprotocol)
        writer.key("extensions"); writer.stringOrNull(extensions)
        writer.key("opened"); writer.timestamp(nanoseconds: opened.nanoseconds)
        writer.key("client_messages"); writer.integer(messages[.clientToServer] ?? 0)
        writer.key("server_messages"); writer.integer(messages[.serverToClient] ?? 0)
        writer.key("client_message_bytes"); writer.integer(messageBytes[.clientToServer] ?? 0)
        writer.key("server_message_bytes"); writer.integer(messageBytes[.serverToClient] ?? 0)
        writer.key("diagnostics"); writer.integer(diagnostics)
        writer.key("changes"); writer.integer(changes)
        writer.key("last_seq"); writer.integer(lastSeq)
        writer.key("end")
        if let end {
            writer.beginObject()
            writer.key("reason"); writer.string(end.reason)
            writer.key("closed_by"); writer.stringOrNull(end.closedBy)
            writer.key("ts"); writer.timestamp(nanoseconds: end.time.nanoseconds)
            writer.key("client_bytes"); writer.integer(end.clientBytes)
            writer.key("server_bytes"); writer.integer(end.serverBytes)
            writer.endObject()
        } else {
            writer.null()
        }
        writer.endObject()
    }
}

extension TapRecord {
    /// Payload bytes the record holds (messages and the copies a change record sent).
    var payloadBytes: Int {
        switch body {
        case .message(let message): message.payload.count
        case .change(let change): change.sent.reduce(0) { $0 + $1.payload.count }
        default: 0
        }
    }
}

/// A `RecordSink` that puts every record in the store (beside the file and console sinks).
public final class StoreSink: RecordSink {
    public let store: RecordStore
    public init(_ store: RecordStore) { self.store = store }
    public func write(_ records: [TapRecord]) { store.append(records) }
}
