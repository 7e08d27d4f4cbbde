import ArgumentParser
import WSTapFormats

/// Where records go, shared by `proxy` and `read`.
struct OutputOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Write JSON Lines records to this file ('-' for standard output).", valueName: "path"))
    var jsonl: String?

    @Flag(name: .shortAndLong, help: "Also print one line per frame (FIN, RSV, opcode, mask, length encoding).")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print nothing on the console (records still go to --jsonl).")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp("Bytes of each message payload kept in records; longer ones are marked truncated.", valueName: "bytes"))
    var maxPayload: Int = 64 * 1024

    func validate() throws {
        if maxPayload < 0 { throw ValidationError("--max-payload must be 0 or more bytes.") }
        if verbose && quiet { throw ValidationError("-v and -q contradict each other: choose one.") }
    }

    /// The JSON Lines sink (if asked for) and the console (unless -q); exits with one line on failure.
    func makeSinks() -> [any RecordSink] {
        var sinks: [any RecordSink] = []
        if let jsonl {
            do {
                sinks.append(JSONLinesSink(output: try OutputFile.open(path: jsonl)))
            } catch {
                fail("--jsonl: \(error). Check that the directory exists and is writable.")
            }
        }
        // When JSON Lines go to stdout, the console moves to stderr so the two never mix.
        let console = jsonl == "-" ? OutputFile.standardError : OutputFile.standardOutput
        if !quiet {
            let color = ConsoleSink.wantsColor(console, environment: environment())
            sinks.append(ConsoleSink(output: console, options: .init(verbose: verbose, color: color)))
        }
        return sinks
    }
}
