import ArgumentParser
import WSTapCapture
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapRules
import WSTapWire

#if canImport(Glibc)
import Glibc
#endif

struct RulesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rules",
        abstract: "Check rules (WHEN => ACTION) against recorded traffic.",
        subcommands: [RulesTestCommand.self]
    )
}

/// `--rule` and `--rules FILE`, shared by every command that takes rules.
struct RuleOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("A rule: '[name p=0.05] WHEN => ACTION; ACTION', e.g. 'from=client json.op=subscribe => set json.channel \"test\"' (docs/rules.md). Repeatable.", valueName: "rule"))
    var rule: [String] = []

    @Option(name: .long, help: ArgumentHelp("A file of rules, one a line; # starts a comment.", valueName: "file"))
    var rules: String?

    @Option(name: .long, help: ArgumentHelp("Hand every data message to this hook process, after the rules (docs/hooks.md): one JSON line per message on its stdin, a verdict per line on its stdout. Repeatable.", valueName: "command"))
    var exec: [String] = []

    var isEmpty: Bool { rule.isEmpty && rules == nil && exec.isEmpty }

    /// The rules in order (file first, then --rule), or one line saying where one is wrong and exit 64.
    func load() -> [Rule] {
        switch read() {
        case .success(let loaded): return loaded
        case .failure(.unreadable(let message)): fail(message)
        case .failure(.invalid(let message)):
            OutputFile.standardError.write(Array("wstap: \(message)\n".utf8))
            Glibc.exit(64)
        }
    }

    enum LoadError: Error {
        case unreadable(String)
        case invalid(String)
    }

    /// The rules, or why they cannot be had: for the start and for every reload of the file.
    func read() -> Result<[Rule], LoadError> {
        var loaded: [Rule] = []
        do {
            if let rules {
                guard let text = readText(rules) else {
                    return .failure(.unreadable("--rules: cannot read '\(rules)'. Check the path and that it is readable."))
                }
                // A file to inject is found beside the rules file, wherever wstap was started.
                let folder = rules.contains("/") ? String(rules[..<rules.lastIndex(of: "/")!]) + "/" : ""
                loaded += try RuleParser.parseFile(text, origin: rules).map { rule in
                    try rule.readingInjectFiles(origin: rules) { path in readBytes(path.hasPrefix("/") ? path : folder + path) }
                }
            }
            for text in rule { loaded.append(try RuleParser.parse(text).readingInjectFiles(origin: "--rule") { readBytes($0) }) }
            // After every rule: a hook decides last, on what the rules made of the message.
            for (i, command) in exec.enumerated() { loaded.append(.hook(command, name: i == 0 ? "exec" : "exec-\(i + 1)")) }
        } catch {
            return .failure(.invalid("\(error)"))
        }
        return .success(loaded)
    }
}

struct RulesTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run rules over a JSONL recording or a capture and say, per rule, what it would change.",
        discussion: """
            Nothing is sent anywhere: every message of the recording goes through the rules as the proxy \
            would apply them, and each rule reports how many messages it matched, how many it would change, \
            and the first change as before and after.

            Examples:
              wstap rules test --rules rules.txt session.jsonl
              wstap rules test --rule 'json.type=tick => set json.price 0' capture.pcapng
            """
    )

    @OptionGroup var ruleOptions: RuleOptions

    @Argument(help: ArgumentHelp("JSONL recordings (.jsonl) or captures (pcap, pcapng).", valueName: "recording"))
    var recordings: [String]

    @OptionGroup var discovery: DiscoveryOptions

    @Option(name: .long, help: ArgumentHelp("Seed for rules with a probability (p=), so runs repeat.", valueName: "n"))
    var seed: UInt64 = 1

    func validate() throws {
        if ruleOptions.rule.isEmpty && ruleOptions.rules == nil { throw ValidationError("give rules with --rules FILE or --rule 'WHEN => ACTION'.") }
    }

    func run() throws {
        let rules = ruleOptions.load()
        var tally = RuleTally(engine: RuleEngine(rules: rules), seed: seed)
        for path in recordings {
            if path.hasSuffix(".jsonl") || path.hasSuffix(".json") || path == "-" {
                guard let text = readText(path) else { fail("cannot read '\(path)'. Check the path and that it is readable.") }
                do {
                    for record in try JSONLinesReader.records(text) { tally.add(record) }
                } catch {
                    fail("'\(path)' \(error): expected wstap's JSON Lines (--jsonl)")
                }
            } else {
                var configuration = StreamDissector.Configuration()
                configuration.frameRecords = false
                let session = discovery.makeSessions(configuration, count: 1, file: path)[0]
                do {
                    _ = try PcapFile.read(path: path, session: session, emit: { records in for record in records { tally.add(record) } }, progress: nil)
                } catch {
                    fail("\(error)")
                }
            }
        }
        OutputFile.standardOutput.write(Array(tally.report(rules: rules, over: recordings).utf8))
    }
}

extension RuleTally {
    func report(rules: [Rule], over recordings: [String]) -> String {
        var out = "\(counted(rules.count, "rule")) over \(recordings.joined(separator: ", ")): \(counted(messages, "message"))\n"
        for rule in rules {
            let hit = matched[rule.name] ?? 0
            let change = changed[rule.name] ?? 0
            let chance = rule.probability.map { ", p=\($0)" } ?? ""
            out += "\n[\(rule.name)] line \(rule.line)\(chance): matches \(grouped(hit)), would change \(grouped(change)): "
                + rule.actions.map(\.description).joined(separator: "; ") + "\n"
            if let sample = samples[rule.name] {
                if sample.before != sample.after {
                    out += "  before: \(Self.preview(sample.before, sample.opcode))\n  after:  \(Self.preview(sample.after, sample.opcode))\n"
                } else {
                    out += "  first: \(Self.preview(sample.before, sample.opcode))\n"
                }
            }
            for (reason, count) in (skipped[rule.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                out += "  not applied to \(counted(count, "message")): \(reason)\n"
            }
        }
        return out
    }

    static func preview(_ payload: [UInt8], _ opcode: Opcode) -> String {
        if opcode != .binary, let text = String(validating: payload, as: UTF8.self) {
            // As the text reads, one line: line breaks and tabs shown as escapes.
            let shown = String(text.prefix(160)).replacing("\\", with: "\\\\").replacing("\n", with: "\\n").replacing("\r", with: "\\r").replacing("\t", with: "\\t")
            return shown + (text.count > 160 ? "…" : "")
        }
        let hex = payload.prefix(48).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
        return "\(payload.count) bytes: \(hex)\(payload.count > 48 ? " …" : "")"
    }
}


/// A whole (small) text file, or nil.
func readText(_ path: String) -> String? {
    readBytes(path).map { String(decoding: $0, as: UTF8.self) }
}

/// A whole (small) file's bytes ("-" is standard input), or nil.
func readBytes(_ path: String) -> [UInt8]? {
    let file = path == "-" ? fdopen(dup(STDIN_FILENO), "r") : fopen(path, "r")
    guard let file else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n > 0 { bytes += buffer[0..<n] }
        if n < buffer.count { break }
    }
    if ferror(file) != 0 { return nil }
    return bytes
}
