import ArgumentParser
import WSTapDissect
import WSTapFilter
import WSTapFormats

#if canImport(Glibc)
import Glibc
#endif

/// Where records go and how much of each is kept, shared by `proxy`, `read` and `capture`.
struct OutputOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Write JSON Lines records to this file ('-' for standard output).", valueName: "path"))
    var jsonl: String?

    @Flag(name: .shortAndLong, help: "Also print one line per frame (FIN, RSV, opcode, mask, length encoding).")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print nothing on the console (records still go to --jsonl).")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp("Bytes of each message payload kept in records (64K, 1M, …); longer ones are marked truncated. 'unlimited' keeps whole payloads, as replay needs, up to --max-inflate bytes each.", valueName: "bytes|unlimited"))
    var maxPayload: PayloadLimit = .bytes(64 * 1024)

    @Option(name: .long, help: ArgumentHelp("Stop inflating a compressed message after this many bytes (decompression bomb guard).", valueName: "bytes"))
    var maxInflate: UInt64 = 64 * 1024 * 1024

    @Option(name: .long, help: ArgumentHelp("Write a HAR 1.2 log (Chrome's WebSocket format) to this file; valid even after Ctrl-C.", valueName: "file"))
    var har: String?

    @Option(name: .long, help: ArgumentHelp("Record and show only what matches, with each matching connection's open and end records: 'from=client op=text', 'json.type=tick len>4K', 'url~/chat/ -op=ping' (docs/filters.md). Never changes what is relayed.", valueName: "expr"))
    var filter: String?

    var dissectorConfiguration: StreamDissector.Configuration {
        var configuration = StreamDissector.Configuration()
        // Whole payloads are still bounded: one message is held while it is recorded.
        configuration.payloadCap = maxPayload.bytes ?? Int(clamping: maxInflate)
        configuration.maxInflatedMessage = maxInflate
        return configuration
    }

    func validate() throws {
        if verbose && quiet { throw ValidationError("-v and -q contradict each other: choose one.") }
        _ = makeFilter()  // a bad filter stops wstap here, before anything is opened
    }

    /// Every sink asked for, as one. `finish()` must run before exit: it writes what is still queued and
    /// closes the HAR log.
    struct Sinks {
        let all: any RecordSink
        let har: HARSink?
        let background: BackgroundSink?
        let filtered: FilteredSink?

        /// Waits until every record handed over so far is written.
        func drain() { background?.drain() }

        func finish() {
            background?.finish()
            har?.finish()
        }
    }

    /// The JSON Lines sink (if asked for), the HAR log (if asked for) and the console (unless -q);
    /// exits with one line on failure. `background` puts encoding and writing on a thread of their own
    /// (for `read` and `capture`; the proxy writes each batch before forwarding the bytes it describes).
    /// - Parameter filtering: false when the command gives --filter another meaning (replay selects
    ///   what to replay with it and records the whole new session).
    func makeSinks(background: Bool = false, filtering: Bool = true) -> Sinks {
        let selection = filtering ? makeFilter() : nil
        var sinks: [any RecordSink] = []
        var harSink: HARSink?
        if let jsonl {
            do {
                sinks.append(JSONLinesSink(output: try OutputFile.open(path: jsonl)))
            } catch {
                fail("--jsonl: \(error). Check that the directory exists and is writable.")
            }
        }
        if let har {
            do {
                harSink = try HARSink(path: har, creatorVersion: WSTap.configuration.version)
                sinks.append(harSink!)
            } catch {
                fail("--har: \(error). Check that the directory exists and is writable.")
            }
        }
        // When JSON Lines go to stdout, the console moves to stderr so the two never mix.
        let console = jsonl == "-" ? OutputFile.standardError : OutputFile.standardOutput
        if !quiet {
            let color = ConsoleSink.wantsColor(console, environment: environment())
            sinks.append(ConsoleSink(output: console, options: .init(verbose: verbose, color: color)))
        }
        var all: any RecordSink = sinks.count == 1 ? sinks[0] : FanoutSink(sinks)
        // Behind the background queue the filter runs on the writer thread, not on the dissecting ones.
        let filtered = selection.map { FilteredSink($0, downstream: all) }
        if let filtered { all = filtered }
        let queue = background ? BackgroundSink(all) : nil
        return Sinks(all: queue ?? all, har: harSink, background: queue, filtered: filtered)
    }

    /// The parsed --filter, or one line saying where it is wrong and exit 64 (a usage error).
    func makeFilter() -> Filter? {
        guard let filter else { return nil }
        do {
            return try Filter(parsing: filter)
        } catch {
            OutputFile.standardError.write(Array("wstap: --filter: \(error)\n".utf8))
            Glibc.exit(64)
        }
    }
}

/// `--max-payload`: a byte count (with K, M or G for KiB, MiB, GiB) or `unlimited`.
enum PayloadLimit: ExpressibleByArgument, Equatable {
    case bytes(Int)
    case unlimited

    init?(argument: String) {
        if argument == "unlimited" {
            self = .unlimited
            return
        }
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
        var digits = Substring(argument)
        var unit = 1
        if let last = digits.last?.uppercased().first, let scale = units[last] {
            unit = scale
            digits = digits.dropLast()
        }
        guard let value = Int(digits), value >= 0, value <= Int.max / unit else { return nil }
        self = .bytes(value * unit)
    }

    var bytes: Int? { if case .bytes(let count) = self { count } else { nil } }

    var defaultValueDescription: String {
        guard let bytes else { return "unlimited" }
        return bytes > 0 && bytes % 1024 == 0 ? "\(bytes / 1024)K" : "\(bytes)"
    }
}

