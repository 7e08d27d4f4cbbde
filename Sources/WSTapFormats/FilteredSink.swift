import Synchronization
import WSTapDissect
import WSTapFilter

/// Passes on what `--filter` selects (see `FilterSelection`): matching records, and the open and end
/// records of each connection with a match. Callers on many threads share one selection under a lock.
public final class FilteredSink: RecordSink {
    private let selection: Mutex<(FilterSelection, seen: Int, kept: Int)>
    private let downstream: any RecordSink

    public init(_ filter: Filter, downstream: any RecordSink) {
        selection = Mutex((FilterSelection(filter), 0, 0))
        self.downstream = downstream
    }

    public func write(_ records: [TapRecord]) {
        let kept = selection.withLock { state in
            let kept = state.0.select(records)
            state.seen += records.count
            state.kept += kept.count
            return kept
        }
        if !kept.isEmpty { downstream.write(kept) }
    }

    /// Records handed in and records passed on so far.
    public var counts: (seen: Int, kept: Int) { selection.withLock { ($0.seen, $0.kept) } }
}
