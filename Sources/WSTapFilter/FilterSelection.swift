import WSTapDissect

/// What `--filter` keeps of a stream of records, like a display filter: the records that match, and
/// for each connection that has one, its `open` record (written just before its first match) and its
/// `end` record. A connection none of whose records match does not appear at all. It selects what
/// is recorded and shown, never what is relayed.
///
/// Sans-IO and single-threaded: the shells put it behind a lock (`FilteredSink`). Memory: the open
/// record of each connection that is still open, nothing else.
public struct FilterSelection {
    public let filter: Filter
    private var connections: [UInt64: Held] = [:]

    private struct Held {
        var open: TapRecord?
        var facts: ConnectionFacts?
        /// Its open record was written (a record of it matched).
        var shown = false
    }

    public init(_ filter: Filter) { self.filter = filter }

    /// Connections whose records are being followed (open and not yet ended).
    public var followedConnections: Int { connections.count }

    public mutating func select(_ records: [TapRecord]) -> [TapRecord] {
        var kept: [TapRecord] = []
        for record in records { select(record, into: &kept) }
        return kept
    }

    public mutating func select(_ record: TapRecord, into kept: inout [TapRecord]) {
        let id = record.connection
        switch record.body {
        case .open(let open):
            var held = Held(open: record, facts: ConnectionFacts(open))
            if filter.matches(record) {
                held.shown = true
                kept.append(record)
            }
            connections[id] = held
        case .end:
            let held = connections.removeValue(forKey: id)
            if held?.shown == true {
                kept.append(record)
            } else if filter.matches(record, connection: held?.facts) {
                if let open = held?.open { kept.append(open) }
                kept.append(record)
            }
        default:
            guard filter.matches(record, connection: connections[id]?.facts) else { return }
            if var held = connections[id], !held.shown {
                held.shown = true
                if let open = held.open { kept.append(open) }
                held.open = nil
                connections[id] = held
            }
            kept.append(record)
        }
    }
}
