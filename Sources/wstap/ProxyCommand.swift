import ArgumentParser
import WSTapControl
import WSTapDissect
import WSTapFormats
import WSTapProxy
import WSTapRelay
import WSTapRules

#if canImport(Glibc)
import Glibc
#endif

struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Relay WebSocket connections and record every frame and message.",
        discussion: """
            Reverse mode (--upstream given): every client connecting to --listen is relayed to the upstream; \
            the client's path and query are kept unless the upstream URL has a path.
            Forward mode (no --upstream): clients use wstap as their HTTP proxy and send absolute-form \
            requests (GET ws://host:port/path) or CONNECT host:port. TLS inside CONNECT is terminated with \
            certificates from wstap's CA (see `wstap ca`), unless the host matches --passthrough.

            Examples:
              wstap proxy --upstream ws://127.0.0.1:9000
              wstap proxy --upstream ws://127.0.0.1:9000/socket --jsonl session.jsonl -v
              wstap proxy --listen 127.0.0.1:8888 --jsonl - -q | jq .
              wstap proxy --listen-tls --upstream wss://echo.example.test --keylog keys.log
              wstap proxy --upstream ws://127.0.0.1:9000 --rule 'from=server json.price? => set json.price 0'
              wstap proxy --upstream ws://127.0.0.1:9000 --rules rules.txt --compression keep
              wstap proxy --upstream ws://127.0.0.1:9000 --exec 'python3 docs/examples/hook.py'
              wstap proxy --upstream ws://127.0.0.1:9000 --ui 8081
            """
    )

    @Option(name: .long, help: ArgumentHelp("Address to listen on (port 0 picks a free port, shown at start).", valueName: "host:port"))
    var listen: String = "127.0.0.1:8080"

    @Option(name: .long, help: ArgumentHelp("Relay every connection to this WebSocket server (ws://host[:port][/path]).", valueName: "url"))
    var upstream: String?

    @OptionGroup var output: OutputOptions

    @OptionGroup var ca: CAOptions

    @Flag(name: .long, help: "Reverse mode: clients connect to wstap with TLS (wss://); certificates come from wstap's CA.")
    var listenTLS = false

    @Flag(name: .long, help: "Do not verify upstream TLS certificates (records say so).")
    var insecure = false

    @Option(name: .long, help: ArgumentHelp("Also trust the CA certificates in this PEM file for upstream TLS.", valueName: "file"))
    var upstreamCA: String?

    @Option(name: .long, help: ArgumentHelp("Append NSS key log lines for both TLS legs to this file (default $SSLKEYLOGFILE).", valueName: "file"))
    var keylog: String?

    @Option(name: .long, help: ArgumentHelp("Write the cleartext of every connection (both legs, after TLS) to this pcap file.", valueName: "file"))
    var pcap: String?

    @Option(name: .long, help: ArgumentHelp("Tunnel hosts matching this pattern (e.g. '*.bank.example') without interception; repeatable.", valueName: "pattern"))
    var passthrough: [String] = []

    @Option(name: .long, help: ArgumentHelp("Seconds a client may take to send its first request head (CONNECT and TLS handshake included), then 408; 0 waits for ever.", valueName: "seconds"))
    var headTimeout: Double = 30

    @Option(name: .long, help: ArgumentHelp("Seconds the upstream may take to accept the connection (TLS included) and to answer a WebSocket upgrade, then 504; 0 waits for ever.", valueName: "seconds"))
    var upstreamTimeout: Double = 30

    @Option(name: .long, help: ArgumentHelp("Largest request head accepted; a bigger one gets 431.", valueName: "bytes"))
    var maxHeadSize: Int = 64 * 1024

    @OptionGroup(title: "Rules (docs/rules.md has the grammar)") var ruleOptions: RuleOptions

    @OptionGroup(title: "Control API and web UI (docs/control-api.md)") var control: ControlOptions

    @Option(name: .long, help: ArgumentHelp("With rules: keep (byte-exact until a change of a compressed message, then wstap compresses that direction itself), strip (take permessage-deflate out of the client's offer), reencode (compress every message anew).", valueName: "keep|strip|reencode"))
    var compression: String = "keep"

    @Option(name: .long, help: ArgumentHelp("Seconds a message a 'hold' rule took stays held before it goes on.", valueName: "seconds"))
    var holdTimeout: Double = 30

    @Option(name: .long, help: ArgumentHelp("Most payload bytes a direction may hold for rules (a message gathered whole, and those queued behind a hold); a bigger message passes unchanged.", valueName: "bytes"))
    var holdLimit: Int = 16 << 20

    @Option(name: .long, help: ArgumentHelp("Seconds a message waits for its exec hook's verdict; then --exec-fail applies.", valueName: "seconds"))
    var execTimeout: Double = 5

    @Option(name: .long, help: ArgumentHelp("What a message becomes when its hook is slow, dead or writes garbage: open (goes on as the rules left it) or closed (dropped).", valueName: "open|closed"))
    var execFail: String = "open"

    var limits: RelaySession.Limits {
        var limits = RelaySession.Limits()
        limits.requestHeadTimeout = headTimeout > 0 ? .milliseconds(Int64(headTimeout * 1000)) : nil
        limits.upstreamTimeout = upstreamTimeout > 0 ? .milliseconds(Int64(upstreamTimeout * 1000)) : nil
        limits.maxHeadBytes = maxHeadSize
        return limits
    }

    var parsedListen: (String, Int) {
        get throws {
            do {
                return try UpstreamURL.parseAuthority(listen, defaultPort: nil, allowPortZero: true)
            } catch {
                throw ValidationError("--listen '\(listen)': \(error). Use HOST:PORT, for example 127.0.0.1:8080 or [::1]:8080.")
            }
        }
    }

    var parsedUpstream: UpstreamURL? {
        get throws {
            guard let upstream else { return nil }
            let url: UpstreamURL
            do {
                url = try UpstreamURL.parse(upstream)
            } catch {
                throw ValidationError("--upstream: \(error). Example: --upstream ws://127.0.0.1:9000/chat")
            }
            return url
        }
    }

    func validate() throws {
        _ = try parsedListen
        _ = try parsedUpstream
        for (flag, value) in [("--head-timeout", headTimeout), ("--upstream-timeout", upstreamTimeout)] where !(value >= 0 && value <= 86_400) {
            throw ValidationError("\(flag) must be a number of seconds from 0 (no limit) to 86400, e.g. \(flag) 30.")
        }
        if maxHeadSize < 256 || maxHeadSize > 16 << 20 { throw ValidationError("--max-head-size must be between 256 bytes and 16 MiB.") }
        if listenTLS && upstream == nil { throw ValidationError("--listen-tls is for reverse mode: give --upstream too.") }
        if ChangeSettings.Compression(rawValue: compression) == nil {
            throw ValidationError("--compression must be keep, strip or reencode, e.g. --compression keep.")
        }
        if !(holdTimeout > 0 && holdTimeout <= 86_400) { throw ValidationError("--hold-timeout must be a number of seconds from 0 to 86400, e.g. --hold-timeout 30.") }
        if !(execTimeout > 0 && execTimeout <= 86_400) { throw ValidationError("--exec-timeout must be a number of seconds above 0 and up to 86400, e.g. --exec-timeout 5.") }
        if ChangeSettings.HookFailure(rawValue: execFail) == nil { throw ValidationError("--exec-fail must be open or closed, e.g. --exec-fail closed.") }
        if holdLimit < 1024 || holdLimit > 1 << 30 { throw ValidationError("--hold-limit must be between 1024 bytes and 1 GiB, e.g. --hold-limit 16777216.") }
        if let upstreamCA, access(upstreamCA, R_OK) != 0 {
            throw ValidationError("--upstream-ca '\(upstreamCA)' cannot be read. Give a readable PEM file of CA certificates.")
        }
    }

    /// The rules and their settings, or nil when none were given and there is no --ui (whose send,
    /// close and holds need every connection to know its message boundaries); exits 64 on a rule
    /// that is wrong.
    func makeChanges() -> ChangeSettings? {
        guard !ruleOptions.isEmpty || control.ui != nil else { return nil }
        let rules = ruleOptions.load()
        var changes = ChangeSettings(rules: RuleBook(RuleEngine(rules: rules)))
        changes.compression = ChangeSettings.Compression(rawValue: compression) ?? .keep
        changes.holdTimeout = .milliseconds(Int64(holdTimeout * 1000))
        changes.holdLimit = holdLimit
        changes.hookTimeout = .milliseconds(Int64(execTimeout * 1000))
        changes.hookFailure = ChangeSettings.HookFailure(rawValue: execFail) ?? .open
        return changes
    }

    /// Where the hooks' processes will run; they start once wstap can stop them (see `run`).
    func makeHooks(_ changes: ChangeSettings) -> ExecHooks {
        // The longest verdict line: a replacement as big as the largest message held, in base64.
        ExecHooks(maxLine: changes.holdLimit / 3 * 4 + 1 << 20, failure: changes.hookFailure,
                  notice: { OutputFile.standardError.write(Array(($0 + "\n").utf8)) })
    }

    func run() async throws {
        let changes = makeChanges()
        let (host, port) = try parsedListen
        let dissector = output.dissectorConfiguration
        let sinks = output.makeSinks()
        let harSink = sinks.har
        let upstreamURL = try parsedUpstream
        let mode: RelaySession.Mode = upstreamURL.map { .reverse($0) } ?? .forward
        // The UI's store sees every record, whatever --filter keeps for the file and the console:
        // the UI has a filter of its own. It comes after the files, which stay first to be written.
        let store = control.makeStore()
        let sink: any RecordSink = store.map { FanoutSink([sinks.all, StoreSink($0)]) } ?? sinks.all
        var configuration = ProxyConfiguration(listenHost: host, listenPort: port, mode: mode, dissector: dissector, sink: sink)
        let intercepting = upstreamURL == nil
        configuration.limits = limits
        configuration.changes = changes
        let registry = store == nil ? nil : ConnectionRegistry()
        configuration.registry = registry
        let hooks = changes.map(makeHooks)
        configuration.hooks = hooks
        configuration.tlsSettings = TLSSettings(interceptConnect: intercepting, passthrough: passthrough, clientTLS: listenTLS, verifyUpstream: !insecure)
        var authority: CertificateAuthority?
        if intercepting || listenTLS {
            do {
                authority = try CertificateAuthority.loadOrCreate(directory: ca.directory)
            } catch {
                fail("\(error)")
            }
        }
        var keyLogFile: OutputFile?
        if let path = keylog ?? environment()["SSLKEYLOGFILE"], !path.isEmpty {
            do {
                keyLogFile = try OutputFile.open(path: path, append: true)
            } catch {
                fail("--keylog: \(error). Check that the directory exists and is writable.")
            }
        }
        do {
            configuration.tlsContexts = try TLSContexts(authority: authority, upstreamCAFile: upstreamCA, insecure: insecure, keyLog: keyLogFile)
        } catch {
            fail("cannot set up TLS: \(error)")
        }
        if let pcap {
            do {
                configuration.capture = try DecryptedCapture(path: pcap)
            } catch {
                fail("\(error)")
            }
        }
        let server: ProxyServer
        do {
            server = try await ProxyServer.start(configuration)
        } catch {
            fail("\(error)")
        }
        let target: String
        switch mode {
        case .reverse(let url): target = "relaying to \(url)"
        case .forward: target = "forward proxy mode (set it as the client's HTTP proxy)"
        }
        var banner = "wstap listening on \(server.localAddress)\(listenTLS ? " (TLS)" : ""), \(target)" + (output.jsonl.map { ", records to \($0)" } ?? "") + "\n"
        if let authority, intercepting {
            banner += "wstap: intercepting TLS with the CA in \(authority.directory); clients must trust \(authority.certificatePath) (see certs/README.md)\n"
        }
        if insecure { banner += "wstap: --insecure: upstream certificates are NOT verified\n" }
        var reloader: RuleReloader?
        if let changes, !ruleOptions.isEmpty {
            let count = changes.rules.engine.rules.count
            banner += "wstap: \(count) rule\(count == 1 ? "" : "s") in force (compression \(changes.compression.rawValue))"
                + (ruleOptions.rules.map { "; \($0) is reloaded when it changes" } ?? "") + "\n"
            if let path = ruleOptions.rules {
                reloader = RuleReloader(options: ruleOptions, book: changes.rules, path: path, hooks: hooks)
                reloader?.start()
            }
        }
        if let store {
            let rules = changes.map { RuleControl(book: $0.rules, notice: { OutputFile.standardError.write(Array("wstap: \($0)\n".utf8)) }) }
            let replays = ControlReplayRunner(sink: sink, ids: configuration.connectionIDs, upstreamCAFile: upstreamCA, insecure: insecure,
                                              payloadCap: output.maxPayload.bytes ?? Int(clamping: output.maxInflate))
            let server = await control.start(store: store, steering: registry, rules: rules, replays: replays)
            banner += "wstap: control API and web UI at \(server.url)\n"
        }
        OutputFile.standardError.write(Array(banner.utf8))
        // Ctrl-C and SIGTERM close files that need a clean end (the pcap); records are already on disk.
        let capture = configuration.capture
        let finalHAR = harSink
        ShutdownSignals.install {
            hooks?.stop()
            capture?.close()
            finalHAR?.finish()
        }
        // Only now: a SIGTERM before the handler is in place would end wstap and leave its hooks running.
        // Others start when a reload adds them.
        if let hooks, let changes { hooks.start(ChangeSettings.hookCommands(in: changes.rules.engine.rules)) }
        try await server.wait()
        withExtendedLifetime(reloader) {}
    }
}

/// One clear line on stderr and a non-zero exit: our own failures are not stack traces.
func fail(_ message: String) -> Never {
    OutputFile.standardError.write(Array("wstap: \(message)\n".utf8))
    exit(1)
}

func environment() -> [String: String] {
    var result: [String: String] = [:]
    var pointer = environ
    while let entry = pointer.pointee {
        let text = String(cString: entry)
        if let eq = text.firstIndex(of: "=") { result[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
        pointer += 1
    }
    return result
}
