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
            starts with an HTTP request is dissected: upgrades, frames, messages, diagnostics. Records carry \
            the capture's addresses and the capture time of the packet that completed them.

            Examples:
              wstap read session.pcapng
              wstap read capture.pcap --jsonl records.jsonl -q
            """
    )

    @Argument(help: ArgumentHelp("Capture files (pcap or pcapng), read in order.", valueName: "file"))
    var files: [String]

    @Option(name: .long, help: ArgumentHelp("Write JSON Lines records to this file ('-' for standard output).", valueName: "path"))
    var jsonl: String?

    @Flag(name: .shortAndLong, help: "Also print one line per frame.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print nothing on the console.")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp("Bytes of each message payload kept in records.", valueName: "bytes"))
    var maxPayload: Int = 64 * 1024

    func validate() throws {
        if verbose && quiet { throw ValidationError("-v and -q contradict each other: choose one.") }
    }

    func run() throws {
        var sinks: [any RecordSink] = []
        if let jsonl {
            do {
                sinks.append(JSONLinesSink(output: try OutputFile.open(path: jsonl)))
            } catch {
                fail("--jsonl: \(error). Check that the directory exists and is writable.")
            }
        }
        let console = jsonl == "-" ? OutputFile.standardError : OutputFile.standardOutput
        if !quiet {
            sinks.append(ConsoleSink(output: console, options: .init(verbose: verbose, color: ConsoleSink.wantsColor(console, environment: environment()))))
        }
        let sink = FanoutSink(sinks)
        var configuration = StreamDissector.Configuration()
        configuration.payloadCap = maxPayload
        for file in files {
            // One session per file: connection ids restart, as each file is its own capture.
            let session = CaptureSession(configuration: configuration)
            do {
                try PcapFile.read(path: file, session: session) { sink.write($0) }
            } catch {
                fail("\(error)")
            }
        }
    }
}
