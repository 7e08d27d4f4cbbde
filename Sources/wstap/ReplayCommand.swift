import ArgumentParser
import WSTapCapture
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapProxy
import WSTapRecording
import WSTapRelay
import WSTapReplay
import WSTapRules

#if canImport(Glibc)
import Glibc
#endif

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay the client side of a recorded connection against a server, and diff the answers.",
        discussion: """
            The recording is wstap's JSON Lines, a HAR log (Chrome DevTools, mitmproxy, HTTP Toolkit) or a \
            pcap/pcapng capture. The handshake is the recorded request head in its order with a fresh \
            Sec-WebSocket-Key, Host pointed at --to; the server's answer is checked and its differences \
            from the recorded 101 reported. Pacing 'reply' sends client message i once the server messages \
            recorded before it have arrived (counted, or matched by --correlate); recorded pongs are not \
            replayed (wstap answers the server's pings itself). The new session is recorded like the \
            proxy's (--jsonl, the console); --diff compares the server's messages with the recording and \
            exits 1 when they differ.

            In a replay --filter chooses the connection to replay (the one a record of which matches, \
            instead of --conn) and the new session is recorded whole; --rule and --rules change client \
            messages before they are sent (edits, drop, duplicate, fragment, uncompressed).

            Examples:
              wstap replay session.jsonl --to ws://127.0.0.1:9000 --diff
              wstap replay capture.pcap --conn 2 --to ws://staging:9000/chat --pace timing --speed 4
              wstap replay session.har --to wss://api.example.test --correlate json.id --diff --ignore json.ts
              wstap replay login.jsonl --to ws://127.0.0.1:9000 --capture token=json.session.token
              wstap replay capture.pcap --filter 'url~/chat/' --rule 'json.op=buy => set json.qty 0' --to ws://127.0.0.1:9000
            """
    )

    @Argument(help: ArgumentHelp("The recording: JSON Lines, HAR, pcap or pcapng.", valueName: "recording"))
    var source: String

    @Option(name: .long, help: ArgumentHelp("The server to replay against.", valueName: "ws(s)://host[:port][/path]"))
    var to: String

    @Option(name: .long, help: ArgumentHelp("Which recorded connection (its conn number); needed when the recording has more than one.", valueName: "n"))
    var conn: UInt64?

    @Option(name: .long, help: ArgumentHelp("When each client message goes: reply (after the server messages recorded before it), idle=DURATION (after the server was quiet that long: 300ms, 2s), timing (the recorded gaps), asap.", valueName: "reply|idle=DUR|timing|asap"))
    var pace = "reply"

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for the server at each step (a reply, the upgrade, the close) before going on.", valueName: "seconds"))
    var stepTimeout: Double = 10

    @Option(name: .long, help: ArgumentHelp("With --pace timing: play the recorded gaps this many times faster.", valueName: "factor"))
    var speed: Double = 1

    @Option(name: .long, help: ArgumentHelp("With --pace timing: no gap longer than this many seconds.", valueName: "seconds"))
    var maxGap: Double?

    @Option(name: .long, help: ArgumentHelp("Match replies by this JSON value instead of counting them (pacing and --diff): json.id.", valueName: "json.path"))
    var correlate: String?

    @Option(name: .long, help: ArgumentHelp("Take a value from the server's replies; later client messages get it where they say {{NAME}}. Repeatable.", valueName: "NAME=json.path"))
    var capture: [String] = []

    @Flag(name: .long, help: "Send the recorded Sec-WebSocket-Key instead of a fresh one.")
    var keepKey = false

    @Option(name: .long, help: ArgumentHelp("Set a request header (replacing the recorded one of that name); repeatable.", valueName: "'Name: value'"))
    var header: [String] = []

    @Option(name: .long, help: ArgumentHelp("Leave a recorded request header out; repeatable.", valueName: "name"))
    var dropHeader: [String] = []

    @Option(name: .long, help: ArgumentHelp("keep: offer the recorded extensions and compress as recorded; strip: offer none.", valueName: "keep|strip"))
    var compression = "keep"

    @Option(name: .long, help: ArgumentHelp("keep: the recorded frame count per message; single: one frame each.", valueName: "keep|single"))
    var reframe = "keep"

    @Flag(name: .long, help: "Compare the server's messages with the recording; exit 1 when they differ.")
    var diff = false

    @Option(name: .long, help: ArgumentHelp("With --diff: leave this JSON path out of the comparison (timestamps, ids); repeatable.", valueName: "json.path"))
    var ignore: [String] = []

    @Flag(name: .long, help: "Replay messages whose payloads the recording cut (--max-payload) as far as they go.")
    var allowTruncated = false

    @Flag(name: .long, help: "Do not verify the server's TLS certificate.")
    var insecure = false

    @Option(name: .long, help: ArgumentHelp("Also trust the CA certificates in this PEM file for the server's TLS.", valueName: "file"))
    var upstreamCA: String?

    @Option(name: .long, help: ArgumentHelp("Append NSS key log lines of the replay's TLS to this file (default $SSLKEYLOGFILE).", valueName: "file"))
    var keylog: String?

    @Option(name: .long, help: ArgumentHelp("Decrypt a captured wss:// recording with the secrets in this NSS key log.", valueName: "file"))
    var readKeylog: String?

    @OptionGroup var ruleOptions: RuleOptions

    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard stepTimeout > 0, stepTimeout.isFinite else { throw ValidationError("--step-timeout must be a number of seconds above 0.") }
        guard speed > 0, speed.isFinite else { throw ValidationError("--speed must be a factor above 0 (2 plays twice as fast).") }
        if let maxGap, !(maxGap >= 0 && maxGap.isFinite) { throw ValidationError("--max-gap must be 0 or more seconds.") }
        _ = try parsedPace()
        guard ReplayOptions.Compression(rawValue: compression) != nil else { throw ValidationError("--compression must be keep or strip.") }
        guard ReplayOptions.Reframe(rawValue: reframe) != nil else { throw ValidationError("--reframe must be keep or single.") }
        for value in header where !value.contains(":") { throw ValidationError("--header '\(value)': write it as 'Name: value'.") }
        _ = try parsedTarget()
        if !ruleOptions.exec.isEmpty { throw ValidationError("--exec hooks act on live traffic; a replay takes --rule and --rules.") }
        if conn != nil && output.filter != nil { throw ValidationError("--conn and --filter both choose the connection: give one.") }
    }

    func parsedPace() throws -> ReplayOptions.Pace {
        guard let parsed = ReplayOptions.Pace(parsing: pace) else {
            throw ValidationError("--pace must be reply, idle=DURATION (idle=300ms, idle=2s), timing or asap; not '\(pace)'.")
        }
        return parsed
    }

    /// `0.42 s`, `12.3 s`.
    static func seconds(_ nanoseconds: Int64) -> String {
        let value = Double(nanoseconds) / 1e9
        let hundredths = (value * 100).rounded()
        let cents = Int(hundredths) % 100
        return value < 10 ? "\(Int(hundredths) / 100).\(cents < 10 ? "0" : "")\(cents) s" : "\(Int(value.rounded())) s"
    }

    func parsedTarget() throws -> ReplayTarget {
        guard to.hasPrefix("ws://") || to.hasPrefix("wss://") else {
            throw ValidationError("--to must be a ws:// or wss:// URL, e.g. ws://127.0.0.1:9000/chat; not '\(to)'.")
        }
        let url: UpstreamURL
        do { url = try UpstreamURL.parse(to) } catch { throw ValidationError("--to: \(error)") }
        return ReplayTarget(secure: url.scheme == "wss", host: url.host, port: url.port, path: url.path)
    }

    func run() throws {
        let target = try parsedTarget()
        let recording = load()
        let connection = select(from: recording.recording, matching: recording.matching)
        refuseTruncated(connection)
        var options = ReplayOptions()
        options.pace = try parsedPace()
        options.stepTimeout = .nanoseconds(Int64(stepTimeout * 1e9))
        options.speed = speed
        options.maxGapNanoseconds = maxGap.map { Int64($0 * 1e9) }
        options.correlate = correlate.map { path(for: "--correlate", $0) }
        options.captures = capture.map { spec in
            guard let eq = spec.firstIndex(of: "="), eq != spec.startIndex else { usage("--capture '\(spec)': write it as NAME=json.path, e.g. token=json.session.token") }
            return ReplayOptions.Capture(name: String(spec[..<eq]), path: path(for: "--capture", String(spec[spec.index(after: eq)...])))
        }
        options.keepKey = keepKey
        options.addHeaders = header.map { value in
            let colon = value.firstIndex(of: ":")!
            return (String(value[..<colon]).trimmingSpaces, String(value[value.index(after: colon)...]).trimmingSpaces)
        }
        options.dropHeaders = dropHeader
        options.compression = ReplayOptions.Compression(rawValue: compression)!
        options.reframe = ReplayOptions.Reframe(rawValue: reframe)!
        options.payloadCap = output.maxPayload.bytes ?? Int(clamping: output.maxInflate)
        if !ruleOptions.isEmpty { options.rules = RuleEngine(rules: ruleOptions.load()) }
        let ignored = ignore.map { path(for: "--ignore", $0) }

        var tls: ReplayClient.TLS?
        if target.secure {
            var keyLogFile: OutputFile?
            if let path = keylog ?? environment()["SSLKEYLOGFILE"], !path.isEmpty {
                do { keyLogFile = try OutputFile.open(path: path, append: true) } catch {
                    fail("--keylog: \(error). Check that the directory exists and is writable.")
                }
            }
            tls = ReplayClient.TLS(upstreamCAFile: upstreamCA, insecure: insecure, keyLog: keyLogFile,
                                   serverName: UpstreamTLS.forHost(target.host).serverName)
        }
        let sinks = output.makeSinks(filtering: false)
        let session: ReplaySession
        do {
            session = try ReplayClient.run(connection, target: target, options: options, tls: tls, sink: sinks.all)
        } catch {
            sinks.finish()
            fail("replay to \(target): \(error)")
        }
        sinks.finish()
        report(session, connection: connection, ignored: ignored)
    }

    /// The summary on stderr, the diff, and the exit status.
    private func report(_ session: ReplaySession, connection: Recording.Connection, ignored: [JSONPath]) -> Never {
        let result = session.result
        var lines: [String] = []
        if let failure = result.failure {
            lines.append("wstap: replay of conn \(connection.id) to \(result.target) failed: \(failure)")
            OutputFile.standardError.write(Array((lines.joined(separator: "\n") + "\n").utf8))
            Glibc.exit(1)
        }
        let recordedReplies = session.recordedReplies.count, clientMessages = connection.messages(from: .clientToServer).count { !$0.opcode.isControl }
        lines.append("wstap: replayed conn \(connection.id) of \(source) to \(result.target): sent \(result.sent) of \(clientMessages) client messages, "
                     + "received \(session.receivedReplies.count) server messages (\(recordedReplies) recorded)"
                     + (result.elapsedNanoseconds.map { " in \(Self.seconds($0))" } ?? ""))
        lines += result.handshake.map { "  handshake: \($0)" }
        lines += result.timeouts.map { "  timeout: \($0)" }
        for rule in Set(result.changedByRule.keys).union(result.droppedByRule.keys).sorted() {
            var parts: [String] = []
            if let changed = result.changedByRule[rule] { parts.append("changed \(counted(changed, "client message"))") }
            if let dropped = result.droppedByRule[rule] { parts.append("dropped \(counted(dropped, "client message"))") }
            lines.append("  rule '\(rule)': \(parts.joined(separator: ", "))")
        }
        lines += result.notes.map { "  note: \($0)" }
        var status: Int32 = 0
        if diff {
            let differences = ReplayDiff.compare(recorded: session.recordedReplies, replayed: session.receivedReplies,
                                                 correlate: session.options.correlate, ignore: ignored)
            lines += differences.prefix(50).map { "  diff: \($0)" }
            if differences.count > 50 { lines.append("  diff: … and \(differences.count - 50) more") }
            let count = differences.count + (result.handshakeDiffers ? 1 : 0)
            lines.append(count == 0 ? "wstap: diff: the server answered as recorded" : "wstap: diff: \(counted(count, "difference")) from the recording")
            if count > 0 { status = 1 }
        }
        OutputFile.standardError.write(Array((lines.joined(separator: "\n") + "\n").utf8))
        Glibc.exit(status)
    }

    private func load() -> (recording: Recording, matching: Set<UInt64>?) {
        RecordingSource.load(source, readKeylog: readKeylog, filter: output.makeFilter(), maxInflate: output.maxInflate)
    }

    private func select(from recording: Recording, matching: Set<UInt64>?) -> Recording.Connection {
        let ids = recording.connections.map(\.id)
        if let matching, let filter = output.filter {
            let chosen = recording.connections.filter { matching.contains($0.id) }
            switch chosen.count {
            case 1: return chosen[0]
            case 0: fail("no WebSocket connection of \(source) matches --filter '\(filter)'; it has \(ids.isEmpty ? "none" : ids.map(String.init).joined(separator: ", "))")
            default: fail("\(chosen.count) WebSocket connections of \(source) match --filter '\(filter)' (\(chosen.map { String($0.id) }.joined(separator: ", "))): narrow it, or choose one with --conn N")
            }
        }
        if let conn {
            guard let found = recording.connection(conn) else {
                fail("\(source) has no WebSocket connection \(conn); it has \(ids.isEmpty ? "none" : ids.map(String.init).joined(separator: ", "))")
            }
            return found
        }
        switch recording.connections.count {
        case 0: fail("\(source) has no WebSocket connection to replay")
        case 1: return recording.connections[0]
        default: fail("\(source) has \(ids.count) WebSocket connections (\(ids.map(String.init).joined(separator: ", "))): choose one with --conn N")
        }
    }

    private func refuseTruncated(_ connection: Recording.Connection) {
        let client = connection.messages(from: .clientToServer).filter { !$0.opcode.isControl }
        let cut = client.filter(\.truncated).count, undecodable = client.filter(\.inflateFailed).count
        guard !allowTruncated else { return }
        if cut > 0 {
            fail("conn \(connection.id): \(counted(cut, "client message")) of \(source) \(cut == 1 ? "was" : "were") cut at --max-payload when recorded, "
                 + "so a replay would send less. Record again with --max-payload unlimited, or replay what there is with --allow-truncated")
        }
        if undecodable > 0 {
            fail("conn \(connection.id): \(counted(undecodable, "client message")) of \(source) did not inflate when recorded; replay the rest with --allow-truncated")
        }
    }

    private func path(for option: String, _ text: String) -> JSONPath {
        do { return try JSONPath(parsing: text) } catch { usage("\(option) '\(text)': \(error)") }
    }

    private func usage(_ message: String) -> Never {
        OutputFile.standardError.write(Array("wstap: \(message)\n".utf8))
        Glibc.exit(64)
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}
