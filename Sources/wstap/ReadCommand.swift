import ArgumentParser
import WSTapCapture
import WSTapDissect
import WSTapFormats

struct ReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read pcap/pcapng files and write the same records as the live proxy.",
        discussion: """
            TCP streams are rebuilt (out-of-order segments, retransmissions, gaps) and every connection that \
            starts with an HTTP request is dissected: upgrades, frames, messages, diagnostics. Captures that \
            start after the upgrade are found by a heuristic (plausible frames, RSV1 included; never HTTP or \
            TLS) or by --decode-as PORT; their open record says which. Records carry the capture's \
            addresses and the capture time of the packet that completed them.

            Examples:
              wstap read session.pcapng
              wstap read capture.pcap --jsonl records.jsonl -q
              wstap read late-start.pcap --decode-as 9123
            """
    )

    @Argument(help: ArgumentHelp("Capture files (pcap or pcapng), read in order.", valueName: "file"))
    var files: [String]

    @OptionGroup var output: OutputOptions

    @Option(name: .long, help: ArgumentHelp("Treat connections on this port as WebSocket from their first captured byte (captures that start after the upgrade); repeatable.", valueName: "port"))
    var decodeAs: [UInt16] = []

    @Flag(name: .long, help: "Do not guess WebSocket on connections that do not start with an HTTP request.")
    var noHeuristic = false

    func run() throws {
        let sinks = output.makeSinks()
        let sink = FanoutSink(sinks)
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = output.maxPayload
        for file in files {
            // One session per file: connection ids restart, as each file is its own capture.
            let session = CaptureSession(configuration: configuration)
            session.decodeAsPorts = Set(decodeAs)
            session.heuristic = !noHeuristic
            do {
                try PcapFile.read(path: file, session: session) { sink.write($0) }
            } catch {
                fail("\(error)")
            }
        }
    }
}
