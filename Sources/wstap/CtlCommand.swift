import ArgumentParser
import WSTapControl
import WSTapFilter
import WSTapFormats

#if canImport(Glibc)
import Glibc
#endif

/// `wstap ctl`: the control API of a running `wstap proxy --ui`, from the shell (docs/control-api.md).
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Watch and steer a running wstap proxy --ui from the shell.",
        discussion: """
            Give the address wstap proxy --ui printed with --ui, or in WSTAP_UI:

              export WSTAP_UI='http://127.0.0.1:8081/?token=6f1c…'
              wstap ctl list
              wstap ctl tail --filter 'type=message from=server'
              wstap ctl send 3 --to server --text '{"op":"ping"}'
              wstap ctl holds
              wstap ctl release 3 5 edit --text '{"op":"changed"}'
              wstap ctl close 3 --code 4001 --reason bye
              wstap ctl rules --put rules.txt
            """,
        subcommands: [List.self, Tail.self, Send.self, Close.self, Abort.self, Holds.self, Release.self, Rules.self]
    )

    struct Target: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("The address wstap proxy --ui printed, token included (default: $WSTAP_UI).", valueName: "url"))
        var ui: String?

        @Flag(name: .long, help: "Print the API's JSON as it answered.")
        var json = false

        func client() -> ControlClient {
            guard let url = ui ?? environment()["WSTAP_UI"], !url.isEmpty else {
                fail("which wstap? give --ui URL or set WSTAP_UI to the address wstap proxy --ui printed (http://127.0.0.1:PORT/?token=…)")
            }
            do { return try ControlClient(url: url) } catch { fail(error.description) }
        }

        /// The answer's body; exits 1 with the API's reason when it refused.
        func call(_ method: String, _ target: String, body: [UInt8] = [], contentType: String = "application/json") -> ControlClient.Response {
            do {
                let response = try client().call(method, target, body: body, contentType: contentType)
                guard (200..<300).contains(response.status) else { fail(ControlClient.reason(status: response.status, body: response.body)) }
                return response
            } catch {
                fail(error.description)
            }
        }

        /// The answer as JSON, or its raw text with --json.
        func show(_ response: ControlClient.Response, _ body: (JSONValue) -> Void) {
            if json {
                print(response.text)
                return
            }
            guard let parsed = JSONValue.parse(response.body) else { fail("the control API answered something that is not JSON") }
            body(parsed)
        }
    }

    static func query(_ pairs: [(String, String?)]) -> String {
        let given = pairs.compactMap { name, value in value.map { "\(name)=\(ControlRequest.percentEncoded($0))" } }
        return given.isEmpty ? "" : "?" + given.joined(separator: "&")
    }

    /// `,"text":…` or `,"base64":…` for a message's payload, as the API takes it.
    static func payloadMembers(text: String?, base64: String?) -> String {
        if let text { return #","text":"# + jsonString(text) }
        if let base64 { return #","base64":"# + jsonString(base64) }
        return ""
    }

    static func jsonString(_ text: String) -> String {
        var writer = JSONWriter()
        writer.string(text)
        return String(decoding: writer.bytes, as: UTF8.self)
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The connections: number, state, URL, messages each way.")
        @OptionGroup var target: Target
        @Option(name: .long, help: ArgumentHelp("open, ended or all.", valueName: "state")) var state = "all"
        @Option(name: .long, help: ArgumentHelp("Only connections with a record that matches (docs/filters.md).", valueName: "expr")) var filter: String?

        func run() {
            let response = target.call("GET", "/api/connections" + CtlCommand.query([("state", state), ("filter", filter)]))
            target.show(response) { json in
                guard case .array(let list)? = json[member: "connections"] else { return }
                for item in list {
                    let number = item[member: "conn"].map(\.text) ?? "?"
                    print("#\(number)  \(item[member: "state"].map(\.text) ?? "")  \(item[member: "url"].map(\.text) ?? "")  "
                          + "client \(item[member: "client_messages"].map(\.text) ?? "0") msgs, server \(item[member: "server_messages"].map(\.text) ?? "0") msgs")
                }
                if list.isEmpty { print("no connections") }
            }
        }
    }

    struct Tail: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Records as they happen (the push stream), on the console or as JSON Lines.")
        @OptionGroup var target: Target
        @Option(name: .long, help: ArgumentHelp("Only records that match (docs/filters.md).", valueName: "expr")) var filter: String?
        @Option(name: .long, help: ArgumentHelp("Only this connection's records.", valueName: "conn")) var conn: UInt64?
        @Option(name: .long, help: ArgumentHelp("Start after this seq (0: every record the proxy still holds); default: from now on.", valueName: "seq")) var after: UInt64?
        @Flag(name: .long, help: "Print each record's JSON line (with its seq) instead of the console line.") var jsonl = false
        @Flag(name: [.short, .long], help: "Console: show frames and pings too.") var verbose = false

        func run() {
            let console = ConsoleSink(output: .standardOutput, options: .init(verbose: verbose,
                                                                              color: ConsoleSink.wantsColor(.standardOutput, environment: environment())))
            let path = "/api/events" + CtlCommand.query([("filter", filter), ("conn", conn.map(String.init)), ("after", after.map(String.init))])
            do {
                try target.client().stream(path) { name, _, data in
                    switch name {
                    case "record":
                        if jsonl || target.json {
                            OutputFile.standardOutput.write(Array((data + "\n").utf8))
                        } else if let record = try? JSONLinesReader.record(Array(data.utf8), line: 0) {
                            console.write([record])
                        }
                    case "gap":
                        OutputFile.standardError.write(Array("wstap: missed records (the reader fell behind): \(data)\n".utf8))
                    default:
                        break
                    }
                    return true
                }
            } catch {
                fail(error.description)
            }
        }
    }

    struct Send: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send a message of wstap's own to a peer of a connection.")
        @OptionGroup var target: Target
        @Argument(help: "The connection's number (wstap ctl list).") var conn: UInt64
        @Option(name: .long, help: ArgumentHelp("client, server or both.", valueName: "peer")) var to: String
        @Option(name: .long, help: ArgumentHelp("A text message.", valueName: "text")) var text: String?
        @Option(name: .long, help: ArgumentHelp("A binary message, in base64.", valueName: "base64")) var base64: String?
        @Option(name: .long, help: ArgumentHelp("Frames to send it in.", valueName: "count")) var fragments = 1
        @Flag(name: .long, help: "Compress it (permessage-deflate, when the connection negotiated it).") var compressed = false

        func validate() throws {
            guard (text == nil) != (base64 == nil) else { throw ValidationError("give the message with --text or --base64 (one of them)") }
        }

        func run() {
            var body = #"{"to":"# + CtlCommand.jsonString(to) + CtlCommand.payloadMembers(text: text, base64: base64)
            body += #","fragments":\#(fragments),"compressed":\#(compressed)}"#
            Result.print(target, target.call("POST", "/api/connections/\(conn)/messages", body: Array(body.utf8)))
        }
    }

    struct Close: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Close a connection with a code and a reason (the close handshake completes).")
        @OptionGroup var target: Target
        @Argument(help: "The connection's number.") var conn: UInt64
        @Option(name: .long, help: ArgumentHelp("The close code.", valueName: "code")) var code = 1000
        @Option(name: .long, help: ArgumentHelp("The close reason.", valueName: "text")) var reason = ""
        @Option(name: .long, help: ArgumentHelp("client, server or both.", valueName: "peer")) var to = "both"

        func run() {
            let body = #"{"code":\#(code),"reason":"# + CtlCommand.jsonString(reason) + #","to":"# + CtlCommand.jsonString(to) + "}"
            Result.print(target, target.call("POST", "/api/connections/\(conn)/close", body: Array(body.utf8)))
        }
    }

    struct Abort: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reset both TCP connections of a connection (no close handshake).")
        @OptionGroup var target: Target
        @Argument(help: "The connection's number.") var conn: UInt64

        func run() { Result.print(target, target.call("POST", "/api/connections/\(conn)/abort")) }
    }

    struct Holds: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The messages hold rules keep, of one connection or all.")
        @OptionGroup var target: Target
        @Argument(help: "A connection's number; all connections without it.") var conn: UInt64?

        func run() {
            let response = target.call("GET", conn.map { "/api/connections/\($0)/holds" } ?? "/api/holds")
            target.show(response) { json in
                guard case .array(let holds)? = json[member: "holds"] else { return }
                for hold in holds {
                    let payload = hold[member: "text"].map(\.text) ?? "base64 \(hold[member: "base64"].map(\.text) ?? "")"
                    print("#\(hold[member: "conn"].map(\.text) ?? "?") hold \(hold[member: "id"].map(\.text) ?? "?")  from \(hold[member: "from"].map(\.text) ?? "?")  "
                          + "\(hold[member: "length"].map(\.text) ?? "0") B  \(payload)")
                }
                if holds.isEmpty { print("nothing is held") }
            }
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Let a held message go: forward, drop, or edit it.")
        @OptionGroup var target: Target
        @Argument(help: "The connection's number.") var conn: UInt64
        @Argument(help: "The hold's id (wstap ctl holds).") var hold: UInt64
        @Argument(help: "forward, drop or edit.") var action: String
        @Option(name: .long, help: ArgumentHelp("edit: the new text.", valueName: "text")) var text: String?
        @Option(name: .long, help: ArgumentHelp("edit: the new payload, in base64.", valueName: "base64")) var base64: String?

        func validate() throws {
            guard ["forward", "drop", "edit"].contains(action) else { throw ValidationError("the action is forward, drop or edit, not '\(action)'") }
            if action == "edit" && (text == nil) == (base64 == nil) { throw ValidationError("edit needs the new payload: --text or --base64") }
        }

        func run() {
            let body = #"{"action":"# + CtlCommand.jsonString(action) + CtlCommand.payloadMembers(text: text, base64: base64) + "}"
            Result.print(target, target.call("POST", "/api/connections/\(conn)/holds/\(hold)", body: Array(body.utf8)))
        }
    }

    struct Rules: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The rules in force; --put FILE replaces them, --test FILE tries rules on the records held.")
        @OptionGroup var target: Target
        @Option(name: .long, help: ArgumentHelp("Replace the rules with this rules file's.", valueName: "file")) var put: String?
        @Option(name: .long, help: ArgumentHelp("Try this rules file's rules on the records the proxy holds.", valueName: "file")) var test: String?
        @Option(name: .long, help: ArgumentHelp("--test: only on the records that match.", valueName: "expr")) var filter: String?

        func run() {
            let response: ControlClient.Response
            if let path = put ?? test {
                guard let text = readText(path) else { fail("cannot read '\(path)'. Check the path and that it is readable.") }
                let route = put != nil ? "/api/rules" : "/api/rules/test" + CtlCommand.query([("filter", filter)])
                response = target.call(put != nil ? "PUT" : "POST", route, body: Array(text.utf8), contentType: "text/plain")
            } else {
                response = target.call("GET", "/api/rules")
            }
            target.show(response) { json in
                if let messages = json[member: "messages"] { print("tried on \(messages.text) messages") }
                guard case .array(let rules)? = json[member: "rules"] else { return }
                for rule in rules {
                    var line = "\(rule[member: "text"].map(\.text) ?? "")"
                    if let matched = rule[member: "matched"], let changed = rule[member: "changed"] { line += "\n  matches \(matched.text), would change \(changed.text)" }
                    if let sample = rule[member: "sample"], sample != .null {
                        line += "\n  before: \(sample[member: "before"].map(\.text) ?? "(binary)")\n  after:  \(sample[member: "after"].map(\.text) ?? "(binary)")"
                    }
                    print(line)
                }
                if rules.isEmpty { print("no rules in force") }
            }
        }
    }

    /// The `result` sentence of a command the API carried out.
    enum Result {
        static func print(_ target: Target, _ response: ControlClient.Response) {
            target.show(response) { json in
                if case .string(let result)? = json[member: "result"] { Swift.print(result) }
            }
        }
    }
}
