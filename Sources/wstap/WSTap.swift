import ArgumentParser

@main
struct WSTap: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wstap",
        abstract: "A transparent WebSocket debugging proxy: relays every byte, records every frame.",
        discussion: """
            Point a WebSocket client at the proxy and watch every frame and message in both directions, \
            on the console and as JSON Lines. See README.md and docs/ for examples.
            """,
        version: "0.1.0",
        subcommands: [ProxyCommand.self, ReadCommand.self, CaptureCommand.self, ReplayCommand.self, MockCommand.self, RulesCommand.self, CtlCommand.self, CACommand.self]
    )
}
