import Synchronization

/// The rules in force, shared by every connection of a proxy. A reload replaces them as a whole;
/// each connection reads them again at its next message, so rules apply to connections already open.
public final class RuleBook: Sendable {
    private let current: Mutex<RuleEngine>

    public init(_ engine: RuleEngine) { current = Mutex(engine) }

    public var engine: RuleEngine { current.withLock { $0 } }

    public func replace(with engine: RuleEngine) { current.withLock { $0 = engine } }
}
