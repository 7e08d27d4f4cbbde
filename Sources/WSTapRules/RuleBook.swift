import Synchronization

/// The rules in force, shared by every connection of a proxy. A reload replaces them as a whole;
/// each connection reads them again at its next message, so rules apply to connections already open.
public final class RuleBook: Sendable {
    private let current: Mutex<RuleEngine>
    /// Bumped by every `replace`: a connection keeps its own copy of the engine and takes the lock
    /// only when this moved. Reading the engine under the lock for every message made all event-loop
    /// threads write the same lock and reference counts (100 connections on two threads ran at 0.76×
    /// of one connection's rate with rules that match nothing).
    private let generation = Atomic<UInt64>(0)

    public init(_ engine: RuleEngine) { current = Mutex(engine) }

    public var engine: RuleEngine { current.withLock { $0 } }

    public func replace(with engine: RuleEngine) {
        current.withLock { $0 = engine }
        generation.add(1, ordering: .releasing)
    }

    /// Brings `engine` up to date if a reload happened since `seen`.
    public func refresh(_ engine: inout RuleEngine, seen: inout UInt64) {
        let now = generation.load(ordering: .acquiring)
        guard now != seen else { return }
        engine = current.withLock { $0 }
        seen = now
    }
}
