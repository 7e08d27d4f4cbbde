import ArgumentParser
import WSTapControl
import WSTapProxy
import WSTapRelay

/// `--ui` and its store, shared by `proxy` and `read`.
struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Serve the control API and web UI on this port (loopback unless a host is given); the URL with its token is printed at start. Connections can then be sent to, closed and their held messages released from it.", valueName: "[host:]port"))
    var ui: String?

    @Option(name: .long, help: ArgumentHelp("Most bytes of recent records (payloads included) the UI and API keep; older ones are dropped, and the API says so.", valueName: "bytes"))
    var uiStore: Int = 64 << 20

    var parsedUI: (host: String, port: Int)? {
        get throws {
            guard let ui else { return nil }
            if let port = Int(ui), (0...65535).contains(port) { return ("127.0.0.1", port) }
            do {
                return try UpstreamURL.parseAuthority(ui, defaultPort: nil, allowPortZero: true)
            } catch {
                throw ValidationError("--ui '\(ui)': \(error). Use PORT or HOST:PORT, for example --ui 8081 or --ui 127.0.0.1:8081.")
            }
        }
    }

    func validate() throws {
        _ = try parsedUI
        if uiStore < 1 << 20 || uiStore > 16 << 30 { throw ValidationError("--ui-store must be between 1 MiB and 16 GiB, e.g. --ui-store 67108864.") }
    }

    /// The store the UI reads, when there is a UI.
    func makeStore() -> RecordStore? { ui == nil ? nil : RecordStore(limitBytes: uiStore) }

    /// Starts the control server, or says why it cannot and exits.
    func start(store: RecordStore, steering: (any ConnectionSteering)? = nil, rules: RuleControl? = nil, replays: (any ReplayRunning)? = nil,
               source: String? = nil) async -> ControlServer {
        do {
            guard let (host, port) = try parsedUI else { fail("--ui is needed to serve the control API") }
            return try await ControlServer.start(host: host, port: port, store: store, token: ControlAccess.randomToken(), steering: steering, rules: rules,
                                             replays: replays, source: source, version: WSTap.configuration.version)
        } catch {
            fail("\(error)")
        }
    }
}
