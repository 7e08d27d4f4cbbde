import ArgumentParser
import WSTapCapture
import WSTapDissect

/// How `read` and `capture` find WebSocket sessions in TCP traffic.
struct DiscoveryOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Treat connections on this port as WebSocket from their first captured byte (captures that start after the upgrade); repeatable.", valueName: "port"))
    var decodeAs: [UInt16] = []

    @Flag(name: .long, help: "Do not guess WebSocket on connections that do not start with an HTTP request.")
    var noHeuristic = false

    func makeSession(_ configuration: StreamDissector.Configuration) -> CaptureSession {
        let session = CaptureSession(configuration: configuration)
        session.decodeAsPorts = Set(decodeAs)
        session.heuristic = !noHeuristic
        return session
    }
}
