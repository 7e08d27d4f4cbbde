/// What an exec hook decided for one message it was handed (docs/hooks.md has the protocol). The
/// relay carries it out like the rule actions it stands for; the hook decides last, after every rule.
public struct HookVerdict: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        /// The message goes on as the rules left it.
        case forward
        case drop
        /// The payload the message goes on with (framed anew, like any edit).
        case replace([UInt8])
        case delay(milliseconds: Int)
        /// The message goes no further; wstap closes that side, as the `close` action does.
        case close(code: UInt16, reason: String, to: Side)
    }

    public var decision: Decision
    /// wstap's own messages to send besides, as `inject` sends them.
    public var inject: [(to: Side, payload: RuleAction.Injected)]

    public init(_ decision: Decision, inject: [(to: Side, payload: RuleAction.Injected)] = []) {
        self.decision = decision
        self.inject = inject
    }

    public static func == (a: HookVerdict, b: HookVerdict) -> Bool {
        a.decision == b.decision && a.inject.count == b.inject.count
            && zip(a.inject, b.inject).allSatisfy { $0.to == $1.to && $0.payload == $1.payload }
    }

    /// A word for records and the console: "forward", "replace", "close 4000".
    public var summary: String {
        var words: String
        switch decision {
        case .forward: words = "forward"
        case .drop: words = "drop"
        case .replace: words = "replace"
        case .delay(let ms): words = "delay \(ms)ms"
        case .close(let code, _, let side): words = "close \(code) to=\(side.rawValue)"
        }
        if !inject.isEmpty { words += " + inject \(inject.count)" }
        return words
    }

    /// The rule actions the verdict stands for besides a replacement (which is not an action).
    public var actions: [RuleAction] {
        var actions: [RuleAction] = []
        switch decision {
        case .forward, .replace: break
        case .drop: actions.append(.drop)
        case .delay(let ms): actions.append(.delay(milliseconds: ms, jitter: 0))
        case .close(let code, let reason, let side): actions.append(.close(code: code, reason: reason, to: side))
        }
        // Injections go before a close that ends the direction, as a rule's would have to.
        return inject.map { RuleAction.inject(to: $0.to, payload: $0.payload) } + actions
    }
}
