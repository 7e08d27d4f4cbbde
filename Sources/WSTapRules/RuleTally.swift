import WSTapDissect
import WSTapFilter
import WSTapWire

/// Per rule: messages matched, messages changed, the first change.
public struct RuleTally {
    public let engine: RuleEngine
    private var random: SplitMixUnit
    /// Messages seen.
    public private(set) var messages = 0
    private var facts: [UInt64: ConnectionFacts] = [:]
    /// By rule name: messages the rule matched, and those it would change.
    public private(set) var matched: [String: Int] = [:]
    public private(set) var changed: [String: Int] = [:]
    /// By rule name: the first message it would change, before and after.
    public private(set) var samples: [String: (before: [UInt8], after: [UInt8], opcode: Opcode, effects: [RuleAction])] = [:]
    /// By rule name: why it was not applied, and to how many messages.
    public private(set) var skipped: [String: [String: Int]] = [:]

    /// - Parameter seed: rules with `p=` draw from a generator with this seed, so a seed repeats a run.
    public init(engine: RuleEngine, seed: UInt64) {
        self.engine = engine
        random = SplitMixUnit(seed: seed)
    }

    public mutating func add(_ record: TapRecord) {
        switch record.body {
        case .open(let open): facts[record.connection] = ConnectionFacts(open)
        case .end: facts[record.connection] = nil
        case .message(let message):
            messages += 1
            var generator = random
            let outcome = engine.apply(to: record, connection: facts[record.connection]) { generator.nextUnit() }
            random = generator
            for applied in outcome.applied {
                matched[applied.rule, default: 0] += 1
                let effects = applied.actions.filter { if case .mark = $0 { false } else { true } }
                let edits = applied.before != applied.after
                let acts = effects.contains { action in
                    switch action {
                    case .replace, .replaceBytes, .setJSON, .deleteJSON: false
                    default: true
                    }
                }
                if edits || acts {
                    changed[applied.rule, default: 0] += 1
                    if samples[applied.rule] == nil { samples[applied.rule] = (applied.before, applied.after, message.opcode, effects) }
                }
            }
            for skip in outcome.skipped { skipped[skip.rule, default: [:]][skip.reason, default: 0] += 1 }
        default:
            break
        }
    }
}

/// SplitMix64 (the tests' generator): rules with p= draw from it, so a seed repeats a run.
struct SplitMixUnit {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func nextUnit() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Double((z ^ (z >> 31)) >> 11) / Double(1 << 53)
    }
}
