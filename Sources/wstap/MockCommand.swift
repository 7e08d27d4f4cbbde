import ArgumentParser
import WSTapDissect
import WSTapFilter
import WSTapFormats
import WSTapProxy
import WSTapRecording
import WSTapRelay
import WSTapReplay

#if canImport(Glibc)
import Glibc
#endif

struct MockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mock",
        abstract: "Serve the server side of a recording: each recorded client message gets its recorded reply.",
        discussion: """
            Each recorded client message becomes a matcher and the server messages that followed it its \
            reply; server messages sent before any client message go out on connect. A client is served \
            from the recorded connection with its request target (else the same path, else the first); \
            every client has its own place in the script: a message is matched against the next expected \
            one first, then the later ones, then the earlier ones. Pings are answered, a close is \
            answered with its code. The sessions are recorded like the proxy's (console, --jsonl); \
            --journal writes what the clients sent.

            Examples:
              wstap mock --from session.jsonl --listen 127.0.0.1:9000
              wstap mock --from capture.pcap --match json --ignore json.ts --ignore json.id
              wstap mock --from session.har --unmatched passthrough=wss://api.example.test --journal sent.jsonl
              wstap mock --from session.jsonl --listen-tls --listen 127.0.0.1:9443
            """
    )

    @Option(name: .long, help: ArgumentHelp("The recording: JSON Lines, HAR, pcap or pcapng.", valueName: "recording"))
    var from: String

    @Option(name: .long, help: ArgumentHelp("Address to listen on (port 0 picks a free port, shown at start).", valueName: "host:port"))
    var listen = "127.0.0.1:8090"

    @Option(name: .long, help: ArgumentHelp("Serve only this recorded connection (its conn number).", valueName: "n"))
    var conn: UInt64?

    @Option(name: .long, help: ArgumentHelp("exact: same bytes; json: same JSON structure, --ignore paths left out; regex: the recorded text is a pattern the whole message must match.", valueName: "exact|json|regex"))
    var match = "exact"

    @Option(name: .long, help: ArgumentHelp("With --match json: leave this path out when matching (timestamps, ids); repeatable.", valueName: "json.path"))
    var ignore: [String] = []

    @Option(name: .long, help: ArgumentHelp("reply: replies at once; timing: after their recorded delays.", valueName: "reply|timing"))
    var pace = "reply"

    @Option(name: .long, help: ArgumentHelp("With --pace timing: play the recorded delays this many times faster.", valueName: "factor"))
    var speed: Double = 1

    @Option(name: .long, help: ArgumentHelp("A message that matches nothing: ignore it, close=CODE the connection, echo it, or pass it (and the rest of the unmatched) through to a real server, whose messages come back.", valueName: "ignore|close=CODE|echo|passthrough=ws(s)://host[:port][/path]"))
    var unmatched = "ignore"

    @Option(name: .long, help: ArgumentHelp("Also write what the clients sent (open, their messages and frames, end) as JSON Lines to this file.", valueName: "file"))
    var journal: String?

    @Flag(name: .long, help: "Serve wss://: certificates minted by wstap's CA for the name the client asks (SNI).")
    var listenTLS = false

    @OptionGroup var ca: CAOptions

    @Option(name: .long, help: ArgumentHelp("Seconds a client may take to send its upgrade request or to answer a close.", valueName: "seconds"))
    var timeout: Double = 10

    @Flag(name: .long, help: "With passthrough to wss://: do not verify the real server's certificate.")
    var insecure = false

    @Option(name: .long, help: ArgumentHelp("With passthrough to wss://: also trust the CA certificates in this PEM file.", valueName: "file"))
    var upstreamCA: String?

    @Option(name: .long, help: ArgumentHelp("Append NSS key log lines of the mock's TLS to this file (default $SSLKEYLOGFILE).", valueName: "file"))
    var keylog: String?

    @Option(name: .long, help: ArgumentHelp("Decrypt a captured wss:// recording with the secrets in this NSS key log.", valueName: "file"))
    var readKeylog: String?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard MockOptions.Match(rawValue: match) != nil else { throw ValidationError("--match must be exact, json or regex; not '\(match)'.") }
        guard MockOptions.Pace(rawValue: pace) != nil else { throw ValidationError("--pace must be reply or timing; not '\(pace)'.") }
        guard speed > 0, speed.isFinite else { throw ValidationError("--speed must be a factor above 0 (2 plays twice as fast).") }
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a number of seconds above 0.") }
        if conn != nil && output.filter != nil { throw ValidationError("--conn and --filter both choose what is served: give one.") }
        _ = try parsedUnmatched()
        _ = try parsedListen()
    }

    func parsedListen() throws -> (String, Int) {
        do {
            return try UpstreamURL.parseAuthority(listen, defaultPort: nil, allowPortZero: true)
        } catch {
            throw ValidationError("--listen '\(listen)': \(error). Use HOST:PORT, for example 127.0.0.1:9000 or [::1]:9000.")
        }
    }

    func parsedUnmatched() throws -> MockOptions.Unmatched {
        switch unmatched {
        case "ignore": return .ignore
        case "echo": return .echo
        default:
            if unmatched.hasPrefix("close=") {
                guard let code = UInt16(unmatched.dropFirst(6)), (1000...4999).contains(code), ![1004, 1005, 1006, 1015].contains(code) else {
                    throw ValidationError("--unmatched close=CODE takes a close code a peer may send (1000-4999, not 1004-1006 or 1015), e.g. close=1008.")
                }
                return .close(code: code)
            }
            if unmatched.hasPrefix("passthrough=") {
                let url = String(unmatched.dropFirst(12))
                guard url.hasPrefix("ws://") || url.hasPrefix("wss://") else {
                    throw ValidationError("--unmatched passthrough= takes a ws:// or wss:// URL, e.g. passthrough=ws://127.0.0.1:9000; not '\(url)'.")
                }
                let parsed: UpstreamURL
                do { parsed = try UpstreamURL.parse(url) } catch { throw ValidationError("--unmatched passthrough=\(url): \(error)") }
                return .passthrough(to: ReplayTarget(secure: parsed.scheme == "wss", host: parsed.host, port: parsed.port, path: parsed.path))
            }
            throw ValidationError("--unmatched must be ignore, close=CODE, echo or passthrough=ws(s)://host[:port]; not '\(unmatched)'.")
        }
    }

    func run() async throws {
        let (host, port) = try parsedListen()
        let loaded = RecordingSource.load(from, readKeylog: readKeylog, filter: output.makeFilter(), maxInflate: output.maxInflate)
        var recording = loaded.recording
        if let conn {
            guard let one = recording.connection(conn) else {
                let ids = recording.connections.map { String($0.id) }
                fail("\(from) has no WebSocket connection \(conn); it has \(ids.isEmpty ? "none" : ids.joined(separator: ", "))")
            }
            recording.connections = [one]
        }
        if let matching = loaded.matching {
            recording.connections.removeAll { !matching.contains($0.id) }
            if recording.connections.isEmpty { fail("no WebSocket connection of \(from) matches --filter '\(output.filter ?? "")'") }
        }
        guard !recording.connections.isEmpty else { fail("\(from) has no WebSocket connection to serve") }
        let cut = recording.connections.reduce(0) { $0 + $1.messages.count { $0.truncated } }
        var options = MockOptions()
        options.match = MockOptions.Match(rawValue: match)!
        options.ignore = ignore.map { text in
            do { return try JSONPath(parsing: text) } catch { usage("--ignore '\(text)': \(error)") }
        }
        options.pace = MockOptions.Pace(rawValue: pace)!
        options.speed = speed
        options.unmatched = try parsedUnmatched()
        options.payloadCap = output.maxPayload.bytes ?? Int(clamping: output.maxInflate)
        options.maxInflate = output.maxInflate
        options.timeout = .nanoseconds(Int64(timeout * 1e9))
        let script = MockScript(recording)

        var keyLogFile: OutputFile?
        if let path = keylog ?? environment()["SSLKEYLOGFILE"], !path.isEmpty {
            do { keyLogFile = try OutputFile.open(path: path, append: true) } catch {
                fail("--keylog: \(error). Check that the directory exists and is writable.")
            }
        }
        var authority: CertificateAuthority?
        if listenTLS {
            do { authority = try CertificateAuthority.loadOrCreate(directory: ca.directory) } catch { fail("\(error)") }
        }
        let tls: TLSContexts
        do {
            tls = try TLSContexts(authority: authority, upstreamCAFile: upstreamCA, insecure: insecure, keyLog: keyLogFile)
        } catch {
            fail("cannot set up TLS: \(error)")
        }
        let sinks = output.makeSinks()
        var all = sinks.all
        var journalSink: JSONLinesSink?
        if let journal {
            do {
                journalSink = JSONLinesSink(output: try OutputFile.open(path: journal))
            } catch {
                fail("--journal: \(error). Check that the directory exists and is writable.")
            }
            // What the clients sent, with each connection's open and end: the same schema as --jsonl.
            all = FanoutSink([all, FilteredSink(try! Filter(parsing: "from=client"), downstream: journalSink!)])
        }
        var configuration = MockServer.Configuration(listenHost: host, listenPort: port, script: script, options: options, sink: all)
        configuration.tls = tls
        configuration.listenTLS = listenTLS
        if !output.quiet {
            let policy = options.unmatched
            configuration.summary = { summary, id, client in
                OutputFile.standardError.write(Array((Self.summaryLine(summary, id: id, client: client, unmatched: policy) + "\n").utf8))
            }
        }
        let server: MockServer
        do {
            server = try await MockServer.start(configuration)
        } catch {
            fail("\(error)")
        }
        var banner = "wstap mock listening on \(server.localAddress)\(listenTLS ? " (TLS)" : ""), serving \(counted(script.connections.count, "recorded connection")) "
            + "(\(counted(script.requestCount, "client message")) to match, --match \(match)) from \(from)"
            + (output.jsonl.map { ", records to \($0)" } ?? "") + (journal.map { ", journal to \($0)" } ?? "") + "\n"
        if let authority { banner += "wstap: serving TLS with the CA in \(authority.directory); clients must trust \(authority.certificatePath) (see certs/README.md)\n" }
        if cut > 0 { banner += "wstap: \(counted(cut, "recorded message")) of \(from) were cut at --max-payload when recorded: those match and reply only as far as they go\n" }
        OutputFile.standardError.write(Array(banner.utf8))
        let finalHAR = sinks.har
        ShutdownSignals.install { finalHAR?.finish() }
        try await server.wait()
    }

    static func summaryLine(_ summary: MockSummary, id: UInt64, client: String, unmatched: MockOptions.Unmatched) -> String {
        var line = "wstap mock: conn \(id) from \(client)"
        if let target = summary.target { line += " \(target)" }
        if let script = summary.script { line += " (recorded conn \(script))" }
        line += ": \(counted(summary.received, "message")) received, \(summary.matched) matched"
        if summary.unmatched > 0 {
            let policy: String
            switch unmatched {
            case .ignore: policy = "ignored"
            case .echo: policy = "echoed"
            case .close(let code): policy = "closed with \(code)"
            case .passthrough(let target): policy = "\(summary.passedThrough) passed through to \(target)"
            }
            line += ", \(summary.unmatched) unmatched (\(policy))"
        }
        return line + summary.notes.map { "\n  note: \($0)" }.joined()
    }

    private func usage(_ message: String) -> Never {
        OutputFile.standardError.write(Array("wstap: \(message)\n".utf8))
        Glibc.exit(64)
    }
}
